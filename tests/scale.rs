//! An edge at scale: any number of events through pollers that limit
//! streams per connection, refusals that browsers hear about, and churn on
//! some events that disturbs nobody else and leaves nothing behind.

use futures_util::StreamExt;
use livepush::proto::{
    LiveUpdate, SubscribeRequest,
    live_feed_server::{LiveFeed, LiveFeedServer},
};
use livepush_tests::{
    PATIENCE, TestMedia, http, metric,
    process::{Process, free_addr, wait_ok},
    raw_request,
    sse::SseClient,
    start_edge, start_poller,
};
use std::time::Duration;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::Instant,
};

const EDGE: &str = env!("CARGO_BIN_EXE_livepush-test-edge");

/// Longest any wait here may take: grace after the last browser (up to
/// 7.5 s) plus retries with backoff.
const LONG: Duration = Duration::from_secs(30);

/// Waits (at most [`LONG`]) until the series at `url` satisfies `check`.
async fn until_metric(url: &str, series: &str, check: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + LONG;
    loop {
        let v = metric(url, series).await;
        if check(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{series} = {v} at the deadline");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens `n` browsers on events `{prefix}0..n`, each waiting for its first
/// value.
async fn browsers(edge: &str, prefix: &str, n: usize) -> Vec<SseClient> {
    let opened = (0..n).map(|i| {
        let url = format!("{edge}/live/{prefix}{i}/stream");
        async move {
            let mut b = SseClient::open(&url).await;
            let first = b.next_message().await;
            assert_eq!(first.data, format!(r#"{{"event":"{prefix}{i}"}}"#));
            b
        }
    });
    futures_util::future::join_all(opened).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_beyond_a_pollers_stream_limit_open_more_channels_and_close_them_when_idle() {
    let media = TestMedia::start().await;
    let poller =
        start_poller(&["--media-url", &media.template(), "--interval", "1h", "--max-streams", "50"]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let channels = format!("livepush_edge_upstream_channels{{poller=\"{}\"}}", poller.addr);

    let all = browsers(&edge.url(), "wide-", 120).await;
    let open = metric(&edge.url(), &channels).await;
    assert!(open >= 3.0, "120 streams at 50 per connection need 3 channels, gauge says {open}");
    assert_eq!(metric(&edge.url(), "livepush_edge_upstream_streams").await, 120.0);
    for i in 0..120 {
        assert_eq!(media.count(&format!("wide-{i}")), 1, "one poll per event");
    }

    drop(all);
    until_metric(&edge.url(), "livepush_edge_upstream_streams", |v| v == 0.0).await;
    until_metric(&edge.url(), &channels, |v| v == 1.0).await;
    until_metric(&edge.url(), "livepush_edge_streams_open", |v| v == 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_is_stale_counted_and_recovers_when_capacity_returns() {
    let media = TestMedia::start().await;
    let poller = start_poller(&[
        "--media-url",
        &media.template(),
        "--interval",
        "1h",
        "--max-events",
        "1",
        "--linger",
        "100ms",
    ])
    .await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let refused = "livepush_edge_upstream_subscribe_failures_total{reason=\"refused\"}";
    let before = metric(&edge.url(), refused).await;

    let mut first = SseClient::open(&format!("{}/live/cap-a/stream", edge.url())).await;
    assert_eq!(first.next_message().await.data, r#"{"event":"cap-a"}"#);
    // The poller watches one event at most: the second is refused, and its
    // browser hears it at once, before any value.
    let mut second = SseClient::open(&format!("{}/live/cap-b/stream", edge.url())).await;
    let heard = second.next().await.expect("open");
    assert_eq!(heard.event, "stale", "{heard:?}");
    assert!(metric(&edge.url(), refused).await > before);

    // Capacity returns once the first event is let go (edge grace, then the
    // poller's linger): the refused browser gets its value.
    drop(first);
    let value = tokio::time::timeout(LONG, async {
        loop {
            let e = second.next_patiently().await.expect("stream open");
            if e.event == "message" {
                return e;
            }
        }
    })
    .await
    .expect("a value once capacity returned");
    assert_eq!(value.data, r#"{"event":"cap-b"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_on_500_events_disturbs_no_other_browser_and_leaves_nothing_behind() {
    let media = TestMedia::start().await;
    let poller =
        start_poller(&["--media-url", &media.template(), "--interval", "1h", "--linger", "1s"]).await;
    let edge = Process::start(EDGE, free_addr(), &["--poller", &poller.url()]);
    wait_ok(&format!("{}/readyz", edge.url())).await;

    // Browsers of a stable event, watching throughout.
    let mut stable = browsers(&edge.url(), "stable-", 1).await;
    stable.extend(browsers(&edge.url(), "stable-", 1).await);
    let mut watchers = Vec::new();
    for mut b in stable {
        watchers.push(tokio::spawn(async move {
            let mut named = Vec::new();
            while let Some(e) = b.next_patiently().await {
                named.push(e.event);
            }
            named
        }));
    }
    // Readiness probed throughout.
    let probe_url = format!("{}/readyz", edge.url());
    let probing = tokio::spawn(async move {
        let client = http();
        let (mut ok, mut not) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            match client.get(&probe_url).timeout(Duration::from_secs(2)).send().await {
                Ok(r) if r.status() == 200 => ok += 1,
                _ => not += 1,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (ok, not)
    });

    let (rss_before, fds_before) = edge.rss_and_fds();
    for round in 0..2 {
        let crowd = browsers(&edge.url(), &format!("churn{round}-"), 500).await;
        drop(crowd);
    }
    let (ok, not) = probing.await.unwrap();
    assert_eq!(not, 0, "/readyz failed {not} of {} probes during the churn", ok + not);

    // Only the stable browsers remain; the churned events are let go after
    // the grace, and the poller stops polling them after its linger.
    until_metric(&edge.url(), "livepush_edge_streams_open", |v| v == 2.0).await;
    until_metric(&edge.url(), "livepush_edge_events_watched", |v| v == 1.0).await;
    until_metric(&poller.url(), "livepush_poller_events_watched", |v| v == 1.0).await;
    let polls = media.total();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(media.total(), polls, "nothing polls the churned events any more");
    // Memory and sockets return to their level before the churn (within
    // 10 % + 2 MiB: the allocator keeps some pages).
    let rss_bound = rss_before + rss_before / 10 + (2 << 20);
    let deadline = Instant::now() + LONG;
    loop {
        let (rss_after, fds_after) = edge.rss_and_fds();
        if rss_after <= rss_bound && fds_after <= fds_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RSS {rss_before} -> {rss_after} (bound {rss_bound}), fds {fds_before} -> {fds_after}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The stable browsers never heard `stale`, and are still connected.
    drop(edge);
    for w in watchers {
        let named = tokio::time::timeout(PATIENCE, w).await.expect("stream ends with the edge").unwrap();
        assert!(!named.iter().any(|n| n == "stale"), "a stable browser saw {named:?}");
    }
}

/// Serves [`Refusing`] (with a SERVING health status) on a free port.
async fn start_refusing_poller() -> std::net::SocketAddr {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<LiveFeedServer<Refusing>>().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(LiveFeedServer::new(Refusing))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// A poller that refuses every event id as invalid (a poller whose id rules
/// disagree with the edge's), healthy otherwise; except `max-*` events, whose
/// streams send `seq = u64::MAX` (a buggy or hostile poller), and `ok-*`
/// events, served normally.
struct Refusing;

#[tonic::async_trait]
impl LiveFeed for Refusing {
    type SubscribeStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<LiveUpdate, tonic::Status>> + Send>>;

    async fn subscribe(
        &self,
        request: tonic::Request<SubscribeRequest>,
    ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
        let id = request.into_inner().event_id;
        let update = |seq| LiveUpdate {
            event_id: id.clone(),
            seq,
            data: r#"{"n":1}"#.into(),
            fetched_at_unix_ms: 0,
            state: livepush::proto::State::Live as i32,
        };
        let updates = if id.starts_with("max-") {
            vec![update(u64::MAX), update(7)]
        } else if id.starts_with("ok-") {
            vec![update(5)]
        } else {
            return Err(tonic::Status::invalid_argument("this poller does not accept that id"));
        };
        let open_ended = futures_util::stream::iter(updates.into_iter().map(Ok::<_, tonic::Status>))
            .chain(futures_util::stream::pending());
        Ok(tonic::Response::new(Box::pin(open_ended)))
    }

    async fn publish(
        &self,
        _: tonic::Request<livepush::proto::PublishRequest>,
    ) -> Result<tonic::Response<livepush::proto::PublishReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("this test poller publishes nothing"))
    }
}

/// The edge starts again with one malloc arena and no thread cache (what
/// lets it give a crowd's memory back), keeping other tunables, unless the
/// operator chose either setting; its start-up log says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_runs_with_its_allocator_tunables_unless_the_operator_set_them() {
    let ours = edge::memory::TUNABLES;
    let cases = [
        ("", format!("one arena, no thread cache tunables={ours}")),
        (
            "glibc.malloc.trim_threshold=65536",
            format!("one arena, no thread cache tunables=glibc.malloc.trim_threshold=65536:{ours}"),
        ),
        (
            "glibc.malloc.tcache_count=7",
            "as the operator set it tunables=glibc.malloc.tcache_count=7".to_owned(),
        ),
    ];
    let dir = livepush_tests::temp_dir("allocator");
    for (i, (given, expected)) in cases.into_iter().enumerate() {
        let log = dir.join(format!("edge-{i}.log"));
        let args = ["--poller", "http://127.0.0.1:9"];
        let env = [("GLIBC_TUNABLES", given), ("RUST_LOG", "edge=info")];
        let edge = Process::start_with(EDGE, free_addr(), &args, &env, Some(&log));
        wait_ok(&format!("{}/healthz", edge.url())).await;
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<_> = text.lines().filter(|l| l.contains("malloc:")).collect();
        assert_eq!(lines.len(), 1, "given {given:?}: one line, once:\n{text}");
        assert!(lines[0].contains(&expected), "given {given:?}: {}", lines[0]);
        assert!(!text.contains("glibc's defaults"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_the_poller_refuses_as_invalid_ends_its_browsers_streams() {
    let addr = start_refusing_poller().await;
    let edge = start_edge(&["--poller", &format!("http://{addr}")]).await;
    let url = format!("{}/live/odd/stream", edge.url());
    let mut browser = SseClient::open(&url).await;
    assert_eq!(browser.status, 200);
    let e = browser.next().await.expect("an event, not keep-alives for ever");
    assert_eq!(e.event, "end", "{e:?}");
    assert!(browser.next().await.is_none(), "the stream closes after end");
    let again = http().get(&url).send().await.unwrap();
    assert_eq!(again.status(), 204, "EventSource stops for good");
    let invalid = "livepush_edge_upstream_subscribe_failures_total{reason=\"invalid\"}";
    assert!(metric(&edge.url(), invalid).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_sending_seq_u64_max_cannot_stall_or_break_the_edge() {
    let addr = start_refusing_poller().await;
    let edge = Process::start(EDGE, free_addr(), &["--poller", &format!("http://{addr}")]);
    wait_ok(&format!("{}/readyz", edge.url())).await;
    let mut hostile = SseClient::open(&format!("{}/live/max-1/stream", edge.url())).await;
    let heard = hostile.next().await.expect("open");
    assert_eq!(heard.event, "stale", "the impossible value is not passed on: {heard:?}");
    // The edge keeps serving: another event's browser gets its value, and
    // the hostile event's browser is still connected (retrying upstream).
    let mut fine = SseClient::open(&format!("{}/live/ok-1/stream", edge.url())).await;
    let value = fine.next_message().await;
    assert_eq!((value.id.as_str(), value.data.as_str()), ("5", r#"{"n":1}"#));
    let (status, _) =
        raw_request(edge.addr, "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert_eq!(status, 200);
    drop(edge);
    while let Some(e) = hostile.next_patiently().await {
        assert_ne!(e.event, "message", "no data from the hostile stream: {e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_sending_after_its_get_is_closed() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let head = "GET /live/chatty/stream HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n";

    // A well-behaved client with a stray line break keeps its stream.
    let mut quiet = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    quiet.write_all(head.as_bytes()).await.unwrap();
    quiet.write_all(b"\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, quiet.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    let mut chatty = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    chatty.write_all(head.as_bytes()).await.unwrap();
    let n = tokio::time::timeout(PATIENCE, chatty.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "the stream started");
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut sent = 0usize;
        loop {
            if chatty.write_all(b"more bytes nobody asked for\n").await.is_err() {
                return sent;
            }
            sent += 1;
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_millis(50), chatty.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return sent,
                _ => {}
            }
        }
    })
    .await
    .expect("the edge closed the chatty connection");
    assert!(closed < 100, "closed after {closed} writes");

    // The quiet one is still served.
    let (status, _) =
        raw_request(edge.addr, "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert_eq!(status, 200);
    quiet.write_all(b"").await.unwrap();
    let still = tokio::time::timeout(Duration::from_millis(300), quiet.read(&mut buf)).await;
    assert!(!matches!(still, Ok(Ok(0))), "the quiet stream was closed");
}
