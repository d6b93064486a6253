//! The edge's heartbeat reporter: one `Presence/ReportHeartbeats` call per
//! interval and poller carrying everyone who watched through this edge,
//! instead of one request per viewer. Each event's viewers go to the poller
//! that owns the event, so one poller sees every edge's viewers of it and
//! counts each viewer once across the cluster. The answer brings the cluster-wide viewer counts of
//! those events, which [`Feeds`] pushes to browsers as `presence` events.
//!
//! While the poller is unreachable nothing queues: each attempt sends the
//! current state, rebuilt from the open streams.

use crate::{
    feeds::Feeds,
    upstream::pollers::{Member, Pollers},
    viewers::Viewers,
};
use livepush::{
    EventId,
    proto::{EventPresence, EventViewers, HeartbeatBatch},
};
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, info, warn};

pub struct Reporter {
    pub viewers: Viewers,
    pub feeds: Feeds,
    pub pollers: Pollers,
    pub edge_id: String,
    pub interval: Duration,
}

impl Reporter {
    /// Reports every interval until `stop`, then once more with no viewers so
    /// the poller forgets this edge's viewers at once instead of after three
    /// silent intervals.
    pub async fn run(self, stop: CancellationToken) {
        let mut ticker = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let (events, epoch) = self.viewers.batch();
            match self.send(events).await {
                Ok(_) => {
                    self.viewers.reported(epoch);
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

    /// Sends every live poller the part of `events` whose streams it serves
    /// (the owner, unless the event is still moving), and an empty part to
    /// the others, so a poller
    /// forgets this edge's viewers of events that moved away. Fails if any
    /// poller did not take its part.
    async fn send(&self, events: Vec<EventViewers>) -> Result<Vec<EventPresence>, Status> {
        let live = self.pollers.live();
        if live.is_empty() {
            return Err(Status::unavailable("no poller is serving"));
        }
        let mut parts: Vec<Vec<EventViewers>> = vec![Vec::new(); live.len()];
        for event in events {
            let Ok(id) = EventId::parse(&event.event_id) else { continue };
            // The poller that serves the event's stream now; it differs from
            // the owner while an event waits to move back to a returning
            // poller, and that one is the poller that polls it.
            let serving = self.feeds.source(&id);
            let serving = serving.and_then(|addr| live.members().iter().position(|m| m.addr == addr));
            if let Some(i) = serving.or_else(|| live.owner_index(&id)) {
                parts[i].push(event);
            }
        }
        let calls = live.members().iter().zip(parts).map(|(member, events)| self.send_to(member, events));
        let mut presence = Vec::new();
        let mut failed = None;
        for result in futures_util::future::join_all(calls).await {
            match result {
                Ok(p) => presence.extend(p),
                Err(status) => failed = Some(status),
            }
        }
        // Counts that did arrive are applied even when another poller failed.
        for p in &presence {
            self.feeds.set_viewers(&p.event_id, p.viewers);
        }
        match failed {
            Some(status) => Err(status),
            None => Ok(presence),
        }
    }

    async fn send_to(
        &self,
        member: &Member,
        events: Vec<EventViewers>,
    ) -> Result<Vec<EventPresence>, Status> {
        let batch = HeartbeatBatch {
            edge_id: self.edge_id.clone(),
            interval_ms: self.interval.as_millis().min(u32::MAX as u128) as u32,
            events,
        };
        let mut request = tonic::Request::new(batch);
        request.set_timeout(self.interval.max(Duration::from_secs(1)));
        let mut client = member.presence.clone();
        let result = client.report_heartbeats(request).await;
        livepush::metrics::edge_heartbeat_report(if result.is_ok() { "ok" } else { "failed" });
        Ok(result?.into_inner().presence)
    }
}
