//! Many events on one connection (`GET /live/stream?event=a&event=b&…`) as a
//! browser's `EventSource` meets it, read with an independent SSE parser:
//! every change of every event once and in order, routed by `event_id`;
//! `end` per event and 204 once all ended; resuming from the last id; hostile
//! input refused before anything reaches the media service.

use livepush_tests::{
    PATIENCE, TestMedia, media::Reply, raw_request, read_for, sse::SseClient, start_edge, start_poller,
};
use serde_json::Value;
use std::{collections::HashMap, time::Duration};

fn multi_url(edge: &livepush_tests::Running, events: &[String]) -> String {
    let query: Vec<String> = events.iter().map(|e| format!("event={e}")).collect();
    format!("{}/live/stream?{}", edge.url(), query.join("&"))
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A data frame's envelope: its event and its media JSON.
fn envelope(data: &str) -> (String, Value) {
    let v: Value = serde_json::from_str(data).expect("the envelope is JSON");
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 2, "only event_id and data: {data}");
    (v["event_id"].as_str().unwrap().to_owned(), v["data"].clone())
}

/// The event a frame (data or named) belongs to.
fn envelope_or_marker(data: &str) -> String {
    let v: Value = serde_json::from_str(data).expect("JSON");
    v["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_events_on_one_connection_every_change_once_in_order_per_event() {
    let media = TestMedia::start().await;
    let events = names("grid", 40);
    for e in &events {
        media.set_json(e, r#"{"round":0}"#);
    }
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let mut browser = SseClient::open(&multi_url(&edge, &events)).await;
    assert_eq!(browser.status, 200);
    assert_eq!(browser.headers["content-type"], "text/event-stream");

    let mut got: HashMap<String, Vec<i64>> = HashMap::new();
    let mut ids = Vec::new();
    const ROUNDS: i64 = 4;
    for round in 0..ROUNDS {
        if round > 0 {
            for e in &events {
                media.set_json(e, &format!(r#"{{"round":{round}}}"#));
            }
        }
        // Every event's value of this round arrives (after what came before).
        while !events.iter().all(|e| got.get(e).is_some_and(|r| r.last() == Some(&round))) {
            let m = browser.next_message().await;
            assert!(!m.id.is_empty() && m.id.len() < 1024, "an opaque resume id: {:?}", m.id);
            ids.push(m.id.clone());
            let (event, data) = envelope(&m.data);
            assert!(events.contains(&event), "routed to an event of the stream: {event}");
            got.entry(event).or_default().push(data["round"].as_i64().unwrap());
        }
    }
    for e in &events {
        assert_eq!(got[e], (0..ROUNDS).collect::<Vec<_>>(), "{e}: each change once, in order");
    }
    // Nothing more is pending: a quiet stream only has keep-alives.
    let resp = livepush_tests::http()
        .get(multi_url(&edge, &events))
        .header("last-event-id", ids.last().unwrap())
        .send();
    let text = read_for(resp.await.unwrap(), Duration::from_millis(500)).await;
    assert!(text.starts_with("retry: ") && !text.contains("data:"), "the last id says it has all: {text:?}");
    // One upstream feed per event, shared: each polled by one poller loop.
    assert!(events.iter().all(|e| media.count(e) > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_ending_sends_its_end_the_rest_go_on_and_all_ending_closes_with_204_after() {
    let media = TestMedia::start().await;
    let events = names("trio", 3);
    for e in &events {
        media.set_json(e, r#"{"v":0}"#);
    }
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let url = multi_url(&edge, &events);
    let mut browser = SseClient::open(&url).await;
    for _ in 0..3 {
        browser.next_message().await;
    }

    media.set(&events[1], Reply::status(404));
    let end = browser.next().await.expect("an end");
    assert_eq!((end.event.as_str(), end.data.as_str()), ("end", r#"{"event_id":"trio-1","state":"ended"}"#));
    // The others keep updating.
    media.set_json(&events[0], r#"{"v":1}"#);
    media.set_json(&events[2], r#"{"v":1}"#);
    let mut updated = Vec::new();
    while updated.len() < 2 {
        let e = browser.next().await.expect("the stream goes on");
        assert_eq!(e.event, "message", "{e:?}");
        let (event, data) = envelope(&e.data);
        assert_eq!(data, serde_json::json!({"v": 1}));
        updated.push(event);
    }
    updated.sort();
    assert_eq!(updated, ["trio-0", "trio-2"]);

    // A reconnect while some go on: the ended one says `end` again, the
    // others resume.
    let mut again = SseClient::open(&url).await;
    assert_eq!(again.status, 200);
    let mut opening = Vec::new();
    for _ in 0..3 {
        let e = again.next().await.unwrap();
        opening.push((e.event, envelope_or_marker(&e.data)));
    }
    opening.sort();
    assert_eq!(
        opening,
        [
            ("end".into(), "trio-1".into()),
            ("message".into(), "trio-0".into()),
            ("message".into(), "trio-2".into())
        ]
    );
    drop(again);

    media.set(&events[0], Reply::status(404));
    media.set(&events[2], Reply::status(404));
    let mut ended = Vec::new();
    while let Some(e) = browser.next().await {
        assert_eq!(e.event, "end", "{e:?}");
        ended.push(e.data);
    }
    ended.sort();
    assert_eq!(
        ended,
        [r#"{"event_id":"trio-0","state":"ended"}"#, r#"{"event_id":"trio-2","state":"ended"}"#],
        "the stream closed after the last end"
    );
    assert_eq!(livepush_tests::http().get(&url).send().await.unwrap().status(), 204);
    // Over the lean HTTP/1.1 path too (a raw GET).
    let target = url.trim_start_matches(&edge.url()).to_owned();
    let (status, _) =
        raw_request(edge.addr, &format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
            .await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_the_last_id_sends_exactly_the_changed_events() {
    let media = TestMedia::start().await;
    let events = names("res", 5);
    for e in &events {
        media.set_json(e, r#"{"v":0}"#);
    }
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let url = multi_url(&edge, &events);
    let mut browser = SseClient::open(&url).await;
    let mut last_id = String::new();
    for _ in 0..5 {
        last_id = browser.next_message().await.id;
    }
    drop(browser);

    // Meanwhile two events change (another browser keeps the feeds and
    // shows when the edge has the new values).
    let mut watcher = SseClient::open(&url).await;
    for _ in 0..5 {
        watcher.next_message().await;
    }
    media.set_json(&events[1], r#"{"v":1}"#);
    media.set_json(&events[3], r#"{"v":1}"#);
    for _ in 0..2 {
        watcher.next_message().await;
    }

    let resumed = livepush_tests::http().get(&url).header("last-event-id", &last_id).send().await.unwrap();
    let text = read_for(resumed, Duration::from_millis(600)).await;
    let mut changed: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            let (event, data) = envelope(d);
            assert_eq!(data, serde_json::json!({"v": 1}), "{text}");
            event
        })
        .collect();
    changed.sort();
    assert_eq!(changed, ["res-1", "res-3"], "exactly the changed ones: {text}");
    // The polyfill's query parameter does the same.
    let resumed = livepush_tests::http().get(format!("{url}&lastEventId={last_id}")).send().await.unwrap();
    assert_eq!(read_for(resumed, Duration::from_millis(600)).await.matches("data: ").count(), 2);

    // A forged, malformed or foreign id is ignored: everything is sent.
    let other = multi_url(&edge, &events[..4]);
    let mut foreign = SseClient::open(&other).await;
    let foreign_id = foreign.next_message().await.id;
    let forged = format!("{}x", &last_id[..last_id.len() - 1]);
    for id in [foreign_id.as_str(), forged.as_str(), "AQAAAAA", "12345", "", &"A".repeat(4000)] {
        let resp = livepush_tests::http().get(&url).header("last-event-id", id).send().await.unwrap();
        let text = read_for(resp, Duration::from_millis(400)).await;
        assert_eq!(text.matches("data: ").count(), 5, "{id:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_lists_get_clear_errors_and_nothing_reaches_the_media_service() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let get = |url: String| async move {
        let resp = livepush_tests::http().get(url).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    };
    let base = format!("{}/live/stream", edge.url());

    let (status, body) = get(multi_url(&edge, &names("many", 65))).await;
    assert_eq!((status, body.as_str()), (400, "too many events: at most 64 per stream\n"));
    // 64 distinct ones with duplicates are fine (checked below with fewer).
    for empty in [base.clone(), format!("{base}?vid=ann"), format!("{base}?event=")] {
        let (status, body) = get(empty.clone()).await;
        assert_eq!(status, 400, "{empty}: {body}");
        assert!(body.contains("event"), "{empty}: {body}");
    }
    for bad in ["..", "a%2Fb", "a%0Ab", &"z".repeat(129)] {
        let (status, body) = get(format!("{base}?event=ok-1&event={bad}&event=ok-2")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.starts_with("event id"), "{bad}: {body}");
    }
    let (status, body) = get(format!("{base}?event=ok-1&event=ok-2&vid=a%20b")).await;
    assert_eq!(status, 400, "{body}");
    // A 100 KB query: refused by the head limit (lean path and hyper alike).
    let huge = format!("/live/stream?event=ok-1&{}", "event=x&".repeat(100_000 / 8));
    let (status, _) = raw_request(edge.addr, &format!("GET {huge} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    assert_eq!(status, 431);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(media.total(), 0, "nothing forwarded upstream: {:?}", media.seen());

    // Duplicates are ignored: 64 distinct ids repeated twice is one stream
    // of 64 events; each value once.
    let ids = names("dup", 64);
    let twice: Vec<String> = ids.iter().chain(ids.iter()).cloned().collect();
    let mut browser = SseClient::open(&multi_url(&edge, &twice)).await;
    assert_eq!(browser.status, 200);
    let mut seen = HashMap::new();
    for _ in 0..64 {
        let (event, _) = envelope(&browser.next_message().await.data);
        *seen.entry(event).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 64);
    assert!(seen.values().all(|&n| n == 1));
    // Ids browsers percent-encode (URLSearchParams writes `~` as %7E).
    let mut tilde = SseClient::open(&format!("{base}?event=%7Etilde")).await;
    assert_eq!(envelope(&tilde.next_message().await.data).0, "~tilde");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_multi_stream_is_one_connection_and_counts_its_viewer_on_every_event() {
    let media = TestMedia::start().await;
    let poller = start_poller(&[
        "--media-url",
        &media.template(),
        "--interval",
        "1h",
        "--heartbeat-url",
        &media.heartbeat_template(),
        "--heartbeat-interval",
        "200ms",
    ])
    .await;
    let edge = start_edge(&[
        "--poller",
        &poller.url(),
        "--heartbeat-interval",
        "200ms",
        "--max-connections",
        "2",
        "--keepalive",
        "100ms",
    ])
    .await;
    let events = names("pres", 3);
    let url = format!("{}&vid=ann", multi_url(&edge, &events));
    let mut ann = SseClient::open(&url).await;
    let _bob = SseClient::open(&format!("{}&vid=bob", multi_url(&edge, &events[..1]))).await;
    // Two streams of 4 events are two connections: a third is refused.
    let third = livepush_tests::http().get(&url).send().await.unwrap();
    assert_eq!(third.status(), 503);
    assert_eq!(third.headers()["retry-after"], "5");

    // Presence for every event, tagged with it.
    let mut counts = HashMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while counts.len() < 3 || counts.get("pres-0") != Some(&2) {
        assert!(tokio::time::Instant::now() < deadline, "presence for every event: {counts:?}");
        let e = ann.next().await.expect("stream open");
        if e.event == "presence" {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            counts.insert(v["event_id"].as_str().unwrap().to_owned(), v["viewers"].as_u64().unwrap());
        }
    }
    assert_eq!(counts["pres-1"], 1);
    assert_eq!(counts["pres-2"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_multi_event_streams_with_a_spread_retry() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let edge = start_edge(&["--poller", &poller.url(), "--drain-spread", "200ms"]).await;
    let events = names("drain", 3);
    let mut browser = SseClient::open(&multi_url(&edge, &events)).await;
    for _ in 0..3 {
        browser.next_message().await;
    }
    let resp = livepush_tests::http().get(multi_url(&edge, &events)).send().await.unwrap();
    let stop = tokio::spawn(edge.stop());
    let text = read_for(resp, PATIENCE).await;
    assert_eq!(text.matches("data: {\"event_id\":\"drain-").count(), 3, "{text}");
    let last = text.trim_end().lines().last().unwrap();
    let delay: u64 = last.strip_prefix("retry: ").expect("drain says when to come back").parse().unwrap();
    assert!(delay <= 200, "{text}");
    assert!(browser.next().await.is_none(), "closed by the drain");
    stop.await.unwrap().unwrap();
}
