//! The simulator as the poller and the demo see it: a real server on an
//! ephemeral port, driven over HTTP.

use clap::Parser;
use media_sim::Config;
use reqwest::{StatusCode, header};
use serde_json::Value;
use std::{
    io::{Read, Write},
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

struct Server {
    addr: SocketAddr,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

async fn start(flags: &[&str]) -> Server {
    let config = Config::try_parse_from(std::iter::once("media-sim").chain(flags.iter().copied())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(media_sim::run(config, listener, async {
        let _ = stopped.await;
    }));
    Server { addr, http: reqwest::Client::new(), stop: Some(stop), task }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    async fn post(&self, path: &str) -> reqwest::Response {
        self.http.post(self.url(path)).send().await.unwrap()
    }

    async fn live(&self, id: &str) -> (header::HeaderMap, Value) {
        let resp = self.get(&format!("/live/{id}")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let headers = resp.headers().clone();
        (headers, serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap())
    }

    /// Status of a request whose path is sent byte for byte, bypassing the
    /// URL normalisation of reqwest (which turns `/live/..` into `/`).
    async fn raw_status(&self, path: &str) -> u16 {
        let (addr, path) = (self.addr, path.to_owned());
        tokio::task::spawn_blocking(move || {
            let mut conn = std::net::TcpStream::connect(addr).unwrap();
            write!(conn, "GET {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n").unwrap();
            let mut answer = String::new();
            conn.read_to_string(&mut answer).unwrap();
            answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
        })
        .await
        .unwrap()
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("shutdown completes").unwrap()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test]
async fn live_documents_have_the_documented_shape() {
    let sim = start(&[]).await;
    let (headers, doc) = sim.live("match-42").await;
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    assert!(headers.contains_key(header::ETAG) && headers.contains_key(header::LAST_MODIFIED));
    let keys: Vec<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["event_id", "status", "title", "viewers", "updated_at", "version"]);
    assert_eq!(doc["event_id"], "match-42");
    assert_eq!(doc["status"], "live");
    assert_eq!(doc["title"], "Live event match-42");
    assert!(doc["viewers"].as_u64().is_some_and(|v| v > 0));
    assert!(doc["version"].as_u64().is_some());
    let updated = doc["updated_at"].as_str().unwrap();
    humantime::parse_rfc3339(updated).unwrap_or_else(|e| panic!("{updated}: {e}"));
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn data_changes_every_period() {
    let sim = start(&["--change-every", "200ms"]).await;
    let (_, first) = sim.live("ev").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let next = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, doc) = sim.live("ev").await;
        if doc["version"] != first["version"] {
            break doc;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new version within 5s");
    };
    assert!(next["version"].as_u64() > first["version"].as_u64());
    assert_ne!(next["viewers"], first["viewers"]);
    assert_ne!(next["updated_at"], first["updated_at"]);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn validators_are_stable_within_a_period_and_honoured() {
    let sim = start(&["--change-every", "1h"]).await;
    // Two reads in the same period (retried if an hour boundary slips between).
    let (a, b) = loop {
        let (a, b) = (sim.live("ev").await, sim.live("ev").await);
        if a.1["version"] == b.1["version"] {
            break (a, b);
        }
    };
    assert_eq!(a.1, b.1, "same body");
    for validator in [header::ETAG, header::LAST_MODIFIED] {
        assert_eq!(a.0[&validator], b.0[&validator], "same {validator}");
    }
    let etag = a.0[header::ETAG].clone();
    assert!(etag.to_str().unwrap().starts_with('"'), "strong ETag: {etag:?}");

    let live = sim.url("/live/ev");
    let resp = sim.http.get(&live).header(header::IF_NONE_MATCH, etag.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(resp.headers()[header::ETAG], etag);
    assert!(resp.bytes().await.unwrap().is_empty());

    let resp = sim.http.get(&live).header(header::IF_NONE_MATCH, "\"stale\"").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let modified = a.0[header::LAST_MODIFIED].clone();
    let resp = sim.http.get(&live).header(header::IF_MODIFIED_SINCE, modified).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);

    let (other, _) = sim.live("other").await;
    assert_ne!(other[header::ETAG], etag, "each event has its own ETag");
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn ended_events_answer_404_until_revived() {
    let sim = start(&["--ended", "gone,old"]).await;
    let resp = sim.get("/live/gone").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "event ended");
    assert_eq!(sim.get("/live/old").await.status(), StatusCode::NOT_FOUND);

    assert_eq!(sim.post("/admin/events/gone/revive").await.status(), StatusCode::OK);
    sim.live("gone").await;

    let resp = sim.post("/admin/events/fresh/end").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"event_id": "fresh", "ended": true}));
    assert_eq!(sim.get("/live/fresh").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(sim.post("/admin/events/fresh/end").await.status(), StatusCode::OK, "idempotent");
    assert_eq!(sim.post("/admin/events/fresh/revive").await.status(), StatusCode::OK);
    sim.live("fresh").await;

    assert_eq!(sim.get("/admin/events/fresh/end").await.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(sim.post("/admin/events/a%2Fb/end").await.status(), StatusCode::BAD_REQUEST);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn hostile_ids_are_refused() {
    let sim = start(&[]).await;
    let long = "a".repeat(200);
    // `a%2Fb` reaches the handler percent-decoded, as `a/b`.
    for id in ["a%2Fb", long.as_str(), "a b", "%FF", "a%0Ab"] {
        let resp = sim.get(&format!("/live/{id}")).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{id}");
        let reason = resp.text().await.unwrap();
        assert!(!reason.trim_end().contains('\n') && !reason.is_empty(), "{id}: {reason:?}");
    }
    // Dot segments (also `%2e%2e`) must be sent raw: URL parsers resolve them
    // before sending, so reqwest would ask for `/` instead.
    for path in ["/live/..", "/live/.", "/live/%2e%2e", "/live/..."] {
        assert_eq!(sim.raw_status(path).await, 400, "{path}");
    }
    assert_eq!(sim.raw_status("/live/../stats").await, 404, "no route, no traversal");
    assert_eq!(sim.raw_status("/live/ok").await, 200);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn stamp_adds_served_at_and_drops_validators() {
    let sim = start(&["--stamp"]).await;
    let before = now_ms();
    let (headers, doc) = sim.live("ev").await;
    let served = doc["served_at_ms"].as_u64().expect("served_at_ms");
    assert!((before..=now_ms()).contains(&served), "{served}");
    assert!(!headers.contains_key(header::ETAG) && !headers.contains_key(header::LAST_MODIFIED));
    let resp = sim.http.get(sim.url("/live/ev")).header(header::IF_NONE_MATCH, "*").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn stats_count_live_requests() {
    let sim = start(&["--ended", "gone"]).await;
    for path in ["/live/a", "/live/a", "/live/gone", "/live/a%2Fb", "/stats"] {
        sim.get(path).await;
    }
    let stats: Value = serde_json::from_slice(&sim.get("/stats").await.bytes().await.unwrap()).unwrap();
    assert_eq!(stats, serde_json::json!({"requests": 4, "batch_requests": 0}));
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_completes_and_closes_the_port() {
    let sim = start(&[]).await;
    sim.live("ev").await; // leaves an idle keep-alive connection behind
    let addr = sim.addr;
    sim.stop().await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn too_many_ended_ids_stop_start_up() {
    let ids: Vec<String> = (0..=media_sim::sim::MAX_ENDED).map(|i| format!("e{i}")).collect();
    let sim = start(&["--ended", &ids.join(",")]).await;
    let err = tokio::time::timeout(Duration::from_secs(5), sim.task).await.unwrap().unwrap().unwrap_err();
    assert!(err.to_string().contains("--ended"), "{err}");
}
