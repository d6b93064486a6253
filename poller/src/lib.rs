//! The livepush poller: the only component that talks to the media service.
//!
//! Subscribers (edges, internal services) call `livepush.v1.LiveFeed/Subscribe`;
//! the [`registry`] starts one [`poll_loop`] per watched event and fans its
//! latest value out to every subscriber. `livepush.v1.Presence` merges the
//! edges' viewer batches in the [`presence`] store (and, with
//! `--heartbeat-url`, [`presence::forward`] posts the result on). Alongside
//! them the server offers the standard gRPC health service and server
//! reflection (v1 and v1alpha), and on the same port, over HTTP/1.1 or h2c,
//! `GET /metrics` for Prometheus.
//!
//! The port speaks TLS with `--tls-cert`/`--tls-key` ([`tls_listener`]), and
//! with `--clients-file` ([`clients`]) LiveFeed and Presence calls need a
//! bearer token whose role allows them ([`access`]); per-client caps
//! ([`client_streams`]) bound what one client holds open.

pub mod access;
pub mod batch;
pub mod client_streams;
pub mod clients;
pub mod config;
pub mod connection_streams;
pub mod headers;
pub mod media_client;
pub mod media_url;
pub mod peers;
mod poll_loop;
pub mod presence;
pub mod publish;
pub mod registry;
pub mod service;
pub mod tls;
pub mod tls_listener;
mod watch_stream;

pub use config::Config;

use access::AccessLayer;
use client_streams::ClientStreams;
use clients::Clients;
use headers::RequestHeaders;
use livepush::proto::{
    FILE_DESCRIPTOR_SET, live_feed_server::LiveFeedServer, presence_server::PresenceServer,
};
use media_client::MediaClient;
use peers::Peers;
use presence::PresenceStore;
use presence::forward::{ForwardTo, PresenceForwarder};
use presence::service::PresenceService;
use publish::{Forwarding, Publisher};
use registry::{Registry, Settings};
use service::LiveFeedService;
use std::{future::Future, pin::Pin, time::Duration};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::service::Routes;
use tracing::{info, warn};

/// Interval of HTTP/2 PING frames on subscriber connections: finds dead peers
/// (and keeps idle connections alive through proxies) while a feed is silent.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(20);

/// HTTP/2 connection window offered to subscribers. h2 closes a connection
/// (GOAWAY ENHANCE_YOUR_CALM) that holds more small unread DATA frames than
/// half this window allows, at ~240 bytes each; every Subscribe request is
/// one such frame, and an edge resubscribing all its events after a
/// reconnect sends thousands at once. 16 MiB admits ~35,000. It is flow
/// control credit, not memory allocated up front.
const HTTP2_CONNECTION_WINDOW: u32 = 16 << 20;

/// Streams a client may reset before the server accepted them, per
/// connection, before the connection is dropped (h2's default is 20).
const MAX_PENDING_ACCEPT_RESETS: usize = 1_024;

/// Largest Presence request decoded (tonic's default is 4 MiB). An edge holds
/// at most `--max-connections` (18,000 by default) streams, so its batch is
/// under 4 MB even with maximum-length ids; 100,000 events with 128-byte ids
/// (the proto's event limit) take ~14 MB. A batch at every per-field limit at
/// once (1M vids of 64 bytes, ~66 MB) is not admitted: tonic buffers a whole
/// message before we see it, and this bounds that per request. Larger
/// messages are refused with OUT_OF_RANGE.
const MAX_PRESENCE_MESSAGE: usize = 16 << 20;

