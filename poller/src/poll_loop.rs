//! The life of one watched event: poll the media service, publish a new
//! `LiveUpdate` only when something changed, back off while it fails, end the
//! stream when the event is over, and stop once nobody watches.
//!
//! The task is handed everything it needs ([`Task`]) and reports how it
//! ended ([`Finished`]); it never asks the registry anything. Whether
//! anyone still watches comes as a count on a `watch` channel the registry
//! keeps: the linger runs here, from the moment that count reaches zero.
//!
//! Polls of one event are strictly sequential (the next one is scheduled after
//! the previous answered), so a slow media service delays polls instead of
//! stacking them. One failing event never affects another: each has its own
//! task and every error is a value here, never a panic.

use crate::{
    batch::{Batcher, Due},
    media_client::{FetchError, Fetched, MediaClient, Validators},
};
use livepush::{
    EventId,
    proto::{LiveUpdate, State},
};
use rand::Rng;
use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The latest value of an event, shared by every subscriber; `None` until the
/// first fetch has answered.
pub type Snapshot = Option<Arc<LiveUpdate>>;

#[derive(Debug, Clone)]
pub struct Settings {
    pub interval: Duration,
    pub linger: Duration,
    pub max_backoff: Duration,
    pub max_events: usize,
    /// Least time between two hint-triggered polls of one event.
    pub min_hint_gap: Duration,
    /// Ids per batch poll, with `--media-batch-url`.
    pub batch_size: usize,
}

/// What a hint asks of an event's poll task.
#[derive(Debug)]
pub enum Hint {
    /// Poll now (coalesced by the task).
    Poll,
    /// Publish this document (compacted, with its fingerprint) now.
    Publish { data: String, fingerprint: u128 },
}

/// The hints waiting for a poll task.
#[derive(Default)]
pub(crate) struct Control {
    notify: Notify,
    pending: Mutex<Pending>,
}

#[derive(Default)]
pub(crate) struct Pending {
    pub poll: bool,
    pub data: Option<(String, u128)>,
}

impl Control {
    /// Hands `hint` to the task: the latest document replaces an earlier
    /// one, and a poll asked for while one is already asked is coalesced.
    pub(crate) fn offer(&self, hint: Hint) {
        let mut pending = livepush::sync::lock(&self.pending, "event hints");
        match hint {
            Hint::Poll => {
                if std::mem::replace(&mut pending.poll, true) {
                    // The task has not taken the previous one yet.
                    livepush::metrics::poller().hints.coalesced.increment(1);
                }
            }
            Hint::Publish { data, fingerprint } => pending.data = Some((data, fingerprint)),
        }
        drop(pending);
        self.notify.notify_one();
    }

    pub(crate) async fn notified(&self) {
        self.notify.notified().await
    }

    /// What is waiting, leaving nothing.
    pub(crate) fn take(&self) -> Pending {
        std::mem::take(&mut *livepush::sync::lock(&self.pending, "event hints"))
    }
}

/// What one event's poll task is given.
pub(crate) struct Task {
    pub id: EventId,
    /// Tells this event's entry (and batch membership) from a later one.
    pub generation: u64,
    /// Where the event's latest update goes.
    pub tx: watch::Sender<Snapshot>,
    /// Hints and publishes.
    pub control: Arc<Control>,
    /// How many subscribe now (kept by the registry).
    pub interest: watch::Receiver<usize>,
    pub client: MediaClient,
    pub batcher: Option<Batcher>,
    pub settings: Settings,
    pub shutdown: CancellationToken,
}

/// How a poll task ended.
#[derive(Debug)]
pub(crate) enum Finished {
    /// The media service says the event is over; its final update.
    Ended(Arc<LiveUpdate>),
    /// Nobody watched for the linger time.
    Idle,
    /// Shutdown.
    Stopped,
}

