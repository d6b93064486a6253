//! The poller against a misbehaving media service: every rule about upstream
//! load and about what subscribers are told, shown with counted requests.

use livepush::proto::{LiveUpdate, State, SubscribeRequest};
use livepush_tests::{PATIENCE, TestMedia, feed_client, media::Reply, next_update, start_poller, subscribe};
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Code, Streaming};

/// Reads updates until one is in `state`.
async fn until_state(stream: &mut Streaming<LiveUpdate>, state: State) -> LiveUpdate {
    loop {
        let u = next_update(stream).await;
        if u.state == state as i32 {
            return u;
        }
    }
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_media_service_delays_polls_instead_of_stacking_them() {
    let media = TestMedia::start().await;
    media.set("slow", Reply::json(r#"{"s":1}"#).delay(Duration::from_millis(400)));
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "100ms"]).await;
    let mut subs = Vec::new();
    for _ in 0..5 {
        subs.push(subscribe(poller.addr, "slow").await);
    }
    next_update(&mut subs[0]).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(media.max_inflight(), 1, "two polls of one event overlapped");
    let times = media.times("slow");
    assert!(times.len() <= 7, "{} requests in ~2.4 s with 400 ms answers", times.len());
    for gap in gaps(&times) {
        assert!(gap >= Duration::from_millis(380), "a poll started before the previous answered: {gap:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_capped_across_thousands_of_events() {
    let media = TestMedia::start().await;
    let poller =
        start_poller(&["--media-url", &media.template(), "--interval", "1h", "--max-inflight", "8"]).await;
    for i in 0..2000 {
        media.set(&format!("e{i}"), Reply::json("{}").delay(Duration::from_millis(10)));
    }
    let client = feed_client(poller.addr).await;
    let streams =
        futures_util::future::join_all(
            (0..2000).map(|i| {
                let mut c = client.clone();
                async move {
                    c.subscribe(SubscribeRequest { event_id: format!("e{i}") }).await.unwrap().into_inner()
                }
            }),
        )
        .await;
    for mut s in streams {
        next_update(&mut s).await;
    }
    assert_eq!(media.total(), 2000, "one first fetch per event");
    let max = media.max_inflight();
    assert!(max <= 8, "{max} requests in flight with --max-inflight 8");
    assert!(max >= 2, "requests for different events should run concurrently (saw {max})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_of_events_subscribed_together_spread_over_the_interval() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1s"]).await;
    let client = feed_client(poller.addr).await;
    let start = Instant::now();
    let _streams =
        futures_util::future::join_all(
            (0..200).map(|i| {
                let mut c = client.clone();
                async move {
                    c.subscribe(SubscribeRequest { event_id: format!("p{i}") }).await.unwrap().into_inner()
                }
            }),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    // Skip the simultaneous first fetches; bucket the later polls by their
    // phase within the interval.
    let mut buckets = [0usize; 4];
    let mut later = 0;
    for seen in media.seen() {
        let t = seen.at - start;
        if t > Duration::from_millis(400) {
            buckets[(t.as_millis() % 1000 / 250) as usize] += 1;
            later += 1;
        }
    }
    assert!(later > 300, "{later} later polls");
    for (i, n) in buckets.iter().enumerate() {
        assert!(*n * 100 >= later * 12, "phase quarter {i} has {n} of {later} polls: {buckets:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_requests_and_304_count_as_unchanged() {
    let media = TestMedia::start().await;
    media.set("cond", Reply::json(r#"{"v":1}"#).header("etag", "\"v1\""));
    media.set("lm", Reply::json(r#"{"v":1}"#).header("last-modified", "Wed, 25 Nov 2026 10:00:00 GMT"));
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let mut cond = subscribe(poller.addr, "cond").await;
    let mut lm = subscribe(poller.addr, "lm").await;
    let first = next_update(&mut cond).await;
    next_update(&mut lm).await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    let sent = media.header_values("cond", "if-none-match");
    assert!(sent.len() >= 5 && sent.iter().all(|v| v == "\"v1\""), "{sent:?}");
    assert_eq!(media.header_values("cond", "if-none-match").len(), media.count("cond") - 1);
    let sent = media.header_values("lm", "if-modified-since");
    assert!(sent.len() >= 5 && sent.iter().all(|v| v == "Wed, 25 Nov 2026 10:00:00 GMT"), "{sent:?}");

    // All those 304s changed nothing: the next update is the real change.
    media.set("cond", Reply::json(r#"{"v":2}"#).header("etag", "\"v2\""));
    let second = next_update(&mut cond).await;
    assert_eq!(second.data, r#"{"v":2}"#);
    assert_eq!(second.seq, first.seq + 1, "seq moves once per change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_data_is_not_sent_again() {
    let media = TestMedia::start().await;
    media.set_json("same", r#"{"same":true}"#);
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "30ms"]).await;
    let mut s = subscribe(poller.addr, "same").await;
    let first = next_update(&mut s).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(media.count("same") >= 8);
    media.set_json("same", r#"{"same":false}"#);
    let second = next_update(&mut s).await;
    assert_eq!((second.seq, second.data.as_str()), (first.seq + 1, r#"{"same":false}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_keep_the_last_value_back_off_and_recover() {
    let media = TestMedia::start().await;
    media.set_json("flaky", r#"{"good":1}"#);
    let poller =
        start_poller(&["--media-url", &media.template(), "--interval", "50ms", "--max-backoff", "400ms"])
            .await;
    let mut s = subscribe(poller.addr, "flaky").await;
    let live = next_update(&mut s).await;

    media.set("flaky", Reply::status(500).body("oops"));
    let failing_since = media.count("flaky");
    let stale = until_state(&mut s, State::Stale).await;
    assert_eq!(stale.data, live.data, "the last good value stays");
    assert_eq!(stale.seq, live.seq + 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let times = media.times("flaky")[failing_since..].to_vec();
    let g = gaps(&times);
    assert!(g.len() >= 5, "{g:?}");
    // 50 ms doubling with ±20 % jitter: each of the first waits grows...
    for w in g[..3].windows(2) {
        assert!(w[1] > w[0].mul_f64(1.25), "backoff does not grow: {g:?}");
    }
    // ...until --max-backoff caps it.
    for gap in &g[3..] {
        assert!(*gap <= Duration::from_millis(460), "backoff over the cap: {g:?}");
        assert!(*gap >= Duration::from_millis(250), "backoff fell back early: {g:?}");
    }

    media.set_json("flaky", r#"{"good":2}"#);
    let fresh = until_state(&mut s, State::Live).await;
    assert_eq!(fresh.data, r#"{"good":2}"#);
    assert_eq!(fresh.seq, stale.seq + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_bad_bodies_and_refused_connections_are_stale_not_forwarded() {
    let media = TestMedia::start().await;
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(3000));
    media.set("timeout", Reply::json("{}").delay(Duration::from_secs(5)));
    media.set("big", Reply::json(&big));
    media.set("big-chunked", Reply::json(&big).chunked());
    media.set("html", Reply::json("<html></html>"));
    media.set("teapot", Reply::status(418).body("{}"));
    let poller = start_poller(&[
        "--media-url",
        &media.template(),
        "--interval",
        "100ms",
        "--media-timeout",
        "200ms",
        "--max-body",
        "1KiB",
    ])
    .await;
    for id in ["timeout", "big", "big-chunked", "html", "teapot"] {
        let mut s = subscribe(poller.addr, id).await;
        let u = next_update(&mut s).await;
        assert_eq!(u.state, State::Stale as i32, "{id}");
        assert_eq!(u.data, "", "{id}: nothing of a bad answer is forwarded");
    }
    // A bounded body: an answer within the limit still goes through.
    media.set_json("big", r#"{"small":true}"#);
    let mut s = subscribe(poller.addr, "big").await;
    assert_eq!(until_state(&mut s, State::Live).await.data, r#"{"small":true}"#);

    // Nobody listening at all.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/live/{{event_id}}", closed.local_addr().unwrap());
    drop(closed);
    let poller = start_poller(&["--media-url", &dead, "--interval", "100ms"]).await;
    let mut s = subscribe(poller.addr, "nobody").await;
    assert_eq!(next_update(&mut s).await.state, State::Stale as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let media = TestMedia::start().await;
    media.set("busy", Reply::status(429).header("retry-after", "1"));
    media.set("down", Reply::status(503).header("retry-after", "1"));
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let _a = subscribe(poller.addr, "busy").await;
    let _b = subscribe(poller.addr, "down").await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    for id in ["busy", "down"] {
        let times = media.times(id);
        assert!(
            (2..=3).contains(&times.len()),
            "{id}: {} requests in 2.3 s with Retry-After: 1",
            times.len()
        );
        for gap in gaps(&times) {
            assert!(gap >= Duration::from_millis(950), "{id}: retried after {gap:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_event_ends_streams_and_is_remembered() {
    let media = TestMedia::start().await;
    media.set_json("final", r#"{"last":true}"#);
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let mut s = subscribe(poller.addr, "final").await;
    let live = next_update(&mut s).await;
    media.set("final", Reply::status(404));
    let ended = until_state(&mut s, State::Ended).await;
    assert_eq!(ended.data, live.data, "the ended update carries the last value");
    let closed = tokio::time::timeout(PATIENCE, s.message()).await.unwrap().unwrap();
    assert!(closed.is_none(), "the stream ends after ENDED");

    let requests = media.count("final");
    let mut again = subscribe(poller.addr, "final").await;
    assert_eq!(next_update(&mut again).await, ended, "a new subscriber gets the ending at once");
    assert!(tokio::time::timeout(PATIENCE, again.message()).await.unwrap().unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(media.count("final"), requests, "an ended event is not polled again");

    media.set("gone", Reply::status(410));
    let mut g = subscribe(poller.addr, "gone").await;
    assert_eq!(next_update(&mut g).await.state, State::Ended as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_event_does_not_slow_the_others() {
    let media = TestMedia::start().await;
    media.set("bad", Reply::status(500).delay(Duration::from_millis(150)));
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "100ms"]).await;
    let _bad = subscribe(poller.addr, "bad").await;
    let mut good = subscribe(poller.addr, "good").await;
    next_update(&mut good).await;
    let before = media.count("good");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let n = media.count("good") - before;
    assert!((8..=12).contains(&n), "healthy event polled {n} times in 1 s at 100 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linger_keeps_a_value_warm_then_stops() {
    let media = TestMedia::start().await;
    let poller =
        start_poller(&["--media-url", &media.template(), "--interval", "100ms", "--linger", "800ms"]).await;
    let mut s = subscribe(poller.addr, "warm").await;
    let first = next_update(&mut s).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = subscribe(poller.addr, "warm").await;
    assert_eq!(next_update(&mut again).await.seq, first.seq, "a reload within --linger finds the warm value");
    drop(again);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stopped = media.count("warm");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(media.count("warm"), stopped, "still polling after --linger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_events_bounds_what_is_watched() {
    let media = TestMedia::start().await;
    let poller = start_poller(&[
        "--media-url",
        &media.template(),
        "--interval",
        "1h",
        "--linger",
        "0s",
        "--max-events",
        "2",
    ])
    .await;
    let mut client = feed_client(poller.addr).await;
    let a = subscribe(poller.addr, "a").await;
    let _b = subscribe(poller.addr, "b").await;
    let err = client.subscribe(SubscribeRequest { event_id: "c".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Another subscriber of a watched event is fine.
    let _a2 = subscribe(poller.addr, "a").await;
    drop(a);
    drop(_a2);
    // Nobody watches "a" any more and --linger is 0: its place is free at
    // once, although its next poll is an hour away.
    let mut c = None;
    for _ in 0..50 {
        match client.subscribe(SubscribeRequest { event_id: "c".into() }).await {
            Ok(r) => {
                c = Some(r.into_inner());
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(next_update(&mut c.expect("room for \"c\" after \"a\" was left")).await.data.contains("c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_with_unavailable_and_returns() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let addr = poller.addr;
    let mut s = subscribe(addr, "bye").await;
    next_update(&mut s).await;
    let stopping = tokio::spawn(poller.stop());
    let status = loop {
        match tokio::time::timeout(PATIENCE, s.message()).await.expect("stream ends") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    stopping.await.unwrap().expect("run returns Ok");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}

/// An edge that reconnects resubscribes all its events at once, on one
/// connection. h2 closes a connection holding too many small unread DATA
/// frames (its budget is half the connection window), so the poller must
/// offer a window that fits such a burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_subscribes_on_one_connection_is_accepted() {
    let media = TestMedia::start().await;
    let poller =
        start_poller(&["--media-url", &media.template(), "--interval", "1h", "--max-inflight", "256"]).await;
    let client = feed_client(poller.addr).await;
    // Far beyond what h2's default window admits, while staying quick on a
    // loaded 2-core CI machine.
    let n = 5000;
    let streams = futures_util::future::join_all((0..n).map(|i| {
        let mut c = client.clone();
        async move { c.subscribe(SubscribeRequest { event_id: format!("burst-{i}") }).await }
    }))
    .await;
    let mut opened = Vec::new();
    for (i, s) in streams.into_iter().enumerate() {
        opened.push(s.unwrap_or_else(|e| panic!("subscribe {i} of a burst failed: {e}")).into_inner());
    }
    for mut s in opened {
        next_update(&mut s).await;
    }
    assert_eq!(media.total(), n);
}

/// A health watcher (an edge, grpcurl, a mesh) sees NOT_SERVING when the
/// poller drains, then its stream ends, so it does not hold the drain until
/// `--shutdown-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watchers_see_not_serving_and_do_not_hold_the_drain() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--shutdown-timeout", "60s"]).await;
    let channel = tonic::transport::Endpoint::from_shared(poller.url()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest { service: "livepush.v1.LiveFeed".into() })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    // Within PATIENCE (10 s), far below the 60 s shutdown timeout.
    poller.stop().await.expect("the poller stops promptly although a watch was open");
    let mut seen = Vec::new();
    while let Ok(Some(m)) = watch.message().await {
        seen.push(m.status);
    }
    assert_eq!(seen, [ServingStatus::NotServing as i32], "NOT_SERVING, then the end of the stream");
}