/// Serves the poller on `listener` until `shutdown` completes, then drains:
/// stops accepting, ends open streams with UNAVAILABLE so subscribers move
/// elsewhere, and returns within `config.shutdown_timeout`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Installs the recorder before any metric handle is taken (so none is a
    // no-op) and registers every poller metric, so a scrape shows them all
    // from the start.
    livepush::metrics::poller();
    let stop = CancellationToken::new();
    // However `run` ends (an early server error included), background tasks
    // stop with it.
    let _stop_on_exit = stop.clone().drop_guard();
    let identity = config.media_client_cert.as_ref().zip(config.media_client_key.as_ref());
    let tls = tls::client_config(config.media_ca.as_ref(), identity)?;
    let http = media_client::http_client(tls, config.media_timeout);
    let server_tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls_listener::acceptor(cert, key)?),
        _ => None,
    };
    let header_tasks = TaskTracker::new();
    let media_headers = RequestHeaders::new(
        "media",
        &config.media_headers,
        config.media_headers_file.as_ref(),
        &header_tasks,
        stop.clone(),
    );
    let heartbeat_headers = if config.heartbeat_headers.is_empty() && config.heartbeat_headers_file.is_none()
    {
        media_headers.clone()
    } else {
        RequestHeaders::new(
            "heartbeat",
            &config.heartbeat_headers,
            config.heartbeat_headers_file.as_ref(),
            &header_tasks,
            stop.clone(),
        )
    };
    // The clients file is watched like the headers files.
    let clients = config.clients_file.as_ref().map(|file| Clients::watch(file, &header_tasks, stop.clone()));
    let client = MediaClient::new(
        http.clone(),
        media_headers,
        config.media_url.clone(),
        config.media_timeout,
        config.max_body,
        config.max_inflight as usize,
    )
    .with_batch_url(config.media_batch_url.clone());
    let settings = Settings {
        interval: config.interval,
        linger: config.linger,
        max_backoff: config.max_backoff,
        max_events: config.max_events as usize,
        min_hint_gap: config.min_hint_gap,
        batch_size: config.batch_size as usize,
    };
    let registry = Registry::new(client, settings, stop.clone());
    let peers =
        Peers::start(config.peers.clone(), config.peers_resolve_interval, &header_tasks, stop.clone());
    let publisher = Publisher::new(
        registry.clone(),
        config.publish_token_file.as_ref(),
        Forwarding { peers, http: http.clone(), timeout: config.media_timeout },
        config.max_body,
        &header_tasks,
        stop.clone(),
    );
    header_tasks.close();

    let presence = PresenceStore::new(stop.clone());
    let presence_tasks = TaskTracker::new();
    presence_tasks.spawn(presence.clone().sweep());
    if let Some(url) = config.heartbeat_url.clone() {
        let to = ForwardTo {
            http,
            headers: heartbeat_headers,
            url,
            interval: config.heartbeat_interval,
            timeout: config.media_timeout,
        };
        let forwarder = PresenceForwarder::new(to, presence.clone());
        presence_tasks.spawn(forwarder.run());
    }

    let (mut health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<LiveFeedServer<LiveFeedService>>().await;
    health.set_serving::<PresenceServer<PresenceService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // grpcurl 1.8 only speaks v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // --admin-listen: the health service and /metrics again, in plain h2c
    // and HTTP/1.1 without tokens, for probes; it drains with the rest.
    let admin = match config.admin_listen {
        Some(addr) => {
            let admin =
                TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("--admin-listen {addr}: {e}"))?;
            info!(addr = %admin.local_addr()?, "admin endpoints listening");
            let routes = Routes::new(health_service.clone())
                .into_axum_router()
                .route("/metrics", axum::routing::get(metrics));
            let serving = tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(Routes::from(routes))
                .serve_with_incoming_shutdown(TcpListenerStream::new(admin), stop.clone().cancelled_owned());
            Some(tokio::spawn(serving))
        }
        None => None,
    };

    // The gRPC services and `GET /metrics` share the port: HTTP/1.1 is
    // accepted next to HTTP/2 (gRPC clients keep using h2c; a scraper speaks
    // HTTP/1.1), and the services are axum routes beside `/metrics`.
    let routes = Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(LiveFeedServer::new(LiveFeedService::new(
            registry.clone(),
            config.max_streams,
            ClientStreams::new(
                "--max-streams-per-client",
                config.max_streams_per_client,
                livepush::metrics::poller().client_limit_refusals.subscribe.clone(),
            ),
            publisher.clone(),
        )))
        .add_service(
            PresenceServer::new(PresenceService::new(
                presence.clone(),
                config.max_presence_vids as usize,
                ClientStreams::new(
                    "--max-watches-per-client",
                    config.max_watches_per_client,
                    livepush::metrics::poller().client_limit_refusals.watch_presence.clone(),
                ),
            ))
            .max_decoding_message_size(MAX_PRESENCE_MESSAGE),
        )
        .into_axum_router()
        .route("/metrics", axum::routing::get(metrics))
        .route("/events/{event_id}/changed", axum::routing::post(publish::changed).with_state(publisher));
    // Tokens and roles, in front of every service (health, reflection and
    // /metrics pass untouched); without a clients file, open as before.
    let routes = match clients.clone() {
        Some(clients) => routes.layer(AccessLayer::new(clients)),
        None => routes,
    };

    let addr = listener.local_addr()?;
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        // --max-streams itself is enforced per connection by the service, so
        // a call beyond it is answered; HTTP/2 allows some more, or the
        // client would queue that call silently (see connection_streams).
        .max_concurrent_streams(Some(config.max_streams.saturating_add(connection_streams::HEADROOM)))
        // Edges cancel a Subscribe as soon as its last browser leaves; a
        // burst of them before the server accepted the streams counts as
        // "remotely reset pending-accept streams", and h2's default of 20
        // drops the whole connection with every other event on it (seen
        // with 500 browsers leaving at once). Subscribers are edges and
        // internal services on the private network, so allow a deliberate
        // multiple of the stream headroom; a rapid-reset flood (CVE-2023-44487)
        // is still cut off beyond it.
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS))
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW))
        .add_routes(Routes::from(routes));
    let (tls, auth) = (server_tls.is_some(), clients.is_some());
    let signal = stop.clone().cancelled_owned();
    // Plain TCP and TLS connections are different types, hence the box.
    let mut server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match server_tls {
            Some(acceptor) => {
                let incoming = tls_listener::incoming(listener, acceptor, stop.clone());
                Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
            }
            None => Box::pin(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)),
        };
    // With --media-batch-url every poll goes there, so that is the URL to show.
    let polls = config.media_batch_url.as_ref().unwrap_or(&config.media_url);
    let (batch_size, publish) =
        (config.media_batch_url.as_ref().map(|_| config.batch_size), config.publish_token_file.is_some());
    info!(%addr, media_url = %polls, ?batch_size, interval = ?config.interval, tls, auth, publish, "poller listening");

    tokio::select! {
        result = &mut server => return Ok(result?),
        () = shutdown => {}
    }
    info!(
        watched_events = registry.watched_events(),
        presence_edges = presence.edges(),
        presence_watched = presence.watched_events(),
        "draining"
    );
    health.set_not_serving::<LiveFeedServer<LiveFeedService>>().await;
    health.set_not_serving::<PresenceServer<PresenceService>>().await;
    // Health/Watch streams never end on their own, and the server's drain
    // waits for every open stream: once watchers have NOT_SERVING (the
    // latest value is delivered before a closed channel ends the stream),
    // forget the statuses so their watch streams end too.
    for service in [
        <LiveFeedServer<LiveFeedService> as tonic::server::NamedService>::NAME,
        <PresenceServer<PresenceService> as tonic::server::NamedService>::NAME,
        "",
    ] {
        health.clear_service_status(service).await;
    }
    stop.cancel();
    match tokio::time::timeout(config.shutdown_timeout, server).await {
        Ok(result) => result?,
        Err(_) => {
            warn!(timeout = ?config.shutdown_timeout, "connections still open at the shutdown deadline; closing them")
        }
    }
    if let Some(admin) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
    }
    registry.drain(Duration::from_secs(1)).await;
    presence_tasks.close();
    if tokio::time::timeout(Duration::from_secs(1), presence_tasks.wait()).await.is_err() {
        warn!("presence tasks still running at the shutdown deadline");
    }
    info!("poller stopped");
    Ok(())
}

/// `GET /metrics`: every metric of this process in the Prometheus text format.
async fn metrics() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, livepush::metrics::CONTENT_TYPE)], livepush::metrics::render())
}
