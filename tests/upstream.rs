//! The poller as a client of someone else's service: HTTPS verified against
//! a test CA, mutual TLS, credentials from flags and from a rotating file
//! that never reach the log, redirects refused, proxies honoured, IPv6
//! literals, and numbers that keep every digit on the way to browsers.
//!
//! Pollers run as real processes where the environment (proxy variables),
//! the whole log output or the process's metrics are what is checked.

use livepush::proto::{EventViewers, HeartbeatBatch, LiveUpdate, State, presence_client::PresenceClient};
use livepush_tests::{
    PATIENCE, TestMedia, eventually,
    media::Reply,
    process::{Process, free_addr, wait_ok},
    proxy::TestProxy,
    sse::SseClient,
    start_edge, start_poller, subscribe,
    tls_media::{Leaf, TestCa, TlsMedia, Validity},
};
use std::{path::PathBuf, time::Duration};

const POLLER: &str = env!("CARGO_BIN_EXE_livepush-test-poller");
const UPSTREAM: &str = "livepush_poller_upstream_requests_total";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("livepush-upstream-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A poller process polling `media_url` every 200 ms (backoff capped at
/// 400 ms), with `args` and `env`, logging to `log` if given; returns once
/// it serves.
async fn poller(
    media_url: &str,
    args: &[&str],
    env: &[(&str, &str)],
    log: Option<&std::path::Path>,
) -> Process {
    let mut all = vec!["--media-url", media_url, "--interval", "200ms", "--max-backoff", "400ms"];
    all.extend_from_slice(args);
    let p = Process::start_with(POLLER, free_addr(), &all, env, log);
    wait_ok(&format!("{}/metrics", p.url())).await;
    p
}

async fn next(stream: &mut tonic::Streaming<LiveUpdate>) -> LiveUpdate {
    livepush_tests::next_update(stream).await
}

async fn outcome(p: &Process, outcome: &str) -> f64 {
    p.metric(&format!("{UPSTREAM}{{outcome=\"{outcome}\"}}")).await
}

/// The next event of a browser that is not a keep-alive; its (name, data).
async fn next_event(browser: &mut SseClient) -> (String, String) {
    let e = browser.next().await.expect("stream open");
    (e.event, e.data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_media_is_verified_and_bad_certificates_go_stale_keeping_the_value() {
    let dir = temp_dir("https");
    let ca = TestCa::new("livepush test CA");
    let ca_path = ca.write_ca(&dir);
    let media = TlsMedia::start(&ca.leaf(&["localhost"], Validity::Valid)).await;
    media.set_json("ev", r#"{"v":1}"#);
    let log = dir.join("poller.log");
    let env = [("RUST_LOG", "info")];
    let p = poller(&media.template(), &["--media-ca", ca_path.to_str().unwrap()], &env, Some(&log)).await;
    let edge = start_edge(&["--poller", &p.url()]).await;
    let mut browser = SseClient::open(&format!("{}/live/ev/stream", edge.url())).await;
    assert_eq!(next_event(&mut browser).await, ("message".into(), r#"{"v":1}"#.into()));
    assert!(outcome(&p, "ok").await >= 1.0);
    assert!(media.versions().contains(&axum::http::Version::HTTP_2), "h2 by ALPN: {:?}", media.versions());

    // Each bad certificate: the browser is told `stale` and keeps its value
    // (no data event), the failure is counted as tls and named in the log.
    let bad: [(Leaf, &str); 2] = [
        (ca.leaf(&["localhost"], Validity::Expired), "expired"),
        (ca.leaf(&["media.other.example"], Validity::Valid), "not valid for name"),
    ];
    for (leaf, why) in bad {
        let tls_before = outcome(&p, "tls").await;
        media.set_leaf(&leaf);
        media.set_json("ev", r#"{"v":"from a server we must not trust"}"#);
        assert_eq!(next_event(&mut browser).await.0, "stale", "{why}");
        let tls_after = outcome(&p, "tls").await;
        assert!(tls_after > tls_before, "{why}: outcome=tls {tls_before} -> {tls_after}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.lines().any(|l| l.contains("TLS with localhost failed") && l.to_lowercase().contains(why)),
            "{why} not in the log:\n{text}"
        );
        // Back to a good certificate: fresh again; the data changed only now.
        media.set_json("ev", r#"{"v":1}"#);
        media.set_leaf(&ca.leaf(&["localhost"], Validity::Valid));
        assert_eq!(next_event(&mut browser).await.0, "live", "{why}: recovered, same value");
    }
    assert!(media.handshakes_failed() >= 2);

    // Without --media-ca the test CA is not trusted: stale from the start,
    // nothing ever fetched.
    let untrusting = poller(&media.template(), &[], &[], None).await;
    let mut feed = subscribe(untrusting.addr, "ev2").await;
    assert_eq!(next(&mut feed).await.state, State::Stale as i32);
    assert!(outcome(&untrusting, "tls").await >= 1.0);
    assert_eq!(media.count("ev2"), 0, "no request passed an unverified handshake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let dir = temp_dir("mtls");
    let ca = TestCa::new("media CA");
    let ca_path = ca.write_ca(&dir);
    let clients = TestCa::new("client CA");
    let (cert, key) = clients.client_leaf("livepush-poller").write(&dir);
    let media = TlsMedia::start_with_client_auth(&ca.leaf(&["localhost"], Validity::Valid), &clients).await;
    media.set_json("m", r#"{"mtls":true}"#);

    let with = poller(
        &media.template(),
        &[
            "--media-ca",
            ca_path.to_str().unwrap(),
            "--media-client-cert",
            cert.to_str().unwrap(),
            "--media-client-key",
            key.to_str().unwrap(),
        ],
        &[],
        None,
    )
    .await;
    let first = next(&mut subscribe(with.addr, "m").await).await;
    assert_eq!((first.state, first.data.as_str()), (State::Live as i32, r#"{"mtls":true}"#));

    let log = dir.join("without.log");
    let without = poller(
        &media.template(),
        &["--media-ca", ca_path.to_str().unwrap()],
        &[("RUST_LOG", "info")],
        Some(&log),
    )
    .await;
    let first = next(&mut subscribe(without.addr, "m2").await).await;
    assert_eq!(first.state, State::Stale as i32);
    assert_eq!(media.count("m2"), 0, "the media double never answered a poller without a certificate");
    // Under TLS 1.3 the server refuses a missing client certificate after
    // the client's side of the handshake is done, so the poller sees a
    // closed connection: the poll fails like an unreachable service.
    let failed = outcome(&without, "tls").await + outcome(&without, "unreachable").await;
    assert!(failed >= 1.0, "{}", std::fs::read_to_string(&log).unwrap());
    assert_eq!(outcome(&without, "ok").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_from_flags_and_a_rotating_file_reach_the_media_service_but_never_the_log() {
    let dir = temp_dir("headers");
    let media = TestMedia::start().await;
    let file = dir.join("media-headers");
    std::fs::write(&file, "# mounted from a Secret\nAuthorization: Bearer tok-one-SECRET1\n").unwrap();
    let log = dir.join("poller.log");
    let args = [
        "--media-header",
        "X-Api-Key: key-SECRET0",
        "--media-headers-file",
        file.to_str().unwrap(),
        "--heartbeat-url",
        &media.heartbeat_template(),
        "--heartbeat-interval",
        "200ms",
    ];
    // The most talkative level: no dependency may print a value either.
    let p = poller(&media.template(), &args, &[("RUST_LOG", "trace")], Some(&log)).await;
    let mut feed = subscribe(p.addr, "h").await;
    assert_eq!(next(&mut feed).await.state, State::Live as i32);
    eventually("polls with both headers", || {
        media.header_values("h", "authorization").contains(&"Bearer tok-one-SECRET1".to_owned())
            && media.header_values("h", "x-api-key").contains(&"key-SECRET0".to_owned())
    })
    .await;

    // Presence posts carry the media headers (no --heartbeat-header given).
    let mut presence = PresenceClient::connect(p.url()).await.unwrap();
    let batch = HeartbeatBatch {
        edge_id: "edge-h".into(),
        interval_ms: 60_000,
        events: vec![EventViewers { event_id: "h".into(), vids: vec!["u1".into()], anonymous: 0 }],
    };
    presence.report_heartbeats(batch).await.unwrap();
    eventually("a presence post with the media headers", || {
        media.post_header_values("x-api-key").contains(&"key-SECRET0".to_owned())
    })
    .await;

    // Rotate the token: later polls carry the new one, with no restart and
    // no failed poll in between.
    let polls_before = media.count("h");
    std::fs::write(&file, "Authorization: Bearer tok-two-SECRET2\n").unwrap();
    eventually("polls with the rotated token", || {
        media.header_values("h", "authorization").contains(&"Bearer tok-two-SECRET2".to_owned())
    })
    .await;
    let rotated = media.header_values("h", "authorization");
    let first_new = rotated.iter().position(|v| v.ends_with("SECRET2")).unwrap();
    assert!(rotated[first_new..].iter().all(|v| v.ends_with("SECRET2")), "{rotated:?}");
    assert!(media.count("h") > polls_before);
    assert_eq!(p.metric("livepush_poller_backoffs_total").await, 0.0, "no poll failed over the rotation");

    // An invalid rewrite keeps the last good headers.
    std::fs::write(&file, "Authorization Bearer broken-SECRET3\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = media.count("h");
    eventually("another poll", || media.count("h") > after).await;
    assert!(media.header_values("h", "authorization").last().unwrap().ends_with("SECRET2"));

    drop(feed);
    drop(presence);
    drop(p);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("authorization") && text.contains("x-api-key"), "header names are logged");
    assert!(text.contains("headers file is invalid") && text.contains("line 1"), "{text}");
    for secret in ["SECRET0", "SECRET1", "SECRET2", "SECRET3"] {
        assert!(!text.contains(secret), "{secret} leaked into the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let dir = temp_dir("redirect");
    let elsewhere = TestMedia::start().await;
    let media = TestMedia::start().await;
    let target = format!("http://{}/live/r", elsewhere.addr);
    media.set("r", Reply::status(302).header("location", &target));
    let log = dir.join("poller.log");
    let p = poller(&media.template(), &[], &[("RUST_LOG", "info")], Some(&log)).await;
    let mut feed = subscribe(p.addr, "r").await;
    assert_eq!(next(&mut feed).await.state, State::Stale as i32);
    eventually("a few polls", || media.count("r") >= 3).await;
    assert!(outcome(&p, "redirect").await >= 3.0);
    assert_eq!(outcome(&p, "ok").await, 0.0);
    assert_eq!(elsewhere.total(), 0, "the redirect target was never asked");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("302") && text.contains(&target), "the Location is logged: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_beyond_64_bits_reach_browsers_digit_for_digit() {
    let media = TestMedia::start().await;
    let doc = r#"{"n": 1180591620717411303425, "price": 0.12345678901234567890, "id": 18446744073709551615}"#;
    let compact = r#"{"n":1180591620717411303425,"price":0.12345678901234567890,"id":18446744073709551615}"#;
    media.set_json("big", doc);
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "100ms"]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let mut browser = SseClient::open(&format!("{}/live/big/stream", edge.url())).await;
    assert_eq!(next_event(&mut browser).await, ("message".into(), compact.into()));

    // Reordered keys and whitespace are the same value: not a change.
    media.set_json(
        "big",
        r#"{ "id": 18446744073709551615, "price": 0.12345678901234567890, "n": 1180591620717411303425 }"#,
    );
    let seen = media.count("big");
    eventually("polls of the reordered document", || media.count("big") >= seen + 3).await;
    // A change in the 22nd digit is a change.
    media.set_json(
        "big",
        r#"{"n": 1180591620717411303426, "price": 0.12345678901234567890, "id": 18446744073709551615}"#,
    );
    let (name, data) = next_event(&mut browser).await;
    assert_eq!(name, "message");
    assert_eq!(
        data,
        r#"{"n":1180591620717411303426,"price":0.12345678901234567890,"id":18446744073709551615}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_variables_are_honoured() {
    // HTTP_PROXY: plain http polls go through the forward proxy.
    let media = TestMedia::start().await;
    let proxy = TestProxy::start().await;
    let p = poller(&media.template(), &[], &[("HTTP_PROXY", &proxy.url())], None).await;
    assert_eq!(next(&mut subscribe(p.addr, "px").await).await.state, State::Live as i32);
    let url = format!("http://{}/live/px", media.addr);
    assert!(proxy.seen().iter().any(|s| s.method == "GET" && s.target == url), "{:?}", proxy.seen());
    drop(p);

    // NO_PROXY: the same poll goes direct.
    let direct = TestProxy::start().await;
    let env = [("HTTP_PROXY", direct.url()), ("NO_PROXY", "127.0.0.1".to_owned())];
    let env: Vec<_> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let p = poller(&media.template(), &[], &env, None).await;
    assert_eq!(next(&mut subscribe(p.addr, "np").await).await.state, State::Live as i32);
    // At least the first poll (at a 200 ms interval a second may have gone
    // too on a busy machine), all of them direct.
    assert!(media.count("np") >= 1);
    assert_eq!(direct.count(), 0, "NO_PROXY host went through the proxy: {:?}", direct.seen());
    drop(p);

    // HTTPS_PROXY: https polls tunnel through CONNECT, still verified.
    let dir = temp_dir("proxy");
    let ca = TestCa::new("proxy test CA");
    let ca_path = ca.write_ca(&dir);
    let secure = TlsMedia::start(&ca.leaf(&["localhost"], Validity::Valid)).await;
    let tunnel = TestProxy::start().await;
    let args = ["--media-ca", ca_path.to_str().unwrap()];
    let p = poller(&secure.template(), &args, &[("HTTPS_PROXY", &tunnel.url())], None).await;
    assert_eq!(next(&mut subscribe(p.addr, "tx").await).await.state, State::Live as i32);
    let connect = format!("localhost:{}", secure.addr.port());
    assert!(
        tunnel.seen().iter().any(|s| s.method == "CONNECT" && s.target == connect),
        "{:?}",
        tunnel.seen()
    );
    assert!(secure.count("tx") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_literal_media_urls_work() {
    let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
        assert!(std::env::var_os("CI").is_none(), "IPv6 loopback is unavailable under CI");
        eprintln!("SKIPPED: no IPv6 loopback on this machine");
        return;
    };
    let addr = listener.local_addr().unwrap();
    let (media, app) = TestMedia::app_at(addr);
    tokio::spawn(async move { axum::serve(listener, app).await });
    media.set_json("v6", r#"{"ip":"v6"}"#);
    let template = format!("http://[::1]:{}/live/{{event_id}}", addr.port());
    let poller = start_poller(&["--media-url", &template, "--interval", "1h"]).await;
    let first = tokio::time::timeout(PATIENCE, next(&mut subscribe(poller.addr, "v6").await)).await.unwrap();
    assert_eq!((first.state, first.data.as_str()), (State::Live as i32, r#"{"ip":"v6"}"#));
    assert_eq!(media.count("v6"), 1);
}
