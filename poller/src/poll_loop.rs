//! The life of one watched event: poll the media service, publish a new
//! `LiveUpdate` only when something changed, back off while it fails, end the
//! stream when the event is over, and stop once nobody watches.
//!
//! Polls of one event are strictly sequential (the next one is scheduled after
//! the previous answered), so a slow media service delays polls instead of
//! stacking them. One failing event never affects another: each has its own
//! task and every error is a value here, never a panic.

use crate::{
    media_client::{FetchError, Fetched, Validators},
    registry::{Lingering, Registry, Snapshot},
};
use livepush::{
    EventId,
    proto::{LiveUpdate, State},
};
use rand::Rng;
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub(crate) async fn run(
    registry: Registry,
    id: EventId,
    generation: u64,
    tx: watch::Sender<Snapshot>,
    idle: Arc<Notify>,
) {
    let mut feed = Feed {
        id: id.clone(),
        tx,
        seq: seq_base(SystemTime::now()),
        data: String::new(),
        fingerprint: None,
        state: State::Unspecified,
    };
    let client = registry.client().clone();
    let settings = registry.settings().clone();
    let shutdown = registry.shutdown_token().clone();
    let mut validators = Validators::default();
    let mut failures: u32 = 0;
    // The first poll happens at once (a subscriber is waiting); the next one
    // lands anywhere in the following interval, so events subscribed together
    // (an edge reconnecting with all its events) do not poll in lockstep for
    // the rest of their lives. Later polls get a little jitter.
    let mut first = true;
    debug!(event_id = %id, "polling started");

    while registry.keep_polling(&id, generation) {
        let started = Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = client.fetch(&id, &validators) => r,
        };
        let interval = if std::mem::take(&mut first) {
            spread(settings.interval)
        } else {
            jitter(settings.interval, 0.05)
        };
        let delay = match result {
            Ok(Fetched::Json { data, fingerprint, validators: v }) => {
                validators = v;
                recovered(&id, &mut failures);
                feed.publish(State::Live, Some((data, fingerprint)));
                interval
            }
            Ok(Fetched::NotModified) => {
                recovered(&id, &mut failures);
                feed.publish(State::Live, None);
                interval
            }
            Ok(Fetched::Ended(status)) => {
                info!(event_id = %id, %status, "event ended");
                let last = feed.publish(State::Ended, None);
                registry.finish_ended(&id, generation, last);
                return;
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                livepush::metrics::poller().backoffs.increment(1);
                log_failure(&id, &err, failures);
                feed.publish(State::Stale, None);
                backoff(settings.interval, settings.max_backoff, failures, err.retry_after())
            }
        };
        if !wait(&registry, &id, generation, started + delay, &idle, &shutdown).await {
            break;
        }
    }
    registry.forget(&id, generation);
    debug!(event_id = %id, "polling stopped");
}

/// Sleeps until `poll_at`; returns `false` when polling must stop first:
/// shutdown, or the linger time after the last subscriber left runs out
/// before `poll_at` (the registry wakes us through `idle` when the last one
/// leaves, so an abandoned event is dropped on time even with a long
/// interval).
async fn wait(
    registry: &Registry,
    id: &EventId,
    generation: u64,
    poll_at: Instant,
    idle: &Notify,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        let wake_at = match registry.linger_ends(id, generation) {
            Lingering::Watched => poll_at,
            Lingering::Until(end) => Instant::from_std(end).min(poll_at),
            Lingering::Gone => return false,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = idle.notified() => continue,
            _ = tokio::time::sleep_until(wake_at) => {}
        }
        if Instant::now() >= poll_at {
            return true;
        }
        if !registry.keep_polling(id, generation) {
            return false;
        }
    }
}

/// The event's published state; `seq` moves exactly when the data's value
/// (its fingerprint: key order and whitespace do not count) or `state`
/// changes.
struct Feed {
    id: EventId,
    tx: watch::Sender<Snapshot>,
    seq: u64,
    data: String,
    fingerprint: Option<u128>,
    state: State,
}

impl Feed {
    /// Publishes `state` with new `data` and its fingerprint (or the current
    /// data when `None`) if either differs from what subscribers have;
    /// returns the latest update.
    fn publish(&mut self, state: State, data: Option<(String, u128)>) -> Arc<LiveUpdate> {
        let data_changed = data.as_ref().is_some_and(|(_, fp)| Some(*fp) != self.fingerprint);
        if data_changed || state != self.state {
            if let Some((d, fp)) = data.filter(|_| data_changed) {
                self.data = d;
                self.fingerprint = Some(fp);
            }
            self.seq += 1;
            self.state = state;
            let update = LiveUpdate {
                event_id: self.id.to_string(),
                seq: self.seq,
                data: self.data.clone(),
                fetched_at_unix_ms: unix_ms(SystemTime::now()),
                state: state as i32,
            };
            self.tx.send_replace(Some(Arc::new(update)));
            livepush::metrics::poller().updates_published.increment(1);
        }
        self.tx.borrow().clone().expect("published at least once above")
    }
}

fn recovered(id: &EventId, failures: &mut u32) {
    if *failures > 0 {
        info!(event_id = %id, after = *failures, "media service answers again");
        *failures = 0;
    }
}

/// Logs the first failure of a run loudly and the repeats quietly, so a dead
/// media service does not flood the log.
fn log_failure(id: &EventId, err: &FetchError, failures: u32) {
    if failures == 1 {
        warn!(event_id = %id, error = %err, "poll failed; keeping the last good value");
    } else {
        debug!(event_id = %id, error = %err, failures, "poll failed again");
    }
}

/// Wait before retrying after `failures` consecutive failures: the interval
/// doubled per failure, with jitter, capped at `max`, but never shorter than
/// what the media service asked for with `Retry-After`.
pub(crate) fn backoff(
    interval: Duration,
    max: Duration,
    failures: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = interval.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let wait = jitter(exp.min(max), 0.2).min(max);
    wait.max(retry_after.unwrap_or_default())
}

/// A random point in `[d/2, 3d/2)`: spreads the phase of an event's polls
/// over a whole interval while keeping one poll per interval on average.
fn spread(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..1.5))
}

/// `d` scaled by a random factor in `[1 - spread, 1 + spread]`, so events
/// polled at the same moment drift apart instead of hitting the media service
/// in bursts.
pub(crate) fn jitter(d: Duration, spread: f64) -> Duration {
    d.mul_f64(rand::rng().random_range(1.0 - spread..=1.0 + spread))
}

/// Where a new feed's `seq` starts: the current time in microseconds. A feed
/// changes at most once per poll (at least a millisecond apart), so a feed
/// started later by a restarted or another poller always starts above every
/// `seq` an earlier feed of the event reached, and subscribers can compare
/// `seq` values with `>` across poller restarts and failovers.
fn seq_base(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_until_capped() {
        let i = Duration::from_secs(1);
        let max = Duration::from_secs(30);
        let b = |n| backoff(i, max, n, None);
        assert!(b(1) >= Duration::from_millis(800) && b(1) <= Duration::from_millis(1200));
        assert!(b(3) >= Duration::from_millis(3200) && b(3) <= Duration::from_millis(4800));
        assert!(b(30) <= max && b(30) >= Duration::from_secs(24));
        assert_eq!(backoff(i, max, 1, Some(Duration::from_secs(90))), Duration::from_secs(90));
    }
}
