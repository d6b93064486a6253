//! The vertical slice, end to end: a media service, one poller, edges and
//! SSE clients, all on real sockets.

use livepush::proto::{State, SubscribeRequest};
use livepush_tests::{
    PATIENCE, TestMedia, eventually, feed_client, media::Reply, next_update, raw_request, sse::SseClient,
    start_edge, start_poller, subscribe,
};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_two_edges_receive_every_change() {
    let media = TestMedia::start().await;
    media.set_json("match-1", r#"{"v":0}"#);
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let edge_a = start_edge(&["--poller", &poller.url()]).await;
    let edge_b = start_edge(&["--poller", &poller.url()]).await;

    let mut browsers = Vec::new();
    for edge in [&edge_a, &edge_a, &edge_a, &edge_b, &edge_b] {
        let b = SseClient::open(&format!("{}/live/match-1/stream", edge.url())).await;
        assert_eq!(b.status, 200);
        assert_eq!(b.headers["content-type"], "text/event-stream");
        browsers.push(b);
    }

    let mut last_seq = vec![0u64; browsers.len()];
    for v in 0..6 {
        if v > 0 {
            // Pretty-printed upstream JSON arrives compacted to one line.
            media.set_json("match-1", &format!("{{\n  \"v\": {v},\n  \"title\": \"line\\nbreak\"\n}}"));
        }
        for (i, b) in browsers.iter_mut().enumerate() {
            let event = b.next_message().await;
            let json: serde_json::Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(json["v"], v, "browser {i} skipped or repeated a change: {}", event.data);
            let seq: u64 = event.id.parse().expect("id is the seq");
            assert!(seq > last_seq[i], "seq must increase: {seq} after {}", last_seq[i]);
            last_seq[i] = seq;
            if v > 0 {
                assert_eq!(event.data, format!(r#"{{"v":{v},"title":"line\nbreak"}}"#));
            }
        }
    }
    // Every browser saw the same seq for the same value: one feed, fanned out.
    assert!(last_seq.windows(2).all(|w| w[0] == w[1]), "{last_seq:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_request_per_interval_however_many_subscribers() {
    let media = TestMedia::start().await;
    let poller =
        start_poller(&["--media-url", &media.template(), "--interval", "200ms", "--linger", "0s"]).await;
    let window = Duration::from_millis(2000);

    // One subscriber on "solo", fifty on "crowd", over the same window.
    let solo = subscribe(poller.addr, "solo").await;
    let mut crowd = Vec::new();
    for _ in 0..50 {
        crowd.push(subscribe(poller.addr, "crowd").await);
    }
    // Everyone is subscribed: count over the same window for both.
    let (s0, c0) = (media.count("solo"), media.count("crowd"));
    tokio::time::sleep(window).await;
    let (n_solo, n_crowd) = (media.count("solo") - s0, media.count("crowd") - c0);
    // 2 s at 200 ms is 10 intervals; the bounds leave room for scheduling
    // jitter (±5 % per poll), not for a poll per subscriber.
    for (name, n) in [("solo", n_solo), ("crowd", n_crowd)] {
        assert!((8..=12).contains(&n), "{name}: {n} upstream requests in 2 s at a 200 ms interval");
    }
    assert!(n_solo.abs_diff(n_crowd) <= 2, "solo {n_solo} vs crowd {n_crowd}");

    // Everyone leaves: polling stops (linger is 0).
    drop(solo);
    drop(crowd);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_leave = media.total();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(media.total(), after_leave, "polled after the last subscriber left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_subscriber_gets_the_cached_value_without_a_new_request() {
    let media = TestMedia::start().await;
    media.set_json("cached", r#"{"title":"first"}"#);
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;

    let mut first = subscribe(poller.addr, "cached").await;
    let u1 = next_update(&mut first).await;
    assert_eq!(u1.data, r#"{"title":"first"}"#);
    assert_eq!(u1.state, State::Live as i32);
    assert_eq!(u1.event_id, "cached");
    assert!(u1.fetched_at_unix_ms > 0);
    assert_eq!(media.count("cached"), 1);

    let mut second = subscribe(poller.addr, "cached").await;
    let u2 = next_update(&mut second).await;
    assert_eq!(u2, u1, "the second subscriber gets the cached update itself");

    // Browsers get it at once too, through an edge.
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let mut browser = SseClient::open(&format!("{}/live/cached/stream", edge.url())).await;
    let event = browser.next_message().await;
    assert_eq!(event.data, u1.data);
    assert_eq!(event.id, u1.seq.to_string());
    assert_eq!(media.count("cached"), 1, "cached value cost no new upstream request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_simultaneous_subscribers_cause_one_first_fetch() {
    let media = TestMedia::start().await;
    media.set("burst", Reply::json(r#"{"a":1}"#).delay(Duration::from_millis(300)));
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let client = feed_client(poller.addr).await;
    let subs =
        futures_util::future::join_all(
            (0..40).map(|_| {
                let mut c = client.clone();
                async move {
                    c.subscribe(SubscribeRequest { event_id: "burst".into() }).await.unwrap().into_inner()
                }
            }),
        )
        .await;
    for mut s in subs {
        assert_eq!(next_update(&mut s).await.data, r#"{"a":1}"#);
    }
    assert_eq!(media.count("burst"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_is_not_forwarded() {
    let media = TestMedia::start().await;
    media.set("html", Reply::json("<html>oops</html>"));
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let mut s = subscribe(poller.addr, "html").await;
    let u = next_update(&mut s).await;
    assert_eq!(u.state, State::Stale as i32);
    assert_eq!(u.data, "", "nothing of the bad body is forwarded");

    media.set_json("html", r#"{"ok":true}"#);
    let u = next_update(&mut s).await;
    assert_eq!((u.state, u.data.as_str()), (State::Live as i32, r#"{"ok":true}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_and_health_answer_a_real_grpc_client() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template()]).await;
    let channel = tonic::transport::Endpoint::from_shared(poller.url()).unwrap().connect().await.unwrap();

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "livepush.v1.LiveFeed"] {
        let status =
            health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }

    // v1alpha is what grpcurl 1.8 speaks; v1 is what newer clients try first.
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut client = ServerReflectionClient::new(channel.clone());
        let mut responses =
            client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            responses.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list")
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"livepush.v1.LiveFeed"), "v1alpha: {names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "v1alpha: {names:?}");

        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("livepush.v1.LiveFeed".into())),
        };
        let mut responses =
            client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        let Some(MessageResponse::FileDescriptorResponse(fds)) =
            responses.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected a file descriptor for describe")
        };
        assert!(!fds.file_descriptor_proto.is_empty());
    }
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut client = ServerReflectionClient::new(channel);
        let mut responses =
            client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            responses.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list")
        };
        assert!(list.service.iter().any(|s| s.name == "livepush.v1.LiveFeed"), "v1");
    }
}

/// Ids that must never reach the media service, as raw request paths.
const HOSTILE_PATHS: &[&str] = &[
    "/live/%2e%2e/stream",
    "/live/./stream",
    "/live/..%2F..%2Fadmin/stream",
    "/live/a%2Fb/stream",
    "/live/a%0Ab/stream",
    "/live/a%0D%0Aevent:%20end/stream",
    "/live/a%00b/stream",
    "/live/a%20b/stream",
    "/live/caf%C3%A9/stream",
    "/live/%3Cscript%3E/stream",
    "/live/a%3Fx%3D1/stream",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_event_ids_get_400_and_never_reach_the_media_service() {
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;

    let long = format!("/live/{}/stream", "x".repeat(129));
    for path in HOSTILE_PATHS.iter().copied().chain([long.as_str()]) {
        let (status, body) = raw_request(
            edge.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body.trim_end().lines().count(), 1, "{path}: one-line reason, got {body:?}");
        assert!(body.starts_with("event id"), "{path}: {body:?}");
    }

    // Straight to the poller, without the edge's check.
    let mut client = feed_client(poller.addr).await;
    for id in ["..", ".", "../x", "a/b", "a\nb", "a%2Fb", "", &"y".repeat(129)] {
        let err = client.subscribe(SubscribeRequest { event_id: id.into() }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{id:?}");
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(media.total(), 0, "hostile ids reached the media service: {:?}", media.seen());

    // The allow-list is not a deny-all: a fine id passes through.
    let mut ok = SseClient::open(&format!("{}/live/fine-1.a_b~c/stream", edge.url())).await;
    assert_eq!(ok.next_message().await.data, r#"{"event":"fine-1.a_b~c"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_opens_with_retry_and_the_latest_value() {
    let media = TestMedia::start().await;
    media.set_json("open", r#"{"x":1}"#);
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let edge = start_edge(&["--poller", &poller.url(), "--retry", "2500ms"]).await;
    let mut first = SseClient::open(&format!("{}/live/open/stream", edge.url())).await;
    first.next_message().await;

    let resp = reqwest::get(format!("{}/live/open/stream", edge.url())).await.unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let mut body = resp.bytes_stream();
    use futures_util::StreamExt;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let chunk = tokio::time::timeout(PATIENCE, body.next()).await.unwrap().unwrap().unwrap();
        seen.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(seen).unwrap();
    assert!(text.starts_with("retry: 2500\n\n"), "{text:?}");
    assert!(text.contains("data: {\"x\":1}\n"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_closes_its_upstream_stream_when_the_last_browser_leaves() {
    let media = TestMedia::start().await;
    let poller =
        start_poller(&["--media-url", &media.template(), "--interval", "100ms", "--linger", "0s"]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let url = format!("{}/live/leave/stream", edge.url());
    let mut a = SseClient::open(&url).await;
    let mut b = SseClient::open(&url).await;
    a.next_message().await;
    b.next_message().await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = media.count("leave");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(media.count("leave") > before, "one browser still watches: polling goes on");
    drop(b);
    eventually("polling to stop after the last browser left", || {
        let n = media.count("leave");
        std::thread::sleep(Duration::from_millis(400));
        media.count("leave") == n
    })
    .await;
}
