//! The livepush edge: an HTTP server that browsers reach with `EventSource`.
//!
//! Browsers open `GET /live/{event_id}/stream` ([`routes`]); [`feeds`] holds
//! one upstream `LiveFeed/Subscribe` stream per watched event, with the
//! poller that owns it among the live [`upstream::pollers`], and [`stream`]
//! writes each update, encoded once by [`sse`], to every browser watching it.
//! [`server`] owns the sockets: TLS, HTTP/1.1 and HTTP/2, limits, drain.

pub mod auth;
pub mod config;
pub mod feeds;
pub mod heartbeat;
pub mod lean;
pub mod limits;
pub mod memory;
pub mod multi;
pub mod pulse;
pub mod readiness;
pub mod routes;
pub mod server;
pub mod snapshot;
pub mod sse;
pub mod stream;
pub mod tls;
pub mod upstream;
pub mod viewers;
pub mod write_timeout;

pub use config::Config;

use feeds::Feeds;
use limits::StreamLimits;
use pulse::Pulse;
use readiness::Readiness;
use routes::AppState;
use std::{future::Future, time::Duration};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use upstream::pollers::Pollers;
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
    let auth = auth::Auth::from_config(&config)?;
    if auth.as_ref().is_some_and(|a| a.demo_ttl().is_some()) {
        warn!("--demo-tokens: GET /demo/token mints a watch token for anyone who asks (demos only)");
    }
    raise_open_files_limit(config.max_connections as u64);
    let stop = CancellationToken::new();
    let link = upstream::channels::Link::new(
        config.poller_ca.clone(),
        upstream::token::PollerToken::new(config.poller_token_file.as_ref()),
    );
    let pollers = Pollers::start(config.pollers.clone(), config.poller_resolve_interval, link, stop.clone());
    let feeds = Feeds::new(pollers.clone(), stop.clone());
    let readiness = Readiness::default();
    let follow = tokio::spawn(readiness.clone().follow(pollers.watch(), stop.clone()));
    let viewers = Viewers::default();
    let edge_id = config.edge_id.clone().unwrap_or_else(|| format!("edge-{:08x}", rand::random::<u32>()));
    let reporter = heartbeat::Reporter {
        viewers: viewers.clone(),
        feeds: feeds.clone(),
        pollers: pollers.clone(),
        edge_id: edge_id.clone(),
        interval: config.heartbeat_interval,
    };
    let limits = StreamLimits::new(config.max_connections as usize, config.max_per_client as usize);
    let trimming = tokio::spawn(memory::trim_after_crowds(limits.clone(), feeds.clone(), stop.clone()));
    let state = AppState {
        feeds: feeds.clone(),
        limits,
        readiness: readiness.clone(),
        viewers,
        pulse: Pulse::start(config.keepalive, config.retry, config.drain_spread, stop.clone()),
        auth,
        max_events_per_stream: config.max_events_per_stream.into(),
    };
    // --admin-listen: probes and metrics on their own address, served until
    // the drain is over (readiness answers 503 meanwhile).
    let admin_stop = CancellationToken::new();
    // However `run` ends, the admin server ends with it.
    let _admin_on_exit = admin_stop.clone().drop_guard();
    let admin = match config.admin_listen {
        Some(addr) => {
            let admin =
                TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("--admin-listen {addr}: {e}"))?;
            info!(addr = %admin.local_addr()?, "admin endpoints listening");
            let router = routes::admin(state.clone());
            let done = admin_stop.clone().cancelled_owned();
            Some(tokio::spawn(async move { axum::serve(admin, router).with_graceful_shutdown(done).await }))
        }
        None => None,
    };
    let app = routes::app(state, &config.allow_origin, config.admin_listen.is_some());
    let addr = listener.local_addr()?;
    let targets: Vec<String> = config.pollers.iter().map(ToString::to_string).collect();
    info!(%addr, pollers = ?targets, %edge_id, tls = tls.is_some(), "edge listening");

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
    let _ = follow.await;
    let _ = trimming.await;
    admin_stop.cancel();
    if let Some(admin) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
    }
    feeds.drain(Duration::from_secs(1)).await;
    pollers.drain(Duration::from_secs(1)).await;
    info!("edge stopped");
    Ok(())
}

/// Every stream is a socket: raise the soft open-files limit to the hard one
/// (container runtimes often start processes at 1,024) and say so if even
/// that is below `--max-connections`.
fn raise_open_files_limit(max_connections: u64) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections + 64 => warn!(
            open_files = limit,
            max_connections,
            "the open-files limit is below --max-connections; browsers beyond it will be refused"
        ),
        Ok(limit) => debug!(open_files = limit, "open-files limit"),
        Err(e) => warn!(error = %e, "cannot read or raise the open-files limit"),
    }
}
