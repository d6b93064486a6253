//! The livepush edge: an HTTP server that browsers reach with `EventSource`.
//!
//! Browsers open `GET /live/{event_id}/stream` ([`routes`]); [`feeds`] holds
//! one upstream `LiveFeed/Subscribe` stream per watched event and [`stream`]
//! writes each update, encoded once by [`sse`], to every browser watching it.
//! [`server`] owns the sockets: TLS, HTTP/1.1 and HTTP/2, limits, drain.

pub mod config;
pub mod feeds;
pub mod heartbeat;
pub mod limits;
pub mod readiness;
pub mod routes;
pub mod server;
pub mod sse;
pub mod stream;
pub mod tls;
pub mod viewers;
pub mod write_timeout;

pub use config::Config;

use feeds::Feeds;
use limits::StreamLimits;
use livepush::proto::presence_client::PresenceClient;
use readiness::Readiness;
use routes::AppState;
use std::{future::Future, time::Duration};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::info;
use viewers::Viewers;

/// Serves the edge on `listener` until `shutdown` completes, then drains:
/// stops accepting, tells every browser to reconnect after a random delay
/// within `--drain-spread`, closes the streams and returns within
/// `--shutdown-timeout`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let stop = CancellationToken::new();
    let channel = Endpoint::from_shared(config.poller.clone())?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        // After a resubscription every event's first value arrives at once as
        // small DATA frames; h2 closes a connection holding more of them
        // than half its window allows, so offer a large one (credit, not
        // memory allocated up front).
        .initial_connection_window_size(16 << 20)
        // Lazy: the edge starts (and browsers connect) before the poller is
        // reachable; the channel reconnects on its own.
        .connect_lazy();
    let feeds = Feeds::new(channel.clone(), stop.clone());
    let readiness = Readiness::default();
    let probe = tokio::spawn(readiness.clone().probe(channel.clone(), stop.clone()));
    let viewers = Viewers::default();
    let edge_id = config.edge_id.clone().unwrap_or_else(|| format!("edge-{:08x}", rand::random::<u32>()));
    let reporter = heartbeat::Reporter {
        viewers: viewers.clone(),
        feeds: feeds.clone(),
        client: PresenceClient::new(channel),
        edge_id: edge_id.clone(),
        interval: config.heartbeat_interval,
    };
    let state = AppState {
        feeds: feeds.clone(),
        limits: StreamLimits::new(config.max_connections as usize, config.max_per_client as usize),
        readiness: readiness.clone(),
        viewers,
        retry: config.retry,
        keepalive: config.keepalive,
        drain_spread: config.drain_spread,
        shutdown: stop.clone(),
    };
    let app = routes::app(state, &config.allow_origin);
    let addr = listener.local_addr()?;
    info!(%addr, poller = %config.poller, %edge_id, tls = tls.is_some(), "edge listening");

    let opts = server::ServerOptions {
        tls,
        write_timeout: config.write_timeout,
        max_connections: config.max_connections as usize,
    };
    let serving = server::serve(listener, app, opts, stop.clone(), config.shutdown_timeout);
    let stopping = stop.clone();
    let signal = async move {
        shutdown.await;
        info!(watched_events = feeds.watched_events(), "draining");
        readiness.set_draining();
        stopping.cancel();
        feeds
    };
    // The reporter is part of this future, not a detached task: whatever
    // ends the edge ends its reports, and the poller expires its viewers.
    let (_, feeds, ()) = tokio::join!(serving, signal, reporter.run(stop.clone()));
    let _ = probe.await;
    feeds.drain(Duration::from_secs(1)).await;
    info!("edge stopped");
    Ok(())
}
