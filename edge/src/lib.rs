//! The livepush edge: an HTTP server that browsers reach with `EventSource`.
//!
//! Browsers open `GET /live/{event_id}/stream`; [`feeds`] holds one upstream
//! `LiveFeed/Subscribe` stream per watched event and [`stream`] writes each
//! update, encoded once by [`sse`], to every browser watching it.

pub mod config;
pub mod feeds;
pub mod routes;
pub mod sse;
pub mod stream;

pub use config::Config;

use feeds::Feeds;
use routes::AppState;
use std::{future::Future, time::Duration};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{info, warn};

/// Serves the edge on `listener` until `shutdown` completes, then closes the
/// browser streams and returns within `config.shutdown_timeout`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let channel = Endpoint::from_shared(config.poller.clone())?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        // Lazy: the edge starts (and browsers connect) before the poller is
        // reachable; the channel reconnects on its own.
        .connect_lazy();
    let feeds = Feeds::new(channel, stop.clone());
    let state = AppState {
        feeds: feeds.clone(),
        retry: config.retry,
        keepalive: config.keepalive,
        shutdown: stop.clone(),
    };
    let addr = listener.local_addr()?;
    info!(%addr, poller = %config.poller, "edge listening");

    let stopping = stop.clone();
    let graceful = async move {
        shutdown.await;
        info!("draining");
        stopping.cancel();
    };
    let server = axum::serve(listener, routes::app(state)).with_graceful_shutdown(graceful);
    let stopped = stop.clone();
    let deadline = async move {
        stopped.cancelled().await;
        tokio::time::sleep(config.shutdown_timeout).await;
    };
    tokio::select! {
        result = server => result?,
        () = deadline => warn!(timeout = ?config.shutdown_timeout, "connections still open at the shutdown deadline; closing them"),
    }
    feeds.drain(Duration::from_secs(1)).await;
    info!("edge stopped");
    Ok(())
}
