//! `GET /metrics` on the poller (its gRPC port, over plain HTTP/1.1) and on
//! the edge, parsed with an independent Prometheus text parser and checked
//! against what the test did and what the media service counted.
//!
//! The recorder is global to the process, so everything is in ONE test
//! function: another test in this file would run in parallel and move the
//! same numbers.

use livepush::proto::{
    EventViewers, HeartbeatBatch, PresenceRequest, State, presence_client::PresenceClient,
};
use livepush_tests::{
    PATIENCE, TestMedia, media::Reply, next_update, sse::SseClient, start_edge, start_poller, subscribe,
};
use prometheus_parse::{Sample, Scrape, Value};
use std::{net::SocketAddr, time::Duration};

/// A parsed scrape.
struct Metrics(Vec<Sample>);

impl Metrics {
    fn parse(text: &str) -> Self {
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format");
        Self(scrape.samples)
    }

    /// The value of `name` with exactly `labels` (counter or gauge); 0 when
    /// absent, as Prometheus reads a series that was never touched.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self
            .0
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)));
        match found.map(|s| &s.value) {
            None => 0.0,
            Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
            Some(other) => panic!("{name} is not a counter or gauge: {other:?}"),
        }
    }

    /// A histogram's number of observations (its `+Inf` bucket).
    fn histogram_count(&self, name: &str) -> f64 {
        let sample = self.0.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("no {name}"));
        let Value::Histogram(buckets) = &sample.value else { panic!("{name} is not a histogram") };
        assert!(buckets.len() > 2, "explicit buckets expected: {buckets:?}");
        buckets.iter().find(|b| b.less_than.is_infinite()).expect("+Inf bucket").count
    }
}

/// `GET http://addr/metrics` over HTTP/1.1 on a fresh connection.
async fn scrape(addr: SocketAddr) -> Metrics {
    let client = reqwest::Client::builder().http1_only().pool_max_idle_per_host(0).build().unwrap();
    let resp = client.get(format!("http://{addr}/metrics")).send().await.expect("scrape");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.headers()["content-type"], "text/plain; version=0.0.4");
    Metrics::parse(&resp.text().await.unwrap())
}