pub(crate) async fn run(task: Task) -> Finished {
    let Task { id, generation, tx, control, interest, client, batcher, settings, shutdown } = task;
    let mut feed = Feed {
        id: id.clone(),
        tx,
        seq: seq_base(SystemTime::now()),
        data: String::new(),
        fingerprint: None,
        state: State::Unspecified,
    };
    let _membership = batcher.as_ref().map(|b| b.join(&id, generation));
    // One future for the task's life: the linger counts from the moment the
    // last subscriber left, whatever polls and hints happen meanwhile.
    let linger = linger_over(interest, settings.linger);
    tokio::pin!(linger);
    let poller = Poller { client: &client, batcher: batcher.as_ref(), id: &id, generation };
    let mut validators = Validators::default();
    let mut failures: u32 = 0;
    let mut hints = Hints::new(settings.min_hint_gap);
    // The first poll happens at once (a subscriber is waiting); the next one
    // lands anywhere in the following interval, so events subscribed together
    // (an edge reconnecting with all its events) do not poll in lockstep for
    // the rest of their lives. Later polls get a little jitter. (Batched
    // events keep their round's phase instead.)
    let mut first = true;
    let mut due = Due::Now;
    // When a document was last published directly: a poll that went out
    // before it may bring the older document back, and must not.
    let mut published_at: Option<Instant> = None;
    debug!(event_id = %id, "polling started");

    let finished = 'polling: loop {
        // Wait for the poll's verdict; meanwhile, hints and publishes.
        let (started, result) = {
            let poll = poller.poll(&validators, due);
            tokio::pin!(poll);
            loop {
                // In this order: the poll is polled (so a batched one is
                // registered with the batcher) before a hint can bring it
                // forward.
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break 'polling Finished::Stopped,
                    _ = &mut linger => break 'polling Finished::Idle,
                    r = &mut poll => break r,
                    _ = control.notified() => {
                        let pending = control.take();
                        if let Some(data) = pending.data {
                            livepush::metrics::poller().hints.published.increment(1);
                            feed.publish(State::Live, Some(data));
                            published_at = Some(Instant::now());
                        }
                        if pending.poll {
                            hints.request();
                        }
                    }
                    _ = hints.ready() => {
                        // A hint's poll, now: bring the pending poll forward, or
                        // poll again after the one in flight.
                        let brought = match &batcher {
                            Some(b) => b.expedite(&id, generation),
                            None if !in_flight(due) => {
                                due = Due::Now;
                                poll.set(poller.poll(&validators, due));
                                true
                            }
                            None => false,
                        };
                        hints.fired(brought);
                    }
                }
            }
        };
        let interval = match (&batcher, std::mem::take(&mut first)) {
            (None, true) => spread(settings.interval),
            (None, false) => jitter(settings.interval, 0.05),
            (Some(_), true) => settings.interval / 2,
            (Some(_), false) => Duration::ZERO,
        };
        let delay = match result {
            // Asked before the last direct publish: older than what
            // subscribers have. The media service answered, though.
            Ok(Fetched::Json { .. }) if published_at.is_some_and(|at| started <= at) => {
                recovered(&id, &mut failures);
                feed.publish(State::Live, None);
                interval
            }
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
                break Finished::Ended(feed.publish(State::Ended, None));
            }
            Err(FetchError::Dropped) => break Finished::Stopped,
            Err(err) => {
                failures = failures.saturating_add(1);
                livepush::metrics::poller().backoffs.increment(1);
                log_failure(&id, &err, failures);
                feed.publish(State::Stale, None);
                backoff(settings.interval, settings.max_backoff, failures, err.retry_after())
            }
        };
        due = Due::From(started + delay);
        hints.answered();
    };
    debug!(event_id = %id, how = ?finished, "polling stopped");
    finished
}

/// Whether the poll due as `due` has begun (a poll waiting for its time
/// can still be brought forward).
fn in_flight(due: Due) -> bool {
    match due {
        Due::Now => true,
        Due::From(at) => Instant::now() >= at,
    }
}

/// How one event's polls are made: alone, or in batches.
struct Poller<'a> {
    client: &'a MediaClient,
    batcher: Option<&'a Batcher>,
    id: &'a EventId,
    generation: u64,
}

impl Poller<'_> {
    /// The next poll, once `due`: its start and its verdict.
    async fn poll(&self, validators: &Validators, due: Due) -> (Instant, Result<Fetched, FetchError>) {
        match self.batcher {
            Some(batcher) => batcher.poll(self.id, self.generation, due).await,
            None => {
                if let Due::From(at) = due {
                    tokio::time::sleep_until(at).await;
                }
                let started = Instant::now();
                (started, self.client.fetch(self.id, validators).await)
            }
        }
    }
}

/// Resolves once the event has had no subscriber for `linger` (or the
/// registry dropped its entry).
async fn linger_over(mut interest: watch::Receiver<usize>, linger: Duration) {
    loop {
        if interest.wait_for(|n| *n == 0).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(linger) => return,
            back = interest.wait_for(|n| *n > 0) => if back.is_err() { return },
        }
    }
}

/// Change hints of one event, coalesced: at most one hint-triggered poll
/// per `--min-hint-gap`, and never two in flight (a hint during a poll asks
/// for one more poll after it; more hints meanwhile add nothing). Counted in
/// `livepush_poller_hints_coalesced_total` when they cause no poll.
struct Hints {
    gap: Duration,
    /// When the last hint-triggered poll was asked for.
    last: Option<Instant>,
    /// A hint is waiting for its poll.
    wanted: bool,
    /// A hint came during the poll in flight: poll once more after it.
    again: bool,
}

impl Hints {
    fn new(gap: Duration) -> Self {
        Self { gap, last: None, wanted: false, again: false }
    }

    /// A hint arrived.
    fn request(&mut self) {
        if self.wanted || self.again {
            livepush::metrics::poller().hints.coalesced.increment(1);
        } else {
            self.wanted = true;
        }
    }

    /// Resolves when a wanted hint's poll may go.
    async fn ready(&self) {
        if !self.wanted {
            return std::future::pending().await;
        }
        if let Some(last) = self.last {
            tokio::time::sleep_until(last + self.gap).await;
        }
    }

    /// The hint's poll was brought forward (`true`), or one is in flight and
    /// another follows it.
    fn fired(&mut self, brought: bool) {
        self.wanted = false;
        if brought {
            self.last = Some(Instant::now());
        } else {
            self.again = true;
        }
    }

    /// A poll answered: a hint that came during it wants another.
    fn answered(&mut self) {
        if std::mem::take(&mut self.again) {
            self.wanted = true;
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
