//! TLS on the poller's gRPC port and on the edge's way there, with
//! certificates minted per test by a private CA ([`TestCa`]): the poller
//! serves LiveFeed, health, reflection and `/metrics` over TLS only; an edge
//! given `--poller https://…` and `--poller-ca` subscribes, reports and
//! presents its token over TLS, refuses a poller whose certificate does not
//! verify, and fails over between two TLS pollers (real processes, one
//! killed with SIGKILL and brought back).

use livepush::proto::presence_client::PresenceClient;
use livepush::proto::{PresenceRequest, SubscribeRequest, live_feed_client::LiveFeedClient};
use livepush_tests::{
    PATIENCE, TestMedia, grpc,
    process::{Process, free_addr, wait_ok},
    sse::SseClient,
    start_edge, start_poller,
    tls_media::{TestCa, Validity},
};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const POLLER_BIN: &str = env!("CARGO_BIN_EXE_livepush-test-poller");
const EDGE_TOKEN: &str = "edge-token-0123456789abcdef";
const READER_TOKEN: &str = "reader-token-0123456789abcdef";

fn temp_dir(name: &str) -> PathBuf {
    livepush_tests::temp_dir(&format!("poller-tls-{name}"))
}

/// A CA, a poller certificate for `localhost` and 127.0.0.1 signed by it,
/// and their files: (CA, CA file, certificate file, key file).
fn pki(dir: &Path) -> (TestCa, String, String, String) {
    let ca = TestCa::new("livepush test pollers CA");
    let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"], Validity::Valid).write(dir);
    let ca_file = ca.write_ca(dir);
    let path = |p: PathBuf| p.to_str().unwrap().to_owned();
    (ca, path(ca_file), path(cert), path(key))
}

fn clients_and_token(dir: &Path) -> (String, String) {
    let clients = dir.join("clients");
    std::fs::write(&clients, format!("{EDGE_TOKEN} edge edge-pool\n{READER_TOKEN} reader dashboard\n"))
        .unwrap();
    let token = dir.join("edge-token");
    std::fs::write(&token, format!("{EDGE_TOKEN}\n")).unwrap();
    (clients.to_str().unwrap().to_owned(), token.to_str().unwrap().to_owned())
}

async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_port_over_tls_serves_feeds_health_reflection_and_metrics() {
    let dir = temp_dir("port");
    let (ca, _, cert, key) = pki(&dir);
    let media = TestMedia::start().await;
    media.set_json("tls-1", r#"{"v":1}"#);
    let template = media.template();
    let args = ["--media-url", &template, "--interval", "1h", "--tls-cert", &cert, "--tls-key", &key];
    let poller = start_poller(&[&args[..], &["--max-streams", "1"]].concat()).await;

    // A client that never starts its handshake holds up nobody.
    let _silent = tokio::net::TcpStream::connect(poller.addr).await.unwrap();

    let channel = grpc::tls(poller.addr, "localhost", ca.client_config(None));
    let mut health = HealthClient::new(channel.clone());
    let check = health.check(HealthCheckRequest { service: "livepush.v1.LiveFeed".into() }).await.unwrap();
    assert_eq!(check.into_inner().status, 1, "SERVING over TLS");
    let services = grpc::reflected_services(channel.clone()).await;
    for service in ["grpc.health.v1.Health", "livepush.v1.LiveFeed", "livepush.v1.Presence"] {
        assert!(services.contains(&service.to_owned()), "{service} not in {services:?}");
    }
    let mut feed = LiveFeedClient::new(channel.clone());
    let mut stream =
        feed.subscribe(SubscribeRequest { event_id: "tls-1".into() }).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().data, r#"{"v":1}"#);

    // The peer address still reaches the services: this connection holds
    // its --max-streams (1), another connection does not.
    let refused = feed.subscribe(SubscribeRequest { event_id: "tls-1".into() }).await.unwrap_err();
    assert_eq!(refused.metadata().get("livepush-refusal").unwrap(), "connection-streams", "{refused:?}");
    let other = grpc::tls(poller.addr, "localhost", ca.client_config(None));
    LiveFeedClient::new(other).subscribe(SubscribeRequest { event_id: "tls-1".into() }).await.unwrap();

    // Plain h2c, a client trusting another CA, and a name the certificate
    // does not carry all fail.
    let plain = HealthClient::new(grpc::plain(poller.addr))
        .check(HealthCheckRequest { service: String::new() })
        .await;
    assert!(plain.is_err(), "h2c answered over a TLS port: {plain:?}");
    let stranger = TestCa::new("another CA").client_config(None);
    let untrusted = HealthClient::new(grpc::tls(poller.addr, "localhost", stranger))
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap_err();
    assert_eq!(untrusted.code(), Code::Unavailable, "{untrusted:?}");
    let wrong_name = HealthClient::new(grpc::tls(poller.addr, "poller.example", ca.client_config(None)))
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap_err();
    assert_eq!(wrong_name.code(), Code::Unavailable, "{wrong_name:?}");

    // A Prometheus scrape over HTTPS and HTTP/1.1 on the same port.
    let scraper = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem().as_bytes()).unwrap())
        .http1_only()
        .build()
        .unwrap();
    let scrape =
        scraper.get(format!("https://localhost:{}/metrics", poller.addr.port())).send().await.unwrap();
    assert_eq!((scrape.status().as_u16(), scrape.version()), (200, reqwest::Version::HTTP_11));
    assert!(scrape.text().await.unwrap().contains("livepush_poller_subscribers"));
    poller.stop().await.unwrap();
}

