//! Helpers shared by the end-to-end tests: a scriptable media service that
//! counts what it is asked, the poller and edge started in-process on
//! `127.0.0.1:0` with a way to stop them, and real clients (tonic, an
//! independent SSE parser over reqwest, raw TCP for hostile request lines).

pub mod browser;
pub mod grpc;
pub mod media;
pub mod process;
pub mod proxy;
pub mod sse;
pub mod tls_media;

use anyhow::Context;
use std::{net::SocketAddr, time::Duration};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub use media::TestMedia;

/// How long any test waits for something that should happen promptly. Only a
/// guard against hangs: tests assert on what arrives, never on how fast.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A fresh directory for one test's files, `livepush-{name}-{pid}` under
/// the system's temporary directory.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("livepush-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One HTTP client for the helpers: building a reqwest client loads the
/// system's trust store (tens of milliseconds), which a test opening 500
/// browsers at once cannot afford per browser. Connections are not pooled,
/// so the client serves every test's runtime alike (a pooled connection
/// belongs to the runtime that opened it).
pub fn http() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client"))
        .clone()
}

/// One series' value on the `/metrics` of the server at `url` (`http://…`),
/// e.g. `livepush_poller_upstream_requests_total{outcome="tls"}`; 0 if absent.
pub async fn metric(url: &str, series: &str) -> f64 {
    let text = http().get(format!("{url}/metrics")).send().await.expect("scrape").text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A server running in-process; dropping it without `stop` aborts it.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Triggers a graceful shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().expect("running").send(());
        let task = self.task.take().expect("running");
        tokio::time::timeout(PATIENCE, task).await.context("shutdown took too long")??
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn spawn_at<F, Fut>(addr: SocketAddr, run: F) -> Running
where
    F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(run(listener, rx));
    Running { addr, stop: Some(tx), task: Some(task) }
}

/// Starts a poller with `args` (flags as on the command line).
pub async fn start_poller(args: &[&str]) -> Running {
    start_poller_at("127.0.0.1:0".parse().unwrap(), args).await
}

/// Starts a poller on `addr` (to restart one where edges expect it).
pub async fn start_poller_at(addr: SocketAddr, args: &[&str]) -> Running {
    use clap::Parser;
    let config = poller::Config::try_parse_from(std::iter::once("poller").chain(args.iter().copied()))
        .expect("valid poller flags");
    spawn_at(addr, move |l, stop| async move {
        poller::run(config, l, async {
            let _ = stop.await;
        })
        .await
    })
    .await
}

/// Starts an edge with `args` (flags as on the command line).
pub async fn start_edge(args: &[&str]) -> Running {
    start_edge_at("127.0.0.1:0".parse().unwrap(), args).await
}

/// Starts an edge on `addr` (to restart one where browsers expect it).
pub async fn start_edge_at(addr: SocketAddr, args: &[&str]) -> Running {
    use clap::Parser;
    let config = edge::Config::try_parse_from(std::iter::once("edge").chain(args.iter().copied()))
        .expect("valid edge flags");
    spawn_at(addr, move |l, stop| async move {
        edge::run(config, l, async {
            let _ = stop.await;
        })
        .await
    })
    .await
}

/// A gRPC client of the poller at `addr`.
pub async fn feed_client(
    addr: SocketAddr,
) -> livepush::proto::live_feed_client::LiveFeedClient<tonic::transport::Channel> {
    livepush::proto::live_feed_client::LiveFeedClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the poller")
}

/// Subscribes to `id` at the poller on `addr` with a real gRPC client.
pub async fn subscribe(addr: SocketAddr, id: &str) -> tonic::Streaming<livepush::proto::LiveUpdate> {
    let request = livepush::proto::SubscribeRequest { event_id: id.into() };
    feed_client(addr).await.subscribe(request).await.expect("subscribe").into_inner()
}

/// The next update of a subscription (panics if none comes in time).
pub async fn next_update(
    stream: &mut tonic::Streaming<livepush::proto::LiveUpdate>,
) -> livepush::proto::LiveUpdate {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("an update in time")
        .expect("stream ok")
        .expect("stream open")
}

/// Sends `request` verbatim over TCP and returns the status code and body of
/// the answer (for request lines no HTTP client library would send).
pub async fn raw_request(addr: SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Reads a streaming response's raw bytes for `window` (or until it ends).
pub async fn read_for(resp: reqwest::Response, window: Duration) -> String {
    use futures_util::StreamExt;
    let mut body = resp.bytes_stream();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await {
        out.extend_from_slice(&chunk);
    }
    String::from_utf8(out).expect("SSE is UTF-8")
}

/// Polls `check` until it holds or [`PATIENCE`] runs out.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
