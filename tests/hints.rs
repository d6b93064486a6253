//! Change hints and direct publishes: the media side tells the poller that
//! an event changed (`POST /events/{id}/changed` on the poller's port, or
//! `LiveFeed/Publish`), so subscribers and browsers see the change at once
//! even with an hour between polls. Shown here: who may send them, how a
//! storm of hints costs a handful of polls, what is refused, how a token
//! file rotates, and how a hint sent to any poller of a cluster reaches the
//! one that owns the event.
//!
//! Metrics are process-wide and tests of this file run concurrently (with
//! in-process pollers), so counters are compared as "moved at least by".

use livepush::proto::{LiveUpdate, PublishReply, PublishRequest, State};
use livepush_tests::{
    PATIENCE, TestMedia, eventually, feed_client, http, media::Reply, metric, next_update, raw_request,
    sse::SseClient, start_edge, start_poller, start_poller_at, subscribe,
};
use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};
use tokio::time::Instant;
use tonic::{Code, Streaming};

const TOKEN: &str = "hint-token-0123456789";

fn temp_dir(name: &str) -> PathBuf {
    livepush_tests::temp_dir(&format!("hints-{name}"))
}

/// Writes `content` to `dir/publish-token` and returns its path.
fn token_file(dir: &Path, content: &str) -> String {
    let path = dir.join("publish-token");
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A poller polling `media` once an hour (so any prompt change is a hint's
/// doing), taking the token in `token_file` if given, with `args`.
async fn poller(media: &TestMedia, token_file: Option<&str>, args: &[&str]) -> livepush_tests::Running {
    let template = media.template();
    let mut all = vec!["--media-url", template.as_str(), "--interval", "1h"];
    if let Some(path) = token_file {
        all.extend(["--publish-token-file", path]);
    }
    all.extend_from_slice(args);
    start_poller(&all).await
}

/// What the poller answered to one hint.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// `POST {base}/events/{id}/changed` with `Authorization: Bearer {token}`
/// (if given) and `body` (a hint if empty).
async fn post(base: &str, id: &str, token: Option<&str>, body: &str) -> Answer {
    post_with(base, id, token.map(|t| format!("Bearer {t}")).as_deref(), body).await
}

/// Like [`post`] with the whole `Authorization` value (if any) given.
async fn post_with(base: &str, id: &str, authorization: Option<&str>, body: &str) -> Answer {
    let mut req = http().post(format!("{base}/events/{id}/changed")).body(body.to_owned());
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    let resp = req.send().await.expect("poller answers");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    Answer { status, headers, body: resp.text().await.unwrap() }
}

/// Asserts a 202 with the given outcome and peer count (other fields, such
/// as the event id, may come along).
fn assert_accepted(a: &Answer, outcome: &str, peers: u64) {
    assert_eq!(a.status, 202, "{}", a.body);
    let v = a.json();
    assert_eq!((v["outcome"].as_str(), v["peers"].as_u64()), (Some(outcome), Some(peers)), "{}", a.body);
}

fn refusals(reason: &str) -> String {
    format!("livepush_poller_hint_refusals_total{{reason=\"{reason}\"}}")
}

/// The next update, which must be live with `data`.
async fn expect_live(stream: &mut Streaming<LiveUpdate>, data: &str) {
    let u = next_update(stream).await;
    assert_eq!((u.state, u.data.as_str()), (State::Live as i32, data), "{u:?}");
}

/// Asserts that nothing arrives on `stream` for a moment (a refused hint
/// must publish nothing; the caller later proves it with the next update).
async fn assert_quiet(stream: &mut Streaming<LiveUpdate>) {
    let got = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(got.is_err(), "an update arrived: {got:?}");
}

/// Retries `check` until it holds or [`PATIENCE`] runs out.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_makes_subscribers_and_browsers_see_the_change_at_once() {
    let dir = temp_dir("at-once");
    let media = TestMedia::start().await;
    media.set_json("h", r#"{"v":1}"#);
    let p = poller(&media, Some(&token_file(&dir, TOKEN)), &[]).await;
    let edge = start_edge(&["--poller", &p.url()]).await;
    let mut feed = subscribe(p.addr, "h").await;
    expect_live(&mut feed, r#"{"v":1}"#).await;
    let mut browser = SseClient::open(&format!("{}/live/h/stream", edge.url())).await;
    assert_eq!(browser.next_message().await.data, r#"{"v":1}"#);
    let received = metric(&p.url(), "livepush_poller_hints_received_total").await;

    media.set_json("h", r#"{ "v" : 2 }"#);
    assert_accepted(&post(&p.url(), "h", Some(TOKEN), "").await, "poll", 0);
    expect_live(&mut feed, r#"{"v":2}"#).await;
    assert_eq!(browser.next_message().await.data, r#"{"v":2}"#);
    assert_eq!(media.count("h"), 2, "the first fetch and the hint's poll");
    assert!(metric(&p.url(), "livepush_poller_hints_received_total").await > received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hints_in_a_second_cost_a_handful_of_polls() {
    const HINTS: usize = 1000;
    let dir = temp_dir("storm");
    let media = TestMedia::start().await;
    // Each poll takes a while, so overlapping polls would show.
    media.set("storm", Reply::json(r#"{"n":0}"#).delay(Duration::from_millis(50)));
    let p = poller(&media, Some(&token_file(&dir, TOKEN)), &[]).await;
    let mut feed = subscribe(p.addr, "storm").await;
    expect_live(&mut feed, r#"{"n":0}"#).await;
    let received = metric(&p.url(), "livepush_poller_hints_received_total").await;
    let coalesced = metric(&p.url(), "livepush_poller_hints_coalesced_total").await;
    media.set("storm", Reply::json(r#"{"n":1}"#).delay(Duration::from_millis(50)));

    // Ten waves of a hundred concurrent hints, a tenth of a second apart.
    let base = p.url();
    let started = Instant::now();
    let mut answers = Vec::new();
    for wave in 0..10u32 {
        tokio::time::sleep_until(started + Duration::from_millis(100) * wave).await;
        let sent = (0..HINTS / 10).map(|_| {
            let base = base.clone();
            tokio::spawn(async move { post(&base, "storm", Some(TOKEN), "").await })
        });
        answers.extend(sent);
    }
    for a in answers {
        assert_accepted(&a.await.unwrap(), "poll", 0);
    }
    let took = started.elapsed();
    expect_live(&mut feed, r#"{"n":1}"#).await;
    // Let a trailing poll (a hint that came during the last one) finish.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let polls = media.count("storm") - 1;
    // One poll per --min-hint-gap (250 ms) at most while hints arrive, plus
    // the first and a trailing one; six if sending took the second planned.
    let allowed = (took.as_millis() / 250) as usize + 2;
    assert!(polls >= 1, "no poll for {HINTS} hints");
    assert!(polls <= allowed.max(6), "{polls} polls for {HINTS} hints sent over {took:?}");
    assert_eq!(media.max_inflight(), 1, "two polls of one event overlapped");
    let received = metric(&p.url(), "livepush_poller_hints_received_total").await - received;
    assert!(received >= HINTS as f64, "hints_received_total moved by {received}");
    let coalesced = metric(&p.url(), "livepush_poller_hints_coalesced_total").await - coalesced;
    assert!(
        coalesced >= (HINTS - polls) as f64,
        "hints_coalesced_total moved by {coalesced} ({polls} polls)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_without_the_token_are_refused_and_trigger_nothing() {
    let dir = temp_dir("refused");
    let media = TestMedia::start().await;
    media.set_json("auth", r#"{"v":1}"#);
    let p = poller(&media, Some(&token_file(&dir, &format!("{TOKEN}\n"))), &[]).await;
    let mut feed = subscribe(p.addr, "auth").await;
    expect_live(&mut feed, r#"{"v":1}"#).await;
    media.set_json("auth", r#"{"v":2}"#);
    let unauthenticated = metric(&p.url(), &refusals("unauthenticated")).await;

    let wrong = [
        None,
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some("Bearer wrong-token".to_owned()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
    ];
    for authorization in &wrong {
        for body in ["", r#"{"forged":true}"#] {
            let a = post_with(&p.url(), "auth", authorization.as_deref(), body).await;
            assert_eq!(a.status, 401, "{authorization:?} {body}: {}", a.body);
            let challenge = a.headers.get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
            assert!(challenge.as_deref().is_some_and(|c| c.starts_with("Bearer")), "{challenge:?}");
        }
    }
    // Nothing was polled, nothing published.
    assert_quiet(&mut feed).await;
    assert_eq!(media.count("auth"), 1);
    let refused = metric(&p.url(), &refusals("unauthenticated")).await - unauthenticated;
    assert!(refused >= (2 * wrong.len()) as f64, "unauthenticated refusals moved by {refused}");

    // The right token: the next update is the poll's value, so no forged
    // document was ever published.
    assert_accepted(&post(&p.url(), "auth", Some(TOKEN), "").await, "poll", 0);
    expect_live(&mut feed, r#"{"v":2}"#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_publish_token_file_hints_and_publishes_are_disabled() {
    let media = TestMedia::start().await;
    media.set_json("off", r#"{"v":1}"#);
    let p = poller(&media, None, &[]).await;
    let mut feed = subscribe(p.addr, "off").await;
    expect_live(&mut feed, r#"{"v":1}"#).await;
    media.set_json("off", r#"{"v":2}"#);
    let disabled = metric(&p.url(), &refusals("disabled")).await;

    for (token, body) in [(Some(TOKEN), ""), (None, ""), (Some(TOKEN), r#"{"forged":true}"#), (Some(""), "")]
    {
        let a = post(&p.url(), "off", token, body).await;
        assert_eq!(a.status, 403, "{token:?} {body}: {}", a.body);
    }
    let mut client = feed_client(p.addr).await;
    let err = client.publish(publish_request("off", "", Some(TOKEN))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = client.publish(publish_request("off", r#"{"forged":true}"#, Some(TOKEN))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    assert_quiet(&mut feed).await;
    assert_eq!(media.count("off"), 1, "no poll");
    let refused = metric(&p.url(), &refusals("disabled")).await - disabled;
    assert!(refused >= 4.0, "disabled refusals moved by {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_document_reaches_subscribers_and_browsers_and_bad_ones_are_refused() {
    let dir = temp_dir("publish");
    let media = TestMedia::start().await;
    media.set_json("pub", r#"{"v":1}"#);
    let p = poller(&media, Some(&token_file(&dir, TOKEN)), &["--max-body", "1KiB"]).await;
    let edge = start_edge(&["--poller", &p.url()]).await;
    let mut feed = subscribe(p.addr, "pub").await;
    expect_live(&mut feed, r#"{"v":1}"#).await;
    let mut browser = SseClient::open(&format!("{}/live/pub/stream", edge.url())).await;
    assert_eq!(browser.next_message().await.data, r#"{"v":1}"#);
    let published = metric(&p.url(), "livepush_poller_hints_published_total").await;

    // Published as the event's value, compacted, keys in their order.
    let doc = "{ \"score\" : [1, 2],\n  \"title\": \"Final \\u00e9\", \"big\": 12345678901234567890123 }";
    let compact = r#"{"score":[1,2],"title":"Final é","big":12345678901234567890123}"#;
    assert_accepted(&post(&p.url(), "pub", Some(TOKEN), doc).await, "published", 0);
    expect_live(&mut feed, compact).await;
    assert_eq!(browser.next_message().await.data, compact);

    // Not JSON, or too large: refused, and nothing published (the next
    // update is the next good document).
    for bad in ["not json", r#"{"open":"#, "{} {}", "\u{0}"] {
        assert_eq!(post(&p.url(), "pub", Some(TOKEN), bad).await.status, 400, "{bad:?}");
    }
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000));
    assert_eq!(post(&p.url(), "pub", Some(TOKEN), &big).await.status, 413);
    assert_quiet(&mut feed).await;
    assert_accepted(&post(&p.url(), "pub", Some(TOKEN), r#"{"v":3}"#).await, "published", 0);
    expect_live(&mut feed, r#"{"v":3}"#).await;
    assert_eq!(browser.next_message().await.data, r#"{"v":3}"#);

    let published = metric(&p.url(), "livepush_poller_hints_published_total").await - published;
    assert!(published >= 2.0, "hints_published_total moved by {published}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_event_ids_get_400_and_reach_nobody() {
    let dir = temp_dir("hostile");
    let media = TestMedia::start().await;
    let p = poller(&media, Some(&token_file(&dir, TOKEN)), &[]).await;
    let invalid = metric(&p.url(), &refusals("invalid")).await;
    let long = "a".repeat(200);
    let hostile = ["..", ".", "a%2Fb", "%2E%2E", "a%20b", "a%00b", "%E2%98%83", long.as_str()];
    for id in hostile {
        for body in ["", "{}"] {
            let request = format!(
                "POST /events/{id}/changed HTTP/1.1\r\nHost: poller\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let (status, answer) = raw_request(p.addr, &request).await;
            assert_eq!(status, 400, "{id:?} {body:?}: {answer}");
            assert!(!answer.trim_end().contains('\n'), "a one-line reason: {answer:?}");
        }
    }
    assert_eq!(media.total(), 0, "no invalid id reached the media service");
    let refused = metric(&p.url(), &refusals("invalid")).await - invalid;
    assert!(refused >= (2 * hostile.len()) as f64, "invalid refusals moved by {refused}");

    // The gRPC twin refuses them too.
    let mut client = feed_client(p.addr).await;
    for id in ["..", "a/b", long.as_str(), ""] {
        let err = client.publish(publish_request(id, "", Some(TOKEN))).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{id:?}: {err:?}");
    }
    assert_eq!(media.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_for_unwatched_events_are_ignored_without_peers() {
    let dir = temp_dir("unwatched");
    let media = TestMedia::start().await;
    let p = poller(&media, Some(&token_file(&dir, TOKEN)), &[]).await;
    assert_accepted(&post(&p.url(), "nobody", Some(TOKEN), "").await, "ignored", 0);
    assert_accepted(&post(&p.url(), "nobody", Some(TOKEN), r#"{"v":1}"#).await, "ignored", 0);
    let mut client = feed_client(p.addr).await;
    let reply = client.publish(publish_request("nobody", r#"{"v":1}"#, Some(TOKEN))).await.unwrap();
    assert_eq!(reply.into_inner(), PublishReply { outcome: "ignored".into(), peers: 0 });
    assert_eq!(media.total(), 0, "an unwatched event is not polled");

    // Nor does a later subscriber get the ignored document: it gets the
    // media service's value.
    let mut feed = subscribe(p.addr, "nobody").await;
    expect_live(&mut feed, r#"{"event":"nobody"}"#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_token_file_is_read_again_when_it_changes() {
    let dir = temp_dir("rotate");
    let media = TestMedia::start().await;
    // The token is the first non-empty line, trimmed.
    let path = token_file(&dir, "\n  tok-one-abcdef-0123456789  \n");
    let p = poller(&media, Some(&path), &[]).await;
    let mut feed = subscribe(p.addr, "rot").await;
    expect_live(&mut feed, r#"{"event":"rot"}"#).await;
    assert_accepted(&post(&p.url(), "rot", Some("tok-one-abcdef-0123456789"), "").await, "poll", 0);
    for other in ["tok-two-ghijkl-0123456789", "tok-one-abcdef-012345678", ""] {
        assert_eq!(post(&p.url(), "rot", Some(other), "").await.status, 401, "{other}");
    }

    std::fs::write(&path, "tok-two-ghijkl-0123456789\n").unwrap();
    let base = p.url();
    until("the new token to be accepted and the old one refused", || {
        let base = base.clone();
        async move {
            post(&base, "rot", Some("tok-two-ghijkl-0123456789"), "").await.status == 202
                && post(&base, "rot", Some("tok-one-abcdef-0123456789"), "").await.status == 401
        }
    })
    .await;
    // Once rotated, for good.
    for _ in 0..5 {
        assert_eq!(post(&p.url(), "rot", Some("tok-one-abcdef-0123456789"), "").await.status, 401);
        assert_accepted(&post(&p.url(), "rot", Some("tok-two-ghijkl-0123456789"), "").await, "poll", 0);
    }
    // The publish works with the new token over gRPC too.
    let mut client = feed_client(p.addr).await;
    let err = client
        .publish(publish_request("rot", r#"{"r":1}"#, Some("tok-one-abcdef-0123456789")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    client.publish(publish_request("rot", r#"{"r":2}"#, Some("tok-two-ghijkl-0123456789"))).await.unwrap();
    loop {
        let u = next_update(&mut feed).await;
        if u.data == r#"{"r":2}"# {
            break;
        }
        assert_ne!(u.data, r#"{"r":1}"#, "published with the old token");
    }
}

/// A `Publish` request carrying `token` (if any) as a bearer token.
fn publish_request(id: &str, data: &str, token: Option<&str>) -> tonic::Request<PublishRequest> {
    let mut request = tonic::Request::new(PublishRequest { event_id: id.into(), data: data.into() });
    if let Some(t) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_publish_checks_its_caller_and_reaches_subscribers() {
    let dir = temp_dir("grpc");
    let media = TestMedia::start().await;
    media.set_json("g", r#"{"v":1}"#);
    let p = poller(&media, Some(&token_file(&dir, TOKEN)), &[]).await;
    let mut feed = subscribe(p.addr, "g").await;
    expect_live(&mut feed, r#"{"v":1}"#).await;
    let mut client = feed_client(p.addr).await;

    for token in [None, Some("wrong"), Some("")] {
        for data in ["", r#"{"forged":1}"#] {
            let err = client.publish(publish_request("g", data, token)).await.unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated, "{token:?} {data}: {err:?}");
        }
    }
    for data in ["not json", "{", r#"{"a":1} trailing"#] {
        let err = client.publish(publish_request("g", data, Some(TOKEN))).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{data}: {err:?}");
    }
    assert_quiet(&mut feed).await;
    assert_eq!(media.count("g"), 1);

    let reply = client.publish(publish_request("g", r#"{ "via" : "grpc" }"#, Some(TOKEN))).await.unwrap();
    assert_eq!(reply.into_inner(), PublishReply { outcome: "published".into(), peers: 0 });
    expect_live(&mut feed, r#"{"via":"grpc"}"#).await;

    media.set_json("g", r#"{"v":2}"#);
    let reply = client.publish(publish_request("g", "", Some(TOKEN))).await.unwrap();
    assert_eq!(reply.into_inner(), PublishReply { outcome: "poll".into(), peers: 0 });
    expect_live(&mut feed, r#"{"v":2}"#).await;
    assert_eq!(media.count("g"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_sent_to_any_poller_of_a_cluster_reaches_the_browser() {
    let dir = temp_dir("cluster");
    let path = token_file(&dir, TOKEN);
    // One media double per poller, scripted alike, to see who polls.
    let media = [TestMedia::start().await, TestMedia::start().await, TestMedia::start().await];
    let addrs = [
        livepush_tests::process::free_addr(),
        livepush_tests::process::free_addr(),
        livepush_tests::process::free_addr(),
    ];
    let peers = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
    let mut pollers = Vec::new();
    for (m, addr) in media.iter().zip(addrs) {
        let template = m.template();
        let args = [
            "--media-url",
            &template,
            "--interval",
            "1h",
            "--publish-token-file",
            &path,
            "--peers",
            &peers,
            "--peers-resolve-interval",
            "200ms",
        ];
        pollers.push(start_poller_at(addr, &args).await);
    }
    let all = pollers.iter().map(|p| p.url()).collect::<Vec<_>>().join(",");
    let edge = start_edge(&["--poller", &all]).await;
    for m in &media {
        m.set_json("clu", r#"{"v":0}"#);
    }
    let mut browser = SseClient::open(&format!("{}/live/clu/stream", edge.url())).await;
    assert_eq!(browser.next_message().await.data, r#"{"v":0}"#);
    let owner = media.iter().position(|m| m.count("clu") > 0).expect("someone polled");
    assert_eq!(media.iter().filter(|m| m.count("clu") > 0).count(), 1, "one owner");
    let forwarded_before = metric(&pollers[0].url(), "livepush_poller_hints_forwarded_total").await;

    let mut step = 0;
    let mut forwarded = 0;
    for (i, p) in pollers.iter().enumerate() {
        // A change hint sent to poller i.
        step += 1;
        let value = format!(r#"{{"v":{step}}}"#);
        for m in &media {
            m.set_json("clu", &value);
        }
        let a = post(&p.url(), "clu", Some(TOKEN), "").await;
        if i == owner {
            assert_accepted(&a, "poll", 0);
        } else {
            assert_eq!((a.status, a.json()["outcome"].as_str()), (202, Some("forwarded")), "{}", a.body);
            assert!(a.json()["peers"].as_u64().unwrap() >= 1, "{}", a.body);
            forwarded += 1;
        }
        assert_eq!(browser.next_message().await.data, value, "hint sent to poller {i}");

        // A document published through poller i.
        step += 1;
        let value = format!(r#"{{"published":{step}}}"#);
        let a = post(&p.url(), "clu", Some(TOKEN), &value).await;
        if i == owner {
            assert_accepted(&a, "published", 0);
        } else {
            assert_eq!((a.status, a.json()["outcome"].as_str()), (202, Some("forwarded")), "{}", a.body);
            forwarded += 1;
        }
        assert_eq!(browser.next_message().await.data, value, "document published through poller {i}");
    }
    assert_eq!(forwarded, 4, "two of the three pollers do not own the event");
    for (i, m) in media.iter().enumerate() {
        let expected = if i == owner { 4 } else { 0 };
        assert_eq!(m.count("clu"), expected, "polls by poller {i} (owner {owner}): first fetch and 3 hints");
    }
    let moved = metric(&pollers[0].url(), "livepush_poller_hints_forwarded_total").await - forwarded_before;
    assert!(moved >= 4.0, "hints_forwarded_total moved by {moved}");

    // A forwarded request is not forwarded again: a non-owner told it was
    // forwarded ignores it.
    let other = (owner + 1) % 3;
    let resp = http()
        .post(format!("{}/events/clu/changed", pollers[other].url()))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("livepush-forwarded", "1")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert_accepted(&Answer { status, headers: Default::default(), body }, "ignored", 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_that_went_out_before_a_publish_does_not_bring_the_old_document_back() {
    let dir = temp_dir("publish-race");
    let media = TestMedia::start().await;
    media.set_json("race", r#"{"n":0}"#);
    let p = poller(&media, Some(&token_file(&dir, TOKEN)), &[]).await;
    let mut feed = subscribe(p.addr, "race").await;
    expect_live(&mut feed, r#"{"n":0}"#).await;
    // The media service still has the old document and answers slowly (no
    // validators, so the answer is a full 200): a hint's poll goes out...
    media.set("race", Reply::json(r#"{"n":0}"#).delay(Duration::from_millis(800)));
    assert_accepted(&post(&p.url(), "race", Some(TOKEN), "").await, "poll", 0);
    eventually("the hint's poll is out", || media.count("race") == 2).await;
    // ...and while it is out, the new document is published directly.
    assert_accepted(&post(&p.url(), "race", Some(TOKEN), r#"{"n":1}"#).await, "published", 0);
    expect_live(&mut feed, r#"{"n":1}"#).await;
    // The poll's answer (the old document) arrives after the publish: it is
    // older than what subscribers have and changes nothing.
    let later = tokio::time::timeout(Duration::from_millis(1500), feed.message()).await;
    assert!(later.is_err(), "the old document came back: {later:?}");
    assert_eq!(media.count("race"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_work_with_batch_polls_too() {
    let dir = temp_dir("batched");
    let media = TestMedia::start().await;
    media.set_json("hb", r#"{"v":0}"#);
    let batch = media.batch_template();
    let args = ["--media-batch-url", batch.as_str(), "--min-hint-gap", "10ms"];
    let p = poller(&media, Some(&token_file(&dir, TOKEN)), &args).await;
    let mut feed = subscribe(p.addr, "hb").await;
    expect_live(&mut feed, r#"{"v":0}"#).await;
    // At a 1 h interval only the hints can bring these; each one right
    // after the previous value arrived (a hint whose poll is lost would
    // leave the stream waiting for the next round, an hour away).
    for v in 1..=20 {
        let doc = format!(r#"{{"v":{v}}}"#);
        media.set_json("hb", &doc);
        assert_accepted(&post(&p.url(), "hb", Some(TOKEN), "").await, "poll", 0);
        expect_live(&mut feed, &doc).await;
    }
    assert_eq!(media.total(), 0, "every poll went through the batch endpoint");
}
