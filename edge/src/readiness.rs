//! `/readyz`: whether this edge should receive browsers. It is ready while the
//! poller's standard health service reports `livepush.v1.LiveFeed` as SERVING
//! and the edge is not draining; load balancers stop sending browsers to an
//! edge that cannot reach a poller or is shutting down.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tracing::{info, warn};

/// How often the poller's health is checked, and how long a check may take.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

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

    /// Probes the poller until `stop`; the task ends with it.
    pub async fn probe(self, channel: Channel, stop: CancellationToken) {
        let mut client = HealthClient::new(channel);
        let request = || HealthCheckRequest { service: "livepush.v1.LiveFeed".into() };
        loop {
            let serving = matches!(
                tokio::time::timeout(PROBE_TIMEOUT, client.check(request())).await,
                Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
            );
            let was = self.inner.poller_serving.swap(serving, Ordering::Relaxed);
            match (was, serving) {
                (false, true) => info!("poller reachable; ready"),
                (true, false) => warn!("poller not serving; not ready"),
                _ => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PROBE_EVERY) => {}
            }
        }
    }
}
