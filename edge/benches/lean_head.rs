//! The lean HTTP/1.1 path's first step (`edge/src/lean/head.rs`): a plain
//! connection's first request head read into a short-lived buffer, parsed,
//! and sorted into an SSE stream's `GET` (answered on the lean path, as an
//! `http::Request` for the router) or anything else (handed to hyper with
//! the bytes read). Once per plain-TCP connection.
//!
//! The head is read from a byte slice, so the figures are the parse and the
//! request built from it plus one `block_on` of a current-thread runtime
//! (`runtime_baseline` is that alone), never a socket.

use divan::{Bencher, black_box, counter::BytesCount};
use edge::lean::{First, read_first};
use std::{net::SocketAddr, time::Duration};

fn main() {
    divan::main();
}

/// What the edge passes (`MAX_HEAD_BYTES`, `HEADER_READ_TIMEOUT` in
/// `edge/src/server.rs`); the timeout never fires here.
const MAX_HEAD: usize = 16 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Chromium's `new EventSource(url)` from a page on another origin, with
/// its client hints, fetch metadata and a cookie.
const CHROMIUM: &str = "GET /live/match-4821/stream?vid=v-7f3a9c2e41d8 HTTP/1.1\r\n\
Host: live.example.com\r\n\
Connection: keep-alive\r\n\
sec-ch-ua-platform: \"Windows\"\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Accept: text/event-stream\r\n\
sec-ch-ua: \"Google Chrome\";v=\"131\", \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"\r\n\
sec-ch-ua-mobile: ?0\r\n\
Origin: https://www.example.com\r\n\
Sec-Fetch-Site: same-site\r\n\
Sec-Fetch-Mode: cors\r\n\
Sec-Fetch-Dest: empty\r\n\
Referer: https://www.example.com/matches/4821\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-GB,en-US;q=0.9,en;q=0.8\r\n\
Cookie: session=8f14e45fceea167a5a36dedd4bea2543; consent=1\r\n\
\r\n";

/// Chromium reconnecting a multi-event stream of `n` events: the same
/// headers, the events in the query and its `Last-Event-ID` (a resume id,
/// ~400 characters at 64 events).
fn multi(n: usize) -> String {
    let query: Vec<String> = (0..n).map(|i| format!("event=match-{}", 4_800 + i)).collect();
    let resume = "AQ".to_owned() + &"x7Kp".repeat(n * 6 / 4 + 1);
    let (_, headers) = CHROMIUM.split_once("\r\n").unwrap();
    let headers = headers.strip_suffix("\r\n").unwrap();
    format!("GET /live/stream?{} HTTP/1.1\r\n{headers}Last-Event-ID: {resume}\r\n\r\n", query.join("&"))
}

/// A Prometheus scrape (hyper's).
const METRICS: &str = "GET /metrics HTTP/1.1\r\n\
Host: 10.0.3.17:8080\r\n\
User-Agent: Prometheus/2.53.0\r\n\
Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n\
Accept-Encoding: gzip\r\n\
X-Prometheus-Scrape-Timeout-Seconds: 10\r\n\
\r\n";

/// A stream path with a body (hyper's: it answers 405 or whatever the
/// router says).
const POST: &str = "POST /live/match-4821/stream HTTP/1.1\r\n\
Host: live.example.com\r\n\
User-Agent: curl/8.5.0\r\n\
Accept: */*\r\n\
Content-Type: application/json\r\n\
Content-Length: 2\r\n\
\r\n";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
}

fn peer() -> SocketAddr {
    "203.0.113.9:51234".parse().unwrap()
}

/// Reads and sorts `head`, checking it went the way `stream` says.
fn classify(bencher: Bencher, head: &[u8], stream: bool) {
    let rt = runtime();
    let first = rt.block_on(read_first(&mut &head[..], MAX_HEAD, TIMEOUT, peer()));
    assert_eq!(matches!(first, First::Stream(_)), stream);
    assert!(stream || matches!(first, First::Other(_)));
    bencher.counter(BytesCount::of_slice(head)).bench_local(|| {
        let mut io = black_box(head);
        rt.block_on(read_first(&mut io, MAX_HEAD, TIMEOUT, peer()))
    });
}

/// `GET /live/{id}/stream` from Chromium: the lean path.
#[divan::bench]
fn chromium_stream(bencher: Bencher) {
    classify(bencher, CHROMIUM.as_bytes(), true);
}

/// `GET /live/stream?event=…` with 8 and 64 events and a resume id: the
/// lean path.
#[divan::bench(args = [8, 64])]
fn chromium_multi_stream(bencher: Bencher, n: usize) {
    classify(bencher, multi(n).as_bytes(), true);
}

/// `GET /metrics`: handed to hyper.
#[divan::bench]
fn metrics_to_hyper(bencher: Bencher) {
    classify(bencher, METRICS.as_bytes(), false);
}

/// `POST` with a body: handed to hyper.
#[divan::bench]
fn post_to_hyper(bencher: Bencher) {
    classify(bencher, POST.as_bytes(), false);
}

/// The harness alone: one `block_on` of a ready future under the same
/// timeout, to subtract from the figures above.
#[divan::bench]
fn runtime_baseline(bencher: Bencher) {
    let rt = runtime();
    bencher
        .bench_local(|| rt.block_on(async { tokio::time::timeout(TIMEOUT, async { black_box(0) }).await }));
}
