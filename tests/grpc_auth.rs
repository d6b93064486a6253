//! The poller's gRPC doors with `--clients-file`: every RPC without a token,
//! with an unknown one, with a reader's and with an edge's; health and
//! reflection open to all; tokens rotated without a restart and never
//! logged; an edge that presents its token end to end; a hostile client
//! with 2,000 made-up edge ids that cannot stop a real edge's viewers from
//! being counted; `GetPresence` on 100,000 viewers answering a bounded,
//! correct list; and the per-client caps on open streams.

use livepush::proto::{
    EventPresence, EventViewers, HeartbeatBatch, PresenceRequest, SubscribeRequest,
    live_feed_client::LiveFeedClient, presence_client::PresenceClient,
};
use livepush_tests::{
    PATIENCE, Running, TestMedia,
    grpc::{self, Authed},
    http,
    process::{Process, free_addr},
    sse::SseClient,
    start_edge, start_poller,
};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const EDGE: &str = "edge-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";
const EVIL: &str = "evil-token-0123456789abcdef";
const UNKNOWN: &str = "unknown-token-0123456789abcdef";

fn temp_dir(name: &str) -> PathBuf {
    livepush_tests::temp_dir(&format!("grpc-auth-{name}"))
}

/// The usual clients: an edge pool, a dashboard that reads, and `evil`, an
/// edge client gone bad.
fn clients_file(dir: &Path) -> PathBuf {
    let path = dir.join("clients");
    let text =
        format!("# token role name\n{EDGE} edge edge-pool\n{READER} reader dashboard\n{EVIL} edge evil\n");
    std::fs::write(&path, text).unwrap();
    path
}

async fn poller_with_clients(media: &TestMedia, clients: &Path, extra: &[&str]) -> Running {
    let template = media.template();
    let mut args = vec!["--media-url", &template, "--interval", "1h"];
    args.extend_from_slice(&["--clients-file", clients.to_str().unwrap()]);
    args.extend_from_slice(extra);
    start_poller(&args).await
}

fn feed(addr: SocketAddr, token: Option<&str>) -> LiveFeedClient<Authed> {
    LiveFeedClient::new(grpc::with_token(grpc::plain(addr), token))
}

fn presence(addr: SocketAddr, token: Option<&str>) -> PresenceClient<Authed> {
    PresenceClient::new(grpc::with_token(grpc::plain(addr), token))
}

fn batch(edge_id: &str, event: &str, vids: &[&str]) -> HeartbeatBatch {
    HeartbeatBatch {
        edge_id: edge_id.into(),
        interval_ms: 600_000,
        events: vec![EventViewers {
            event_id: event.into(),
            vids: vids.iter().map(|v| v.to_string()).collect(),
            anonymous: 0,
        }],
    }
}

/// `event`'s presence as the dashboard (a reader) sees it.
async fn read_presence(addr: SocketAddr, event: &str) -> EventPresence {
    let request = PresenceRequest { event_id: event.into() };
    presence(addr, Some(READER)).get_presence(request).await.expect("a reader may read").into_inner()
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => {
            for token in [EDGE, READER, EVIL, UNKNOWN] {
                assert!(!status.message().contains(token), "a token in an error: {status:?}");
            }
            status.code()
        }
    }
}

