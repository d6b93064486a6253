//! `/readyz`: whether this edge should receive browsers. It is ready while at
//! least one poller is live (its standard health service reports
//! `livepush.v1.LiveFeed` as SERVING, see [`crate::upstream::pollers`]) and the edge is
//! not draining; load balancers stop sending browsers to an
//! edge that cannot reach a poller or is shutting down.

use crate::upstream::pollers::Live;
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<Flags>,
}

#[derive(Default)]
struct Flags {
    poller_serving: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    pub fn check(&self) -> Result<(), &'static str> {
        if self.inner.draining.load(Ordering::Relaxed) {
            return Err("draining");
        }
        if !self.inner.poller_serving.load(Ordering::Relaxed) {
            return Err("poller not reachable");
        }
        Ok(())
    }

    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Follows the live pollers until `stop`: ready while at least one is.
    pub async fn follow(self, mut live: watch::Receiver<Live>, stop: CancellationToken) {
        loop {
            let serving = !live.borrow_and_update().is_empty();
            let was = self.inner.poller_serving.swap(serving, Ordering::Relaxed);
            match (was, serving) {
                (false, true) => info!("a poller is serving; ready"),
                (true, false) => warn!("no poller serving; not ready"),
                _ => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = live.changed() => if changed.is_err() { return },
            }
        }
    }
}
