//! Browsers that stop reading must not grow the edge: the real `edge` binary
//! runs as its own process so its memory is measured alone, while twenty
//! stuck connections and one healthy browser watch an event whose large value
//! changes hundreds of times.

use axum::{Router, extract::State, routing::get};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATIENCE: Duration = Duration::from_secs(20);
const PAD: usize = 64 * 1024;

/// Kills the edge process when the test ends, however it ends.
struct Edge(Child);

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_browsers_cost_bounded_memory_and_are_closed() {
    // A media service whose 64 KiB document carries the counter `i`.
    let counter = Arc::new(AtomicUsize::new(0));
    let pad = Arc::new("x".repeat(PAD));
    let app = Router::new()
        .route(
            "/live/{id}",
            get(|State((n, pad)): State<(Arc<AtomicUsize>, Arc<String>)>| async move {
                format!(r#"{{"i":{},"pad":"{pad}"}}"#, n.load(Ordering::SeqCst))
            }),
        )
        .with_state((counter.clone(), pad));
    let media = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let media_url = format!("http://{}/live/{{event_id}}", media.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(media, app).await });

    let mut config = poller::Config::with_media_url(&media_url).unwrap();
    config.interval = Duration::from_millis(20);
    let poller_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let poller_addr = poller_listener.local_addr().unwrap();
    tokio::spawn(poller::run(config, poller_listener, std::future::pending()));

    let mut child = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["--listen", "127.0.0.1:0", "--write-timeout", "1s"])
        .args(["--poller", &format!("http://{poller_addr}")])
        .env_clear()
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let edge = Edge(child);
    let line = stdout.lines().map_while(Result::ok).find(|l| l.contains("edge listening")).unwrap();
    let addr = line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();

    let mut stuck = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /live/flood/stream HTTP/1.1\r\nHost: edge\r\n\r\n").await.unwrap();
        stuck.push(s);
    }
    let resp = reqwest::get(format!("http://{addr}/live/flood/stream")).await.unwrap();
    let mut reader = resp.bytes_stream().eventsource();
    let mut wait_for = async |i: usize| loop {
        let event = tokio::time::timeout(PATIENCE, reader.next()).await.expect("on time").unwrap().unwrap();
        if event.data.starts_with(&format!(r#"{{"i":{i},"#)) {
            return;
        }
    };
    wait_for(0).await;
    let before = rss_kib(edge.0.id());
    // 300 changes of 64 KiB: 19 MiB per browser, 375 MiB in all if the edge
    // queued them for the stuck browsers. The healthy one gets every change.
    for i in 1..=300 {
        counter.store(i, Ordering::SeqCst);
        wait_for(i).await;
    }
    let grown = rss_kib(edge.0.id()).saturating_sub(before);
    assert!(grown < 24 * 1024, "the edge grew by {grown} KiB with stuck browsers");

    // Their writes stalled past --write-timeout: the edge closed them.
    for mut s in stuck {
        let mut sink = vec![0; 1 << 20];
        let closed = tokio::time::timeout(PATIENCE, async {
            while let Ok(n) = s.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a stalled connection was not closed");
    }
}
