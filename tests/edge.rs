//! The edge as browsers, proxies and bad networks meet it: stream rules,
//! reconnection, ended events, limits, hostile input, CORS and drain.

use livepush_tests::{
    PATIENCE, TestMedia, media::Reply, raw_request, read_for, sse::SseClient, start_edge, start_poller,
    start_poller_at,
};
use std::time::Duration;

fn stream_url(edge: &livepush_tests::Running, id: &str) -> String {
    format!("{}/live/{id}/stream", edge.url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_get_keepalive_comments() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let edge = start_edge(&["--poller", &poller.url(), "--keepalive", "100ms"]).await;
    let resp = reqwest::get(stream_url(&edge, "quiet")).await.unwrap();
    let text = read_for(resp, Duration::from_millis(700)).await;
    let data_at = text.find("data: ").expect("the value");
    let comments = text[data_at..].matches("\n:\n\n").count();
    assert!(comments >= 3, "keep-alive comments after the value: {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_decides_what_is_resent() {
    let media = TestMedia::start().await;
    media.set_json("resume", r#"{"r":1}"#);
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let url = stream_url(&edge, "resume");
    let mut first = SseClient::open(&url).await;
    let current = first.next_message().await.id;

    let client = reqwest::Client::new();
    let window = Duration::from_millis(400);
    // The browser has the current value: nothing is resent.
    let same = client.get(&url).header("last-event-id", &current).send().await.unwrap();
    let text = read_for(same, window).await;
    assert!(text.starts_with("retry: ") && !text.contains("data:"), "{text:?}");
    // Same through the query parameter polyfills use.
    let same = client.get(format!("{url}?lastEventId={current}")).send().await.unwrap();
    assert!(!read_for(same, window).await.contains("data:"));
    // An older id, or one that is not a seq at all, gets the latest value.
    let older = (current.parse::<u64>().unwrap() - 1).to_string();
    for id in [older.as_str(), "abc", "99999999999999999999999", "", " 1 2"] {
        let resp = client.get(&url).header("last-event-id", id).send().await.unwrap();
        let text = read_for(resp, window).await;
        assert!(text.contains(&format!("id: {current}\ndata: {{\"r\":1}}\n")), "{id:?}: {text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listen_takes_probes_and_metrics_off_the_browser_port() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let admin = livepush_tests::process::free_addr();
    let edge = start_edge(&["--poller", &poller.url(), "--admin-listen", &admin.to_string()]).await;
    let admin = format!("http://{admin}");
    livepush_tests::process::wait_ok(&format!("{admin}/readyz")).await;
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            reqwest::get(format!("{}{path}", edge.url())).await.unwrap().status(),
            404,
            "{path} on the public port"
        );
        assert_eq!(
            reqwest::get(format!("{admin}{path}")).await.unwrap().status(),
            200,
            "{path} on the admin port"
        );
    }
    let metrics = reqwest::get(format!("{admin}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("livepush_edge_streams_open"), "{metrics}");
    // Browsers are served as before, and the demo page too.
    let mut browser = SseClient::open(&stream_url(&edge, "adm")).await;
    assert_eq!(browser.next_message().await.data, r#"{"event":"adm"}"#);
    assert_eq!(reqwest::get(edge.url()).await.unwrap().status(), 200);
    // The admin port closes with the edge.
    drop(browser);
    edge.stop().await.unwrap();
    assert!(reqwest::get(format!("{admin}/healthz")).await.is_err(), "the admin port closes with the edge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_event_sends_end_closes_and_then_answers_204() {
    let media = TestMedia::start().await;
    media.set_json("finale", r#"{"on":true}"#);
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let url = stream_url(&edge, "finale");
    let mut browser = SseClient::open(&url).await;
    let first = browser.next_message().await;
    media.set("finale", Reply::status(404));
    let end = browser.next().await.expect("an end event");
    assert_eq!(end.event, "end", "first {first:?}, then {end:?}");
    assert!(browser.next().await.is_none(), "the stream closes after end");

    let again = reqwest::get(&url).await.unwrap();
    assert_eq!(again.status(), 204, "a reconnecting EventSource is told to stop");
    // RFC 9110: no Content-Length (nor any framing) on a 204, on the lean
    // HTTP/1.1 path (a plain GET) and on hyper's (HTTP/1.0 goes there).
    for version in ["1.1", "1.0"] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
        let head =
            format!("GET /live/finale/stream HTTP/{version}\r\nhost: x\r\naccept: text/event-stream\r\n\r\n");
        raw.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(PATIENCE, raw.read_to_end(&mut answer)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(answer.starts_with(&format!("http/{version} 204")), "{version}: {answer}");
        assert!(
            !answer.contains("content-length") && !answer.contains("transfer-encoding"),
            "{version}: {answer}"
        );
    }
    // A fresh edge learns it from the poller's memory: end at once, then 204.
    let edge2 = start_edge(&["--poller", &poller.url()]).await;
    let mut late = SseClient::open(&stream_url(&edge2, "finale")).await;
    // It never had the value: the final value, then the end.
    assert_eq!(late.next().await.unwrap().data, r#"{"on":true}"#);
    assert_eq!(late.next().await.unwrap().event, "end");
    assert!(late.next().await.is_none());
    assert_eq!(reqwest::get(stream_url(&edge2, "finale")).await.unwrap().status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_ride_out_a_poller_restart_without_duplicate_seqs() {
    let media = TestMedia::start().await;
    media.set_json("steady", r#"{"n":1}"#);
    let args = ["--media-url", &media.template(), "--interval", "50ms"];
    let poller = start_poller(&args).await;
    let addr = poller.addr;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let mut browser = SseClient::open(&stream_url(&edge, "steady")).await;
    let first = browser.next_message().await;

    poller.stop().await.unwrap();
    let stale = browser.next().await.expect("still connected");
    assert_eq!(stale.event, "stale", "browsers learn the data may be outdated");

    let _poller = start_poller_at(addr, &args).await;
    let live = browser.next().await.expect("still connected");
    assert_eq!(live.event, "live", "fresh again once the poller is back: {live:?}");

    media.set_json("steady", r#"{"n":2}"#);
    let next = browser.next_message().await;
    assert_eq!(next.data, r#"{"n":2}"#);
    assert!(next.id.parse::<u64>().unwrap() > first.id.parse::<u64>().unwrap(), "seq moves on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_upstream_data_is_flagged_and_cleared() {
    let media = TestMedia::start().await;
    media.set_json("wobbly", r#"{"w":1}"#);
    let poller =
        start_poller(&["--media-url", &media.template(), "--interval", "50ms", "--max-backoff", "100ms"])
            .await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let mut browser = SseClient::open(&stream_url(&edge, "wobbly")).await;
    assert_eq!(browser.next_message().await.data, r#"{"w":1}"#);
    media.set("wobbly", Reply::status(500));
    assert_eq!(browser.next().await.unwrap().event, "stale");
    // A browser arriving now gets the last good value and the stale flag.
    let mut late = SseClient::open(&stream_url(&edge, "wobbly")).await;
    assert_eq!(late.next().await.unwrap().data, r#"{"w":1}"#);
    assert_eq!(late.next().await.unwrap().event, "stale");
    media.set_json("wobbly", r#"{"w":2}"#);
    assert_eq!(browser.next().await.unwrap().data, r#"{"w":2}"#);
    assert_eq!(browser.next().await.unwrap().event, "live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_answer_503_with_retry_after() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let edge =
        start_edge(&["--poller", &poller.url(), "--max-connections", "3", "--max-per-client", "2"]).await;
    let url = stream_url(&edge, "crowd");
    let a = SseClient::open(&url).await;
    let b = SseClient::open(&url).await;
    assert_eq!((a.status, b.status), (200, 200));
    let refused = reqwest::get(&url).await.unwrap();
    assert_eq!(refused.status(), 503, "third stream from one address");
    assert_eq!(refused.headers()["retry-after"], "5");

    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let c = other.get(&url).send().await.unwrap();
    assert_eq!(c.status(), 200, "another address still fits");
    let full = other.get(&url).send().await.unwrap();
    assert_eq!(full.status(), 503, "total cap");
    assert!(full.text().await.unwrap().contains("limit"));

    drop(a);
    // The freed slot is reusable once the edge notices the browser left.
    let mut reopened = None;
    for _ in 0..100 {
        let r = other.get(&url).send().await.unwrap();
        if r.status() == 200 {
            reopened = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened.is_some(), "a closed stream frees its slot");
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_errors() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    for (path, want) in [
        ("/live/ok/stream?vid=a%20b", "viewer id"),
        ("/live/ok/stream?vid=%0A", "viewer id"),
        (&format!("/live/ok/stream?vid={}", "v".repeat(65)) as &str, "viewer id"),
        ("/live/ok/stream?vid=", "viewer id"),
        (&format!("/live/ok/stream?x={}", "q".repeat(600)), "query"),
        ("/live/ok/stream?vid=%FF%FE", "viewer id"),
    ] {
        let (status, body) =
            raw_request(edge.addr, &format!("GET {path} HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n"))
                .await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(want) && body.trim_end().lines().count() == 1, "{path}: {body:?}");
    }
    // A huge header block is refused by the HTTP layer, not buffered.
    let big = format!("GET /live/ok/stream HTTP/1.1\r\nHost: e\r\nX-Big: {}\r\n\r\n", "h".repeat(64 * 1024));
    let (status, _) = raw_request(edge.addr, &big).await;
    assert_eq!(status, 431);
    // A fine viewer id streams.
    let mut ok = SseClient::open(&format!("{}?vid=user-1.a_b~c", stream_url(&edge, "ok"))).await;
    assert_eq!(ok.status, 200);
    ok.next_message().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_for_listed_origins_with_credentials_and_for_any_origin() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let listed = start_edge(&[
        "--poller",
        &poller.url(),
        "--allow-origin",
        "https://app.example,http://localhost:3000",
    ])
    .await;
    let client = reqwest::Client::new();
    let url = stream_url(&listed, "cors");

    let resp = client.get(&url).header("origin", "https://app.example").send().await.unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.example");
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    assert!(resp.headers().get_all("vary").iter().any(|v| v.to_str().unwrap().contains("origin")));
    let resp = client.get(&url).header("origin", "https://evil.example").send().await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());

    let preflight = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "last-event-id")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let allowed = preflight.headers()["access-control-allow-headers"].to_str().unwrap().to_lowercase();
    assert!(allowed.contains("last-event-id"), "{allowed}");

    let any = start_edge(&["--poller", &poller.url(), "--allow-origin", "*"]).await;
    let resp =
        client.get(stream_url(&any, "cors")).header("origin", "https://x.example").send().await.unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");

    let none = start_edge(&["--poller", &poller.url()]).await;
    let resp =
        client.get(stream_url(&none, "cors")).header("origin", "https://x.example").send().await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none(), "same-origin only by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_spreads_reconnects_and_closes_streams() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let edge = start_edge(&["--poller", &poller.url(), "--drain-spread", "2s"]).await;
    let url = stream_url(&edge, "drain");
    let mut bodies = Vec::new();
    for _ in 0..12 {
        let resp = reqwest::get(&url).await.unwrap();
        bodies.push(tokio::spawn(read_for(resp, PATIENCE)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    edge.stop().await.unwrap();
    let mut delays = Vec::new();
    for body in bodies {
        let text = body.await.unwrap();
        let last_retry = text.rsplit("retry: ").next().unwrap();
        let ms: u64 = last_retry.lines().next().unwrap().parse().unwrap();
        assert!(text.matches("retry: ").count() == 2 && text.ends_with("\n\n"), "{text:?}");
        delays.push(ms);
    }
    assert!(delays.iter().all(|d| *d <= 2000), "{delays:?}");
    delays.sort();
    delays.dedup();
    assert!(delays.len() >= 6, "reconnect delays should be spread: {delays:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template()]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    assert_eq!(reqwest::get(format!("{}/healthz", edge.url())).await.unwrap().status(), 200);
    let ready = format!("{}/readyz", edge.url());
    let mut ok = false;
    for _ in 0..100 {
        if reqwest::get(&ready).await.unwrap().status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "ready once the poller answers its health check");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let orphan = start_edge(&["--poller", &dead]).await;
    assert_eq!(reqwest::get(format!("{}/healthz", orphan.url())).await.unwrap().status(), 200);
    let resp = reqwest::get(format!("{}/readyz", orphan.url())).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.text().await.unwrap().contains("poller"));
}

/// SSE streams over plain TCP are written by the edge's lean HTTP/1.1 path;
/// everything else is hyper's. Either way clients get well-formed HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_other_requests_speak_plain_http11() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let media = TestMedia::start().await;
    media.set_json("plain", r#"{"x":1}"#);
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;

    // The stream: a chunked 200 whose first chunks carry retry: and the value.
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(b"GET /live/plain/stream HTTP/1.1\r\nHost: e\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !String::from_utf8_lossy(&raw).contains(r#"data: {"x":1}"#) {
        let mut buf = [0u8; 1024];
        let n =
            tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("the value in time").unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for line in ["content-type: text/event-stream", "transfer-encoding: chunked", "cache-control: no-cache"] {
        assert!(head.lines().any(|l| l == line), "{line} missing from {head}");
    }
    // Decode the chunks: a hex size line, exactly that many bytes, CRLF.
    let mut rest = body;
    let mut decoded = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size, 16).expect("hex chunk size");
        if after.len() < size + 2 {
            break;
        }
        decoded.push_str(&after[..size]);
        assert_eq!(&after[size..size + 2], "\r\n");
        rest = &after[size + 2..];
    }
    assert!(decoded.starts_with("retry: ") && decoded.contains("data: {\"x\":1}\n\n"), "{decoded:?}");

    // HTTP/1.0 goes to hyper and still streams (no chunking, close-delimited).
    let mut s10 = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    s10.write_all(b"GET /live/plain/stream HTTP/1.0\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, s10.read(&mut buf)).await.unwrap().unwrap();
    let first = String::from_utf8_lossy(&buf[..n]);
    assert!(first.starts_with("HTTP/1.0 200") || first.starts_with("HTTP/1.1 200"), "{first}");

    // Pipelined requests are hyper's and are all answered.
    let (status, body) = raw_request(
        edge.addr,
        "GET /healthz HTTP/1.1\r\nHost: e\r\n\r\nGET /healthz HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("HTTP/1.1 200"), "the second answer: {body:?}");

    // A refused stream is a complete response, then the connection closes.
    let (status, body) = raw_request(edge.addr, "GET /live/a%20b/stream HTTP/1.1\r\nHost: e\r\n\r\n").await;
    assert_eq!(status, 400, "{body}");
}

/// `--poller` may name a host: it is resolved (and re-resolved) to the
/// addresses of the pollers. `localhost` may also resolve to `::1`, where
/// nothing listens: that address is simply never live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_named_by_dns_is_found() {
    let media = TestMedia::start().await;
    media.set_json("named", r#"{"n":1}"#);
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let named = format!("http://localhost:{}", poller.addr.port());
    let edge = start_edge(&["--poller", &named, "--poller-resolve-interval", "200ms"]).await;
    let mut browser = SseClient::open(&stream_url(&edge, "named")).await;
    assert_eq!(browser.next_message().await.data, r#"{"n":1}"#);
    let ready = reqwest::get(format!("{}/readyz", edge.url())).await.unwrap();
    assert_eq!(ready.status(), 200);
}
