//! Presence end to end: three edges report who watches in batches, the poller
//! merges and deduplicates them, forwards them to the media service, and
//! browsers see the cluster-wide count as a `presence` event.

use livepush::proto::{
    EventPresence, EventViewers, HeartbeatBatch, PresenceRequest, presence_client::PresenceClient,
};
use livepush_tests::{PATIENCE, TestMedia, sse::SseClient, start_edge, start_poller};
use std::time::Duration;
use tonic::Code;

async fn presence_client(addr: std::net::SocketAddr) -> PresenceClient<tonic::transport::Channel> {
    PresenceClient::connect(format!("http://{addr}")).await.unwrap()
}

/// Polls GetPresence until `check` holds.
async fn wait_presence(
    client: &mut PresenceClient<tonic::transport::Channel>,
    event: &str,
    what: &str,
    check: impl Fn(&EventPresence) -> bool,
) -> EventPresence {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let p = client.get_presence(PresenceRequest { event_id: event.into() }).await.unwrap().into_inner();
        if check(&p) {
            return p;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; last {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_edges_are_merged_deduplicated_expired_and_pushed_to_browsers() {
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
    let edge = |id: &'static str| {
        let poller = poller.url();
        async move { start_edge(&["--poller", &poller, "--heartbeat-interval", "200ms", "--edge-id", id]).await }
    };
    let (a, b, c) = (edge("edge-a").await, edge("edge-b").await, edge("edge-c").await);
    let open = |edge: &livepush_tests::Running, event: &str, vid: Option<&str>| {
        let url = match vid {
            Some(v) => format!("{}/live/{event}/stream?vid={v}", edge.url()),
            None => format!("{}/live/{event}/stream", edge.url()),
        };
        async move { SseClient::open(&url).await }
    };

    // "match": ann in two tabs on a and once on b, bob on b, carl and two
    // anonymous viewers on c. "other": dan on a.
    let mut ann_a1 = open(&a, "match", Some("ann")).await;
    let _ann_a2 = open(&a, "match", Some("ann")).await;
    let _ann_b = open(&b, "match", Some("ann")).await;
    let bob_b = open(&b, "match", Some("bob")).await;
    let _carl_c = open(&c, "match", Some("carl")).await;
    let _anon_c1 = open(&c, "match", None).await;
    let _anon_c2 = open(&c, "match", None).await;
    let _dan_a = open(&a, "other", Some("dan")).await;

    let mut client = presence_client(poller.addr).await;
    // ann on b alone already makes five viewers: wait for all three edges.
    let p = wait_presence(&mut client, "match", "all viewers", |p| p.viewers == 5 && p.edges == 3).await;
    assert_eq!((p.identified, p.anonymous, p.edges), (3, 2, 3), "{p:?}");
    assert_eq!(p.vids, ["ann", "bob", "carl"], "one vid in two tabs and on two edges counts once");
    let other = wait_presence(&mut client, "other", "dan", |p| p.viewers == 1).await;
    assert_eq!(other.vids, ["dan"]);

    // A browser sees the cluster-wide count as a named event; onmessage
    // (unnamed events) only ever carries the event data.
    let seen = loop {
        let e = ann_a1.next().await.expect("stream open");
        match e.event.as_str() {
            "presence" if e.data == r#"{"viewers":5}"# => break e,
            "presence" | "message" => continue,
            other => panic!("unexpected event {other}"),
        }
    };
    assert!(seen.data.contains("viewers"));

    // The media service got the merged presence, one POST per event.
    let mut forwarded = false;
    for _ in 0..100 {
        forwarded = media.posts().iter().any(|(id, body)| {
            id == "match"
                && body["event_id"] == "match"
                && body["viewers"] == 5
                && body["vids"] == serde_json::json!(["ann", "bob", "carl"])
        });
        if forwarded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(forwarded, "no presence POST with 5 viewers: {:?}", media.posts().last());

    // Bob closes his browser: the count drops (after the interval in which
    // he was still seen).
    drop(bob_b);
    let p = wait_presence(&mut client, "match", "bob gone", |p| p.viewers == 4).await;
    assert_eq!(p.vids, ["ann", "carl"]);

    // Edge c dies without a word: its viewers expire after three of its
    // intervals.
    drop(c);
    let p = wait_presence(&mut client, "match", "edge c expired", |p| p.viewers == 1).await;
    assert_eq!((p.vids.as_slice(), p.anonymous, p.edges), (&["ann".to_owned()][..], 0, 2));
    loop {
        let e = ann_a1.next().await.expect("stream open");
        if e.event == "presence" && e.data == r#"{"viewers":1}"# {
            break;
        }
    }

    // A graceful stop reports an empty batch: b's viewers go at once.
    b.stop().await.unwrap();
    wait_presence(&mut client, "match", "edge b gone", |p| p.edges == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_presence_streams_changes() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let mut client = presence_client(poller.addr).await;
    let mut watch =
        client.watch_presence(PresenceRequest { event_id: "w".into() }).await.unwrap().into_inner();
    let first = tokio::time::timeout(PATIENCE, watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.viewers, 0);

    let batch = |vids: &[&str], anonymous| HeartbeatBatch {
        edge_id: "edge-x".into(),
        interval_ms: 60_000,
        events: vec![EventViewers {
            event_id: "w".into(),
            vids: vids.iter().map(|v| v.to_string()).collect(),
            anonymous,
        }],
    };
    let ack = client.report_heartbeats(batch(&["u1", "u2"], 1)).await.unwrap().into_inner();
    assert_eq!(ack.presence.len(), 1);
    assert_eq!((ack.presence[0].event_id.as_str(), ack.presence[0].viewers), ("w", 3));
    let next = tokio::time::timeout(PATIENCE, watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!((next.viewers, next.identified, next.anonymous), (3, 2, 1));

    // The same state again is no change: the next message is the real one.
    client.report_heartbeats(batch(&["u1", "u2"], 1)).await.unwrap();
    client.report_heartbeats(batch(&["u1"], 0)).await.unwrap();
    let next = tokio::time::timeout(PATIENCE, watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.viewers, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_batches_are_refused_and_change_nothing() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let mut client = presence_client(poller.addr).await;
    let good = HeartbeatBatch {
        edge_id: "edge-ok".into(),
        interval_ms: 60_000,
        events: vec![EventViewers { event_id: "h".into(), vids: vec!["v1".into()], anonymous: 0 }],
    };
    client.report_heartbeats(good.clone()).await.unwrap();

    let ev = |id: &str, vids: Vec<String>| EventViewers { event_id: id.into(), vids, anonymous: 0 };
    let hostile = [
        HeartbeatBatch { edge_id: "bad edge".into(), ..good.clone() },
        HeartbeatBatch { edge_id: String::new(), ..good.clone() },
        HeartbeatBatch { interval_ms: 0, ..good.clone() },
        HeartbeatBatch { events: vec![ev("../x", vec![])], ..good.clone() },
        HeartbeatBatch { events: vec![ev("h", vec!["a\nb".into()])], ..good.clone() },
        HeartbeatBatch { events: vec![ev("h", vec![]), ev("h", vec![])], ..good.clone() },
        HeartbeatBatch {
            events: vec![ev("h", (0..100_001).map(|i| format!("v{i}")).collect())],
            ..good.clone()
        },
        HeartbeatBatch {
            events: (0..100_001).map(|i| ev(&format!("e{i}"), vec![])).collect(),
            ..good.clone()
        },
    ];
    for (i, batch) in hostile.into_iter().enumerate() {
        let err = client.report_heartbeats(batch).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "batch {i}: {err:?}");
    }
    // The refused batches lost nothing that was there.
    let p = client.get_presence(PresenceRequest { event_id: "h".into() }).await.unwrap().into_inner();
    assert_eq!(p.vids, ["v1"]);
    let err = client.get_presence(PresenceRequest { event_id: "a/b".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// With several pollers, each event's viewers go to the poller that owns it
/// (the one that polls it), from every edge, so that poller counts them all
/// once; the other pollers hold nothing for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_pollers_each_event_is_counted_by_its_owner() {
    let media = [TestMedia::start().await, TestMedia::start().await];
    let mut pollers = Vec::new();
    for m in &media {
        pollers.push(start_poller(&["--media-url", &m.template(), "--interval", "1h"]).await);
    }
    let list = format!("{},{}", pollers[0].url(), pollers[1].url());
    let edge = |id: &'static str| {
        let list = list.clone();
        async move { start_edge(&["--poller", &list, "--heartbeat-interval", "200ms", "--edge-id", id]).await }
    };
    let (a, b) = (edge("edge-a").await, edge("edge-b").await);
    let events: Vec<String> = (0..16).map(|i| format!("split-{i}")).collect();
    let mut streams = Vec::new();
    for e in &events {
        for (edge, vid) in [(&a, "ann"), (&b, "ann"), (&b, "bob")] {
            let mut s = SseClient::open(&format!("{}/live/{e}/stream?vid={vid}", edge.url())).await;
            s.next_message().await;
            streams.push(s);
        }
    }
    let mut clients = [presence_client(pollers[0].addr).await, presence_client(pollers[1].addr).await];
    for e in &events {
        let owner = media.iter().position(|m| m.count(e) > 0).expect("polled");
        let p = wait_presence(&mut clients[owner], e, "both edges' viewers", |p| p.viewers == 2).await;
        assert_eq!((p.vids.as_slice(), p.edges), (&["ann".to_owned(), "bob".to_owned()][..], 2), "{e}");
        let other = clients[1 - owner]
            .get_presence(PresenceRequest { event_id: e.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(other.viewers, 0, "{e}: counted by a poller that does not own it: {other:?}");
    }
    let owners: std::collections::BTreeSet<usize> =
        events.iter().map(|e| media.iter().position(|m| m.count(e) > 0).unwrap()).collect();
    assert_eq!(owners.len(), 2, "16 events all owned by one of two pollers (odds 1 in 32,768)");
}
