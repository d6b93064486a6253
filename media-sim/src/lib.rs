//! A simulated media service for the livepush demo, tests and benchmarks.
//!
//! Real media services are slow to set up and impossible to script, yet the
//! poller's behaviour depends on what they answer. This one answers
//! `GET /live/{event_id}` with a JSON document that changes on a fixed
//! timer ([`sim`]), sends ETag / Last-Modified and honours conditional
//! requests so 304s happen for real, and lets events be ended and revived
//! through an admin API ([`routes`]) to exercise the end-of-event path.
//! `GET /batch?ids=a,b,c` answers many events at once (one JSON object keyed
//! by id, `null` for ended ones, one ETag for the whole) for the poller's
//! `--media-batch-url`.

pub mod config;
pub mod routes;
pub mod sim;

pub use config::Config;
pub use routes::app;
pub use sim::Sim;

use std::future::Future;
use tokio::net::TcpListener;
use tracing::info;

/// Serves the simulator on `listener` until `shutdown` completes, then stops
/// accepting and returns once open requests have been answered.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sim = Sim::new(config.change_every, config.stamp);
    for id in config.ended {
        sim.end(id).map_err(|e| anyhow::anyhow!("--ended: {e}"))?;
    }
    let addr = listener.local_addr()?;
    info!(%addr, change_every = ?config.change_every, stamp = config.stamp, "media-sim listening");
    axum::serve(listener, app(sim)).with_graceful_shutdown(shutdown).await?;
    info!("media-sim stopped");
    Ok(())
}