/// Scrapes `addr` until `check` holds (gauges follow closes asynchronously).
async fn scrape_until(addr: SocketAddr, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let m = scrape(addr).await;
        if check(&m) {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `browser` until the message carrying `{"v":v}`; returns how many
/// named events (markers, presence) came before it.
async fn expect_value(browser: &mut SseClient, v: u64) -> u64 {
    let mut named = 0;
    loop {
        let event = browser.next().await.expect("stream open");
        if event.event != "message" {
            named += 1;
            continue;
        }
        let json: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(json["v"], v, "a browser skipped or repeated a change: {}", event.data);
        return named;
    }
}

const UPSTREAM: &str = "livepush_poller_upstream_requests_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_happened() {
    let media = TestMedia::start().await;
    media.set_json("mx-a", r#"{"v":0}"#);
    media.set_json("mx-b", r#"{"v":0}"#);
    let poller = start_poller(&[
        "--media-url",
        &media.template(),
        "--interval",
        "100ms",
        "--max-backoff",
        "300ms",
        "--heartbeat-url",
        &media.heartbeat_template(),
        "--heartbeat-interval",
        "200ms",
    ])
    .await;
    // Heartbeats every 10 minutes: no `presence` frames in the counts below.
    let edge =
        start_edge(&["--poller", &poller.url(), "--max-connections", "3", "--heartbeat-interval", "10m"])
            .await;

    // ---- three browsers on two events; two changes each; one leaves ----
    let open = |id: &str| {
        let url = format!("{}/live/{id}/stream", edge.url());
        async move { SseClient::open(&url).await }
    };
    let mut named = 0;
    // One browser per event first; once they have v0, a second one on mx-a
    // gets v0 with its stream's opening (both ways a frame is delivered).
    let mut browsers = vec![open("mx-a").await, open("mx-b").await];
    for b in &mut browsers {
        assert_eq!(b.status, 200);
        named += expect_value(b, 0).await;
    }
    let mut late = open("mx-a").await;
    assert_eq!(late.status, 200);
    named += expect_value(&mut late, 0).await;
    browsers.push(late);
    // A fourth stream is over --max-connections.
    let refused = open("mx-b").await;
    assert_eq!(refused.status, 503);
    drop(refused);

    for v in 1..3 {
        media.set_json("mx-a", &format!(r#"{{"v":{v}}}"#));
        media.set_json("mx-b", &format!(r#"{{"v":{v}}}"#));
        for b in &mut browsers {
            named += expect_value(b, v).await;
        }
    }
    // One of mx-a's two browsers leaves: both events keep a browser.
    drop(browsers.remove(0));

    // A presence batch straight to the poller, one invalid batch, and one
    // presence watcher.
    let mut presence = PresenceClient::connect(poller.url()).await.unwrap();
    let batch = |edge_id: &str| HeartbeatBatch {
        edge_id: edge_id.into(),
        interval_ms: 60_000,
        events: vec![
            EventViewers { event_id: "mx-a".into(), vids: vec!["v1".into(), "v2".into()], anonymous: 1 },
            EventViewers { event_id: "mx-b".into(), vids: vec!["v1".into()], anonymous: 0 },
        ],
    };
    presence.report_heartbeats(batch("metrics-test")).await.expect("a valid batch");
    let invalid = presence.report_heartbeats(batch("not an id")).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    let mut watching =
        presence.watch_presence(PresenceRequest { event_id: "mx-a".into() }).await.unwrap().into_inner();
    watching.message().await.unwrap().expect("current presence");

    // ---- the edge ----
    let m = scrape_until(edge.addr, "the closed stream to be gone", |m| {
        m.get("livepush_edge_streams_open", &[]) == 2.0 && m.get("livepush_edge_connections_open", &[]) == 3.0
    })
    .await;
    // Two SSE connections and this scrape's.
    assert_eq!(m.get("livepush_edge_connections_open", &[]), 3.0);
    let accepted = m.get("livepush_edge_connections_accepted_total", &[]);
    // 3 streams, the refused one, and at least this scrape (each scrape has
    // a connection of its own).
    assert!(accepted >= 5.0, "{accepted}");
    let m2 = scrape(edge.addr).await;
    assert_eq!(
        m2.get("livepush_edge_connections_accepted_total", &[]),
        accepted + 1.0,
        "one more scrape, one more connection"
    );
    // Each browser got v0, v1 and v2: nine data frames, plus any named event
    // it read (none expected with a healthy poller and no heartbeats).
    let delivered = m.get("livepush_edge_updates_delivered_total", &[]);
    assert_eq!(delivered, 9.0 + named as f64, "named events seen: {named}");
    assert_eq!(m.get("livepush_edge_rejected_total", &[("reason", "max_connections")]), 1.0);
    assert_eq!(m.get("livepush_edge_rejected_total", &[("reason", "per_client")]), 0.0);
    assert_eq!(m.get("livepush_edge_slow_consumers_dropped_total", &[]), 0.0);
    assert_eq!(m.get("livepush_edge_drain_closed_streams_total", &[]), 0.0);

    // ---- the poller, on its gRPC port ----
    let m = scrape(poller.addr).await;
    // The edge holds one upstream stream per event.
    assert_eq!(m.get("livepush_poller_subscribers", &[]), 2.0);
    assert_eq!(m.get("livepush_poller_events_watched", &[]), 2.0);
    // v0, v1, v2 of each event, nothing else (no failure, no end).
    assert_eq!(m.get("livepush_poller_updates_published_total", &[]), 6.0);
    assert!(m.get(UPSTREAM, &[("outcome", "ok")]) >= 6.0);
    assert_eq!(m.get("livepush_poller_backoffs_total", &[]), 0.0);
    assert_eq!(m.get("livepush_poller_heartbeat_batches_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(m.get("livepush_poller_heartbeat_batches_total", &[("outcome", "invalid")]), 1.0);
    assert_eq!(m.get("livepush_poller_presence_edges", &[]), 1.0);
    assert_eq!(m.get("livepush_poller_presence_events", &[]), 2.0);
    // mx-a: v1, v2 and one anonymous; mx-b: v1.
    assert_eq!(m.get("livepush_poller_presence_viewers", &[]), 4.0);
    assert_eq!(m.get("livepush_poller_presence_watched_events", &[]), 1.0);
    drop(watching);

    // Presence is forwarded every 200 ms: posts counted once answered.
    let m = scrape_until(poller.addr, "a presence post", |m| {
        m.get("livepush_poller_presence_posts_total", &[("outcome", "ok")]) >= 1.0
    })
    .await;
    let posted = m.get("livepush_poller_presence_posts_total", &[("outcome", "ok")]);
    assert!(posted <= media.posts().len() as f64, "{posted} counted, {} received", media.posts().len());
    assert_eq!(m.get("livepush_poller_presence_posts_total", &[("outcome", "failed")]), 0.0);

    // ---- the edge drains its two streams ----
    edge.stop().await.unwrap();
    for b in &mut browsers {
        while b.next().await.is_some() {}
    }
    // The edge is gone; the process's recorder still has its numbers.
    let m = Metrics::parse(&livepush::metrics::render());
    assert_eq!(m.get("livepush_edge_drain_closed_streams_total", &[]), 2.0);
    assert_eq!(m.get("livepush_edge_streams_open", &[]), 0.0);

    // ---- a failing event, then every event ends ----
    media.set("mx-err", Reply::status(500));
    let mut failing = subscribe(poller.addr, "mx-err").await;
    assert_eq!(next_update(&mut failing).await.state, State::Stale as i32);
    // The edge's upstream streams end with its connection.
    let m = scrape_until(poller.addr, "only the direct subscriber", |m| {
        m.get("livepush_poller_subscribers", &[]) == 1.0
    })
    .await;
    assert!(m.get(UPSTREAM, &[("outcome", "http_error")]) >= 1.0);
    assert!(m.get("livepush_poller_backoffs_total", &[]) >= 1.0);

    for id in ["mx-a", "mx-b", "mx-err"] {
        media.set(id, Reply::status(404));
    }
    assert_eq!(next_update(&mut failing).await.state, State::Ended as i32);
    let m = scrape_until(poller.addr, "every event to end", |m| {
        m.get("livepush_poller_events_watched", &[]) == 0.0
    })
    .await;
    // Nothing polls any more: the media service's count is final, and every
    // request it answered is counted once under its outcome.
    let requests = ["mx-a", "mx-b", "mx-err"].iter().map(|id| media.count(id)).sum::<usize>() as f64;
    let outcomes = [
        "ok",
        "not_modified",
        "ended",
        "timeout",
        "unreachable",
        "tls",
        "redirect",
        "http_error",
        "too_large",
        "bad_body",
        "body_error",
    ];
    let counted: f64 = outcomes.iter().map(|o| m.get(UPSTREAM, &[("outcome", o)])).sum();
    assert_eq!(counted, requests, "upstream requests by outcome vs the media service's count");
    assert_eq!(m.histogram_count("livepush_poller_upstream_request_duration_seconds"), requests);
    assert_eq!(m.get(UPSTREAM, &[("outcome", "ended")]), 3.0);
    let http_errors = m.get(UPSTREAM, &[("outcome", "http_error")]);
    assert_eq!(m.get("livepush_poller_backoffs_total", &[]), http_errors, "one backoff per failed poll");
    assert_eq!(
        m.get(UPSTREAM, &[("outcome", "ok")])
            + m.get(UPSTREAM, &[("outcome", "not_modified")])
            + http_errors
            + 3.0,
        requests
    );
    // 6 values, mx-err's stale, and three ends.
    assert_eq!(m.get("livepush_poller_updates_published_total", &[]), 10.0);
    drop(failing);
    scrape_until(poller.addr, "the last subscriber to leave", |m| {
        m.get("livepush_poller_subscribers", &[]) == 0.0
    })
    .await;
    poller.stop().await.unwrap();
}