/// Each RPC's answer for (no token, unknown token, reader, edge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_without_a_token_with_a_reader_token_and_with_an_edge_token() {
    let media = TestMedia::start().await;
    media.set_json("doors", r#"{"v":1}"#);
    let dir = temp_dir("doors");
    let poller = poller_with_clients(&media, &clients_file(&dir), &[]).await;
    let addr = poller.addr;
    use Code::{Ok as OK, PermissionDenied as DENIED, Unauthenticated as UNAUTH};
    let who = [None, Some(UNKNOWN), Some(READER), Some(EDGE)];

    let mut subscribe = Vec::new();
    for token in who {
        let answer = feed(addr, token).subscribe(SubscribeRequest { event_id: "doors".into() }).await;
        let answer = match answer {
            Ok(response) => {
                let first = response.into_inner().message().await.expect("stream ok").expect("a value");
                assert_eq!(first.data, r#"{"v":1}"#);
                Ok(())
            }
            Err(status) => Err(status),
        };
        subscribe.push(code(answer));
    }
    assert_eq!(subscribe, [UNAUTH, UNAUTH, OK, OK], "Subscribe");

    let mut report = Vec::new();
    for token in who {
        report.push(code(presence(addr, token).report_heartbeats(batch("e1", "doors", &["ann"])).await));
    }
    assert_eq!(report, [UNAUTH, UNAUTH, DENIED, OK], "ReportHeartbeats");

    let mut get = Vec::new();
    for token in who {
        get.push(code(
            presence(addr, token).get_presence(PresenceRequest { event_id: "doors".into() }).await,
        ));
    }
    assert_eq!(get, [UNAUTH, UNAUTH, OK, DENIED], "GetPresence");
    assert_eq!(read_presence(addr, "doors").await.vids, ["ann"], "the edge's batch was stored");

    let mut watch = Vec::new();
    for token in who {
        let answer = presence(addr, token).watch_presence(PresenceRequest { event_id: "doors".into() }).await;
        let answer = match answer {
            Ok(response) => {
                let first = response.into_inner().message().await.expect("stream ok").expect("counts");
                assert_eq!(first.viewers, 1);
                Ok(())
            }
            Err(status) => Err(status),
        };
        watch.push(code(answer));
    }
    assert_eq!(watch, [UNAUTH, UNAUTH, OK, DENIED], "WatchPresence");

    // Health and reflection answer everyone (probes and grpcurl carry no
    // token), whatever they present.
    for token in who {
        let mut health = HealthClient::new(grpc::with_token(grpc::plain(addr), token));
        let request = HealthCheckRequest { service: "livepush.v1.LiveFeed".into() };
        assert_eq!(health.check(request).await.unwrap().into_inner().status, 1, "SERVING");
    }
    let services = grpc::reflected_services(grpc::plain(addr)).await;
    assert!(services.contains(&"livepush.v1.Presence".to_owned()), "{services:?}");

    // Every refusal is counted by reason (the recorder is shared with this
    // file's other tests: at least ours).
    let metrics = livepush_tests::http()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("/metrics is open too")
        .text()
        .await
        .unwrap();
    let value = |reason: &str| -> f64 {
        let series = format!(r#"livepush_poller_auth_refusals_total{{reason="{reason}"}} "#);
        metrics.lines().find_map(|l| l.strip_prefix(&series)?.parse().ok()).unwrap_or(0.0)
    };
    assert!(value("missing_token") >= 4.0, "{metrics}");
    assert!(value("unknown_token") >= 4.0);
    assert!(value("wrong_role") >= 3.0);
    assert!(!metrics.contains(EDGE) && !metrics.contains(READER));
}

/// The clients file is read again: a rotated token works within seconds and
/// the old one stops, without a restart; a broken file keeps the last good
/// clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_file_is_followed() {
    let media = TestMedia::start().await;
    let dir = temp_dir("rotate");
    let clients = clients_file(&dir);
    let poller = poller_with_clients(&media, &clients, &[]).await;
    let get = |token: &'static str| {
        let addr = poller.addr;
        async move {
            code(presence(addr, Some(token)).get_presence(PresenceRequest { event_id: "r".into() }).await)
        }
    };
    assert_eq!(get(READER).await, Code::Ok);
    const ROTATED: &str = "reader-rotated-0123456789abcdef";
    std::fs::write(&clients, format!("{EDGE} edge edge-pool\n{ROTATED} reader dashboard\n")).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while get(ROTATED).await != Code::Ok {
        assert!(tokio::time::Instant::now() < deadline, "the rotated token was never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(READER).await, Code::Unauthenticated, "the old token is gone");
    std::fs::write(&clients, "this is not a clients file\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(get(ROTATED).await, Code::Ok, "an invalid file keeps the last good clients");
}

/// The real binary at its most talkative logs client names, never a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_never_logged() {
    const POLLER_BIN: &str = env!("CARGO_BIN_EXE_livepush-test-poller");
    let media = TestMedia::start().await;
    media.set_json("quiet", r#"{"v":1}"#);
    let dir = temp_dir("logs");
    let clients = clients_file(&dir);
    let log = dir.join("poller.log");
    let addr = free_addr();
    let args = ["--media-url", &media.template(), "--clients-file", clients.to_str().unwrap()];
    let poller = Process::start_with(POLLER_BIN, addr, &args, &[("RUST_LOG", "trace")], Some(&log));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the poller did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Accepted, refused for its role, refused as unknown; then a rotation.
    let mut stream = feed(addr, Some(EDGE))
        .subscribe(SubscribeRequest { event_id: "quiet".into() })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    presence(addr, Some(EDGE)).report_heartbeats(batch("e1", "quiet", &["ann"])).await.unwrap();
    assert_eq!(
        code(presence(addr, Some(READER)).report_heartbeats(batch("e1", "quiet", &[])).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(feed(addr, Some(UNKNOWN)).subscribe(SubscribeRequest { event_id: "quiet".into() }).await),
        Code::Unauthenticated
    );
    const ROTATED: &str = "edge-rotated-0123456789abcdef";
    std::fs::write(&clients, format!("{ROTATED} edge edge-pool\n")).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while code(presence(addr, Some(ROTATED)).report_heartbeats(batch("e1", "quiet", &[])).await) != Code::Ok {
        assert!(tokio::time::Instant::now() < deadline, "the rotated token was never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stream);
    poller.kill().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("gRPC call refused") && text.contains("dashboard"), "names are logged:\n{text}");
    for token in [EDGE, READER, EVIL, UNKNOWN, ROTATED] {
        assert!(!text.contains(token), "{token} is in the log");
    }
}

/// An edge with `--poller-token-file` subscribes and reports through a
/// poller with `--clients-file`; one without a token gets nothing and says
/// why in its metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_presents_its_token_file() {
    let media = TestMedia::start().await;
    media.set_json("e2e", r#"{"v":1}"#);
    let dir = temp_dir("edge");
    let poller = poller_with_clients(&media, &clients_file(&dir), &[]).await;
    let token_file = dir.join("edge-token");
    std::fs::write(&token_file, format!("# the edge pool's token\n{EDGE}\n")).unwrap();
    let edge = start_edge(&[
        "--poller",
        &poller.url(),
        "--poller-token-file",
        token_file.to_str().unwrap(),
        "--heartbeat-interval",
        "200ms",
        "--edge-id",
        "edge-a",
    ])
    .await;
    let mut browser = SseClient::open(&format!("{}/live/e2e/stream?vid=ann", edge.url())).await;
    assert_eq!(browser.next_message().await.data, r#"{"v":1}"#);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let p = read_presence(poller.addr, "e2e").await;
        if p.vids == ["ann"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the edge's viewers were not counted: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // No token: the poller refuses its subscriptions.
    let tokenless = start_edge(&["--poller", &poller.url()]).await;
    let _browser = SseClient::open(&format!("{}/live/e2e/stream", tokenless.url())).await;
    let metric = r#"livepush_edge_upstream_subscribe_failures_total{reason="unauthorized"} "#;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = livepush_tests::http()
            .get(format!("{}/metrics", tokenless.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let n: f64 = text.lines().find_map(|l| l.strip_prefix(metric)?.parse().ok()).unwrap_or(0.0);
        if n > 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no unauthorized subscription counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `evil`, a client with role `edge`, reports for 2,000 made-up edge ids
/// (and for the real edge's id): the real edges' viewers are still counted,
/// including an edge that starts after the flood, and evil's batches never
/// replace theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_with_2000_edge_ids_cannot_stop_a_real_edges_viewers_from_being_counted() {
    let media = TestMedia::start().await;
    media.set_json("crowd", r#"{"v":1}"#);
    let dir = temp_dir("hostile");
    let poller = poller_with_clients(&media, &clients_file(&dir), &[]).await;
    let token_file = dir.join("edge-token");
    std::fs::write(&token_file, format!("{EDGE}\n")).unwrap();
    let edge = |id: &'static str| {
        let (poller, token) = (poller.url(), token_file.clone());
        async move {
            let token = token.to_str().unwrap().to_owned();
            start_edge(&[
                "--poller",
                &poller,
                "--poller-token-file",
                &token,
                "--heartbeat-interval",
                "200ms",
                "--edge-id",
                id,
            ])
            .await
        }
    };
    let counted = |p: &EventPresence, vid: &str| p.vids.iter().any(|v| v == vid);

    let edge_a = edge("edge-a").await;
    let mut ann = SseClient::open(&format!("{}/live/crowd/stream?vid=ann", edge_a.url())).await;
    ann.next_message().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !counted(&read_presence(poller.addr, "crowd").await, "ann") {
        assert!(tokio::time::Instant::now() < deadline, "ann never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The flood: 2,000 edge ids, each claiming a viewer, then the real
    // edge's own id with nobody.
    let mut evil = presence(poller.addr, Some(EVIL));
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..2_000 {
        let fake = format!("fake-{i:04}");
        match code(evil.report_heartbeats(batch(&fake, "crowd", &[&fake])).await) {
            Code::Ok => accepted += 1,
            Code::ResourceExhausted => refused += 1,
            other => panic!("fake batch {i}: {other:?}"),
        }
    }
    assert_eq!((accepted, refused), (1_024, 976), "evil fills its own budget of edges, no more");
    let impersonation = HeartbeatBatch { edge_id: "edge-a".into(), interval_ms: 600_000, events: vec![] };
    assert_eq!(code(evil.report_heartbeats(impersonation).await), Code::ResourceExhausted);

    // A second real edge starts after the flood: it is admitted, and both
    // real edges' viewers are counted next to evil's inventions.
    let edge_b = edge("edge-b").await;
    let mut bob = SseClient::open(&format!("{}/live/crowd/stream?vid=bob", edge_b.url())).await;
    bob.next_message().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let p = loop {
        let p = read_presence(poller.addr, "crowd").await;
        if counted(&p, "ann") && counted(&p, "bob") {
            break p;
        }
        assert!(tokio::time::Instant::now() < deadline, "real viewers not counted: {:?}", &p.vids[..5]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((p.identified, p.edges), (1_026, 1_026), "1,024 fakes and 2 real edges");
    assert!(!p.truncated);

    // Evil may not empty a real edge's batch, however it names it: after
    // another round of its batches, ann is still there.
    for i in 0..10 {
        let fake = format!("fake-{i:04}");
        evil.report_heartbeats(HeartbeatBatch { edge_id: fake, interval_ms: 600_000, events: vec![] })
            .await
            .unwrap();
    }
    let p = read_presence(poller.addr, "crowd").await;
    assert!(counted(&p, "ann") && counted(&p, "bob"));
    assert_eq!(p.identified, 1_016);
    drop((edge_a, edge_b));
}

/// 100,000 viewers of one event: `GetPresence` answers the exact counts and
/// at most `--max-presence-vids` of the ids, sorted, each a real viewer, and
/// says it left some out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_presence_on_100000_viewers_is_bounded_and_correct() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let mut client = PresenceClient::new(grpc::plain(poller.addr));
    let vids: Vec<String> = (0..100_000).map(|i| format!("viewer-{i:06}")).collect();
    let crowd = HeartbeatBatch {
        edge_id: "edge-big".into(),
        interval_ms: 600_000,
        events: vec![
            EventViewers { event_id: "huge".into(), vids: vids.clone(), anonymous: 7 },
            EventViewers { event_id: "small".into(), vids: vec!["b".into(), "a".into()], anonymous: 0 },
        ],
    };
    client.report_heartbeats(crowd).await.unwrap();

    let p = client.get_presence(PresenceRequest { event_id: "huge".into() }).await.unwrap().into_inner();
    assert_eq!((p.viewers, p.identified, p.anonymous, p.edges), (100_007, 100_000, 7, 1), "exact counts");
    assert_eq!(p.vids.len(), 10_000, "the default --max-presence-vids");
    assert!(p.truncated);
    assert!(p.vids.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
    assert!(p.vids.iter().all(|v| vids.binary_search(v).is_ok()), "only real viewer ids");

    let small = client.get_presence(PresenceRequest { event_id: "small".into() }).await.unwrap().into_inner();
    assert_eq!((small.vids, small.truncated), (vec!["a".to_owned(), "b".to_owned()], false));

    // A poller told to list fewer lists fewer, with the same counts.
    let lean = start_poller(&["--media-url", &media.template(), "--max-presence-vids", "100"]).await;
    let mut client = PresenceClient::new(grpc::plain(lean.addr));
    client
        .report_heartbeats(HeartbeatBatch {
            edge_id: "edge-big".into(),
            interval_ms: 600_000,
            events: vec![EventViewers { event_id: "huge".into(), vids, anonymous: 0 }],
        })
        .await
        .unwrap();
    let p = client.get_presence(PresenceRequest { event_id: "huge".into() }).await.unwrap().into_inner();
    assert_eq!((p.identified, p.vids.len(), p.truncated), (100_000, 100, true));
}

/// `--max-streams-per-client` and `--max-watches-per-client` hold per token
/// name, across connections; another client is not affected, and a closed
/// stream gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_capped_per_client() {
    let media = TestMedia::start().await;
    media.set_json("cap", r#"{"v":1}"#);
    let dir = temp_dir("caps");
    let poller = poller_with_clients(
        &media,
        &clients_file(&dir),
        &["--max-streams-per-client", "2", "--max-watches-per-client", "1"],
    )
    .await;
    let addr = poller.addr;
    // Each on a connection of its own: the cap is the client's, not the
    // connection's.
    let open = |token: &'static str| async move {
        feed(addr, Some(token)).subscribe(SubscribeRequest { event_id: "cap".into() }).await
    };
    let first = open(READER).await.unwrap();
    let _second = open(READER).await.unwrap();
    let refused = open(READER).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(refused.metadata().get("livepush-refusal").unwrap(), "client-streams");
    assert!(refused.message().contains("--max-streams-per-client"), "{}", refused.message());
    let _edge = open(EDGE).await.expect("another client has its own cap");
    drop(first);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while open(READER).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the closed stream's place never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let watch = |token: &'static str| async move {
        presence(addr, Some(token)).watch_presence(PresenceRequest { event_id: "cap".into() }).await
    };
    let _watching = watch(READER).await.unwrap();
    let refused = watch(READER).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("--max-watches-per-client"), "{}", refused.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_answers_probes_and_scrapes_without_a_token_and_nothing_else() {
    let media = TestMedia::start().await;
    let dir = temp_dir("admin");
    let admin = livepush_tests::process::free_addr();
    let poller =
        poller_with_clients(&media, &clients_file(&dir), &["--admin-listen", &admin.to_string()]).await;
    livepush_tests::process::wait_ok(&format!("http://{admin}/metrics")).await;
    // The health service, as a Kubernetes gRPC probe asks it: no token.
    let mut health = HealthClient::new(grpc::plain(admin));
    let status = health
        .check(HealthCheckRequest { service: "livepush.v1.LiveFeed".into() })
        .await
        .expect("health without a token")
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let metrics = http().get(format!("http://{admin}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("livepush_poller_subscribers"));
    // Nothing else is there, with or without a token.
    for token in [None, Some(EDGE)] {
        let answer = feed(admin, token).subscribe(SubscribeRequest { event_id: "a".into() }).await;
        assert_eq!(code(answer), Code::Unimplemented, "Subscribe on the admin port");
    }
    // The gRPC port still wants its token.
    let answer = feed(poller.addr, None).subscribe(SubscribeRequest { event_id: "a".into() }).await;
    assert_eq!(code(answer), Code::Unauthenticated);
}
