//! `poller::run` serves `livepush.v1.Presence` next to LiveFeed on the same
//! listener, reports it SERVING, and ends presence watches with UNAVAILABLE on
//! shutdown. (Behaviour in depth is tested in `presence.rs` and in the
//! workspace's end-to-end suite; this only checks the wiring.)

use livepush::proto::{EventViewers, HeartbeatBatch, PresenceRequest, presence_client::PresenceClient};
use poller::Config;
use std::time::Duration;
use tokio::{net::TcpListener, sync::oneshot};
use tokio_stream::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn presence_is_served_on_the_poller_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config::with_media_url("http://127.0.0.1:9/live/{event_id}").unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(poller::run(config, listener, async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut presence = PresenceClient::new(channel.clone());

    let health = HealthClient::new(channel)
        .check(HealthCheckRequest { service: "livepush.v1.Presence".into() })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, ServingStatus::Serving as i32);

    let mut watch =
        presence.watch_presence(PresenceRequest { event_id: "ev".into() }).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().viewers, 0, "the current presence at once");

    let batch = HeartbeatBatch {
        edge_id: "edge-1".into(),
        interval_ms: 1000,
        events: vec![EventViewers {
            event_id: "ev".into(),
            vids: vec!["b".into(), "a".into()],
            anonymous: 1,
        }],
    };
    let ack = presence.report_heartbeats(batch).await.unwrap().into_inner();
    assert_eq!((ack.presence[0].viewers, ack.presence[0].edges), (3, 1));
    assert_eq!(watch.next().await.unwrap().unwrap().viewers, 3);
    let got = presence.get_presence(PresenceRequest { event_id: "ev".into() }).await.unwrap().into_inner();
    assert_eq!(got.vids, ["a", "b"]);

    let bad = HeartbeatBatch { edge_id: "edge/1".into(), interval_ms: 1000, events: vec![] };
    let status = presence.report_heartbeats(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = presence.get_presence(PresenceRequest { event_id: "..".into() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    stop.send(()).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap();
    assert_eq!(end.unwrap().unwrap_err().code(), tonic::Code::Unavailable);
    tokio::time::timeout(Duration::from_secs(15), server).await.unwrap().unwrap().unwrap();
}
