//! The edge's heartbeat reporter: one `Presence/ReportHeartbeats` call per
//! interval carrying everyone who watched through this edge, instead of one
//! request per viewer. The answer brings the cluster-wide viewer counts of
//! those events, which [`Feeds`] pushes to browsers as `presence` events.
//!
//! While the poller is unreachable nothing queues: each attempt sends the
//! current state, rebuilt from the open streams.

use crate::{feeds::Feeds, viewers::Viewers};
use livepush::proto::{HeartbeatBatch, presence_client::PresenceClient};
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

pub struct Reporter {
    pub viewers: Viewers,
    pub feeds: Feeds,
    pub client: PresenceClient<Channel>,
    pub edge_id: String,
    pub interval: Duration,
}

impl Reporter {
    /// Reports every interval until `stop`, then once more with no viewers so
    /// the poller forgets this edge's viewers at once instead of after three
    /// silent intervals.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut ticker = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let events = self.viewers.batch();
            match self.send(events).await {
                Ok(presence) => {
                    self.viewers.reported();
                    for p in presence {
                        self.feeds.set_viewers(&p.event_id, p.viewers);
                    }
                    if std::mem::take(&mut failing) {
                        info!("heartbeat reports accepted again");
                    }
                }
                Err(status) if !failing => {
                    failing = true;
                    warn!(%status, "heartbeat report failed; will send the current state next interval");
                }
                Err(status) => debug!(%status, "heartbeat report failed again"),
            }
        }
        let farewell = tokio::time::timeout(Duration::from_secs(1), self.send(Vec::new())).await;
        debug!(ok = matches!(farewell, Ok(Ok(_))), "final empty heartbeat report");
    }

    async fn send(
        &mut self,
        events: Vec<livepush::proto::EventViewers>,
    ) -> Result<Vec<livepush::proto::EventPresence>, tonic::Status> {
        let batch = HeartbeatBatch {
            edge_id: self.edge_id.clone(),
            interval_ms: self.interval.as_millis().min(u32::MAX as u128) as u32,
            events,
        };
        let mut request = tonic::Request::new(batch);
        request.set_timeout(self.interval.max(Duration::from_secs(1)));
        Ok(self.client.report_heartbeats(request).await?.into_inner().presence)
    }
}