/// The start-up refuses a key that does not belong to the certificate,
/// naming the flags.
#[tokio::test]
async fn a_mismatched_key_stops_the_poller_at_start_up() {
    let dir = temp_dir("mismatch");
    let ca = TestCa::new("mismatch CA");
    let (cert, _) = ca.leaf(&["localhost"], Validity::Valid).write(&dir);
    let (_, other_key) = ca.leaf(&["localhost"], Validity::Valid).write(&dir);
    use clap::Parser;
    let config = poller::Config::try_parse_from([
        "poller",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        other_key.to_str().unwrap(),
    ])
    .expect("each file is fine on its own");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = poller::run(config, listener, std::future::pending()).await.unwrap_err().to_string();
    assert!(err.contains("--tls-cert") && err.contains("--tls-key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_reaches_a_tls_poller_with_its_ca_and_token() {
    let dir = temp_dir("edge");
    let (ca, ca_file, cert, key) = pki(&dir);
    let (clients, token) = clients_and_token(&dir);
    let media = TestMedia::start().await;
    media.set_json("tls-e2e", r#"{"v":1}"#);
    let template = media.template();
    let poller = start_poller(&[
        "--media-url",
        &template,
        "--interval",
        "1h",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--clients-file",
        &clients,
    ])
    .await;
    // By name: the certificate is checked for `localhost`.
    let target = format!("https://localhost:{}", poller.addr.port());
    let edge = start_edge(&[
        "--poller",
        &target,
        "--poller-ca",
        &ca_file,
        "--poller-token-file",
        &token,
        "--heartbeat-interval",
        "200ms",
        "--edge-id",
        "edge-tls",
    ])
    .await;
    wait_ok(&format!("{}/readyz", edge.url())).await;
    let mut browser = SseClient::open(&format!("{}/live/tls-e2e/stream?vid=ann", edge.url())).await;
    assert_eq!(browser.next_message().await.data, r#"{"v":1}"#);
    media.set_json("tls-e2e", r#"{"v":2}"#);

    // Presence went over the same TLS, under the edge's token.
    let reader =
        grpc::with_token(grpc::tls(poller.addr, "localhost", ca.client_config(None)), Some(READER_TOKEN));
    let mut reader = PresenceClient::new(reader);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let request = PresenceRequest { event_id: "tls-e2e".into() };
        let p = reader.get_presence(request).await.unwrap().into_inner();
        if p.vids == ["ann"] {
            break;
        }
        assert!(Instant::now() < deadline, "the edge's viewers were not counted: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An edge does not route to a poller whose certificate does not verify
/// (unknown CA, or a name the certificate does not carry): it never becomes
/// ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_refuses_a_poller_whose_certificate_does_not_verify() {
    let dir = temp_dir("refuse");
    let (_, ca_file, cert, key) = pki(&dir);
    let media = TestMedia::start().await;
    let template = media.template();
    let poller = start_poller(&["--media-url", &template, "--tls-cert", &cert, "--tls-key", &key]).await;
    let port = poller.addr.port();
    // Another poller whose certificate (from the right CA) names only
    // poller.example, reached at its address.
    let (ca, ..) = pki(&dir);
    let (named_cert, named_key) = ca.leaf(&["poller.example"], Validity::Valid).write(&dir);
    let named_ca = ca.write_ca(&dir);
    let (named_cert, named_key) = (named_cert.to_str().unwrap(), named_key.to_str().unwrap());
    let named =
        start_poller(&["--media-url", &template, "--tls-cert", named_cert, "--tls-key", named_key]).await;
    let stranger = TestCa::new("not the pollers' CA").write_ca(&dir);
    let unknown_ca = start_edge(&[
        "--poller",
        &format!("https://localhost:{port}"),
        "--poller-ca",
        stranger.to_str().unwrap(),
    ])
    .await;
    let wrong_name = start_edge(&[
        "--poller",
        &format!("https://{}", named.addr),
        "--poller-ca",
        named_ca.to_str().unwrap(),
    ])
    .await;
    let right =
        start_edge(&["--poller", &format!("https://127.0.0.1:{port}"), "--poller-ca", &ca_file]).await;
    wait_ok(&format!("{}/readyz", right.url())).await;
    // Past the edges' start-up settling (2 s), with health checks retried.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for edge in [&unknown_ca, &wrong_name] {
        let ready = livepush_tests::http().get(format!("{}/readyz", edge.url())).send().await.unwrap();
        assert_eq!(ready.status(), 503, "ready with a poller it cannot verify");
    }
}

/// Two TLS pollers with tokens, as processes; the edge follows the owner of
/// each event. SIGKILL to one moves its events to the other over TLS with no
/// browser disconnected; when it returns on its address, its events come
/// back. Every browser sees each value once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_between_two_tls_pollers() {
    let dir = temp_dir("failover");
    let (_, ca_file, cert, key) = pki(&dir);
    let (clients, token) = clients_and_token(&dir);
    let media = [TestMedia::start().await, TestMedia::start().await];
    let events: Vec<String> = (0..8).map(|i| format!("tls-fo-{i}")).collect();
    let value = |e: &str, v: u32| format!(r#"{{"event":"{e}","v":{v}}}"#);
    let set_all = |v: u32| {
        for m in &media {
            for e in &events {
                m.set_json(e, &value(e, v));
            }
        }
    };
    set_all(1);
    let addrs = [free_addr(), free_addr()];
    let start = |i: usize| {
        let template = media[i].template();
        let args = [
            "--media-url",
            &template,
            "--interval",
            "500ms",
            "--linger",
            "1s",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--clients-file",
            &clients,
        ];
        Process::start(POLLER_BIN, addrs[i], &args)
    };
    let mut pollers = [Some(start(0)), Some(start(1))];
    for addr in addrs {
        wait_listening(addr).await;
    }
    let list = addrs.iter().map(|a| format!("https://{a}")).collect::<Vec<_>>().join(",");
    let edge = start_edge(&["--poller", &list, "--poller-ca", &ca_file, "--poller-token-file", &token]).await;
    wait_ok(&format!("{}/readyz", edge.url())).await;

    // One browser per event, recording every message.
    let mut seen = Vec::new();
    for e in &events {
        let mut browser = SseClient::open(&format!("{}/live/{e}/stream", edge.url())).await;
        let record = Arc::new(Mutex::new((Vec::<String>::new(), false)));
        let writer = record.clone();
        tokio::spawn(async move {
            while let Some(event) = browser.next_patiently().await {
                if event.event == "message" {
                    writer.lock().unwrap().0.push(event.data);
                }
            }
            writer.lock().unwrap().1 = true;
        });
        seen.push(record);
    }
    let wait_all = |v: u32, what: &'static str| {
        let (seen, events) = (seen.clone(), events.clone());
        async move {
            let deadline = Instant::now() + PATIENCE;
            loop {
                let behind: Vec<&String> = events
                    .iter()
                    .zip(&seen)
                    .filter(|(e, s)| s.lock().unwrap().0.last() != Some(&value(e, v)))
                    .map(|(e, _)| e)
                    .collect();
                if behind.is_empty() {
                    return;
                }
                assert!(Instant::now() < deadline, "{what}: behind {behind:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_all(1, "the first value").await;
    let owner_of = |e: &String| media.iter().position(|m| m.count(e) > 0).expect("polled");
    let owned: Vec<usize> = events.iter().map(owner_of).collect();
    assert!(owned.contains(&0) && owned.contains(&1), "8 events on one of two pollers: {owned:?}");
    let victim = owned[0];
    let victims: Vec<&String> =
        events.iter().zip(&owned).filter(|(_, o)| **o == victim).map(|(e, _)| e).collect();

    pollers[victim].take().unwrap().kill().await;
    set_all(2);
    wait_all(2, "the value after the kill").await;
    let survivor = &media[1 - victim];
    for e in &victims {
        assert!(survivor.count(e) > 0, "{e} not taken over by the surviving poller");
    }

    // Back on its address: its events return (within the 5 s spread) and
    // it polls them again.
    let before: Vec<usize> = victims.iter().map(|e| media[victim].count(e)).collect();
    pollers[victim] = Some(start(victim));
    let deadline = Instant::now() + Duration::from_secs(30);
    while victims.iter().zip(&before).any(|(e, n)| media[victim].count(e) < n + 2) {
        assert!(Instant::now() < deadline, "events did not return to the restarted poller");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    set_all(3);
    wait_all(3, "the value after the return").await;
    for (e, s) in events.iter().zip(&seen) {
        let (messages, ended) = &*s.lock().unwrap();
        assert!(!ended, "{e}: the browser's stream ended");
        let expected: Vec<String> = (1..=3).map(|v| value(e, v)).collect();
        assert_eq!(messages, &expected, "{e}: each value once, in order");
    }
    drop(edge);
}
