//! Batch polls (`--media-batch-url`): the watched events are grouped in
//! *rounds* of at most `--batch-size` ids, and each round is one request per
//! interval, the rounds' times spread over the interval. 10,000 events at
//! 100 per batch cost the media service 20 requests a second at 5 s instead
//! of 2,000.
//!
//! Each event's poll task still decides *whether* it wants a poll (its
//! backoff, its linger, its hints: see [`crate::poll_loop`]); this module
//! decides *when* and *with whom*: a task asks for its next poll with a
//! [`Due`] and gets its own verdict back from the batch it went in. A first
//! poll or a hint is urgent: it goes out at once, in a small batch of every
//! id that turned urgent in the same few milliseconds. A round fires with
//! the ids of its members that are waiting and due; a member in backoff, or
//! whose verdict is still in flight, sits the round out.
//!
//! Rounds have a fixed phase, so a member is polled once per interval. A new
//! round goes in the middle of the widest gap between the others; an emptied
//! round is dropped, and a round whose members fit in the other rounds'
//! room is merged into them when it fires, so the number of requests stays
//! at ⌈events / batch size⌉ per interval as events come and go.

use crate::media_client::{Batch, BatchValue, FetchError, Fetched, MediaClient, Validators};
use livepush::EventId;
use reqwest::StatusCode;
use std::{
    collections::{HashMap, VecDeque},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};
use tokio::{
    sync::{Notify, oneshot},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::debug;

/// How long urgent ids are gathered before their batch goes out: events
/// subscribed together (an edge reconnecting) share one request.
const URGENT_GATHER: Duration = Duration::from_millis(5);

/// When an event wants its next poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// At once (a first poll or a hint).
    Now,
    /// With its round's first firing at or after this instant (after a
    /// backoff, or half an interval after a first poll).
    From(Instant),
}

/// A poll's verdict, as the event's task receives it.
pub type Verdict = Result<Fetched, FetchError>;

/// A verdict with the moment its request went out.
type Answer = (Instant, Verdict);

/// The batch scheduler; clones share it.
#[derive(Clone)]
pub struct Batcher {
    inner: Arc<Inner>,
}

struct Inner {
    client: MediaClient,
    interval: Duration,
    size: usize,
    state: Mutex<State>,
    wake: Notify,
    requests: TaskTracker,
}

#[derive(Default)]
struct State {
    members: HashMap<EventId, Member>,
    rounds: HashMap<u64, Round>,
    next_round: u64,
    /// Ids that want a poll at once, oldest first.
    urgent: VecDeque<EventId>,
}

struct Member {
    generation: u64,
    round: u64,
    waiter: Option<Waiter>,
    /// A request holding this id has not answered yet.
    in_flight: bool,
}

struct Waiter {
    from: Instant,
    tx: oneshot::Sender<Answer>,
}

struct Round {
    ids: Vec<EventId>,
    next: Instant,
    /// The last answer's validators, valid for exactly the ids of `key`.
    validators: Validators,
    key: u64,
}

impl Batcher {
    /// Schedules batches of at most `size` ids for `client`, each member
    /// once per `interval`; the scheduler runs until `stop`.
    pub fn start(client: MediaClient, interval: Duration, size: usize, stop: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            client,
            interval,
            size: size.max(1),
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            requests: TaskTracker::new(),
        });
        let this = Self { inner };
        tokio::spawn(this.clone().schedule(stop));
        this
    }

    /// Makes `id` a member (in a round with room); it stays one until the
    /// returned guard is dropped.
    pub fn join(&self, id: &EventId, generation: u64) -> Membership {
        let mut state = self.lock();
        if let Some(old) = state.members.remove(id) {
            // A previous generation of the event still holds its place (its
            // task is just ending): this one takes over.
            remove_from_round(&mut state, old.round, id);
        }
        let round = self.round_with_room(&mut state, Instant::now());
        state.rounds.get_mut(&round).expect("just chosen").ids.push(id.clone());
        state.members.insert(id.clone(), Member { generation, round, waiter: None, in_flight: false });
        Membership { batcher: self.clone(), id: id.clone(), generation }
    }

    /// The verdict of `id`'s next poll, due as `due`, and when its request
    /// went out.
    pub async fn poll(&self, id: &EventId, generation: u64, due: Due) -> (Instant, Verdict) {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.lock();
            let Some(member) = state.members.get_mut(id).filter(|m| m.generation == generation) else {
                return (Instant::now(), Err(FetchError::Dropped));
            };
            let from = match due {
                Due::Now => Instant::now(),
                Due::From(at) => at,
            };
            member.waiter = Some(Waiter { from, tx });
            if due == Due::Now && !member.in_flight {
                state.urgent.push_back(id.clone());
                self.inner.wake.notify_one();
            }
        }
        rx.await.unwrap_or_else(|_| (Instant::now(), Err(FetchError::Dropped)))
    }

    /// Moves `id`'s pending poll forward to now (a hint); `false` when it is
    /// already in flight (the caller polls again after its answer).
    pub fn expedite(&self, id: &EventId, generation: u64) -> bool {
        let mut state = self.lock();
        let Some(member) = state.members.get_mut(id).filter(|m| m.generation == generation) else {
            return false;
        };
        if member.in_flight {
            return false;
        }
        if let Some(waiter) = &mut member.waiter {
            waiter.from = Instant::now();
        }
        state.urgent.push_back(id.clone());
        self.inner.wake.notify_one();
        true
    }

    /// Rounds now (for tests and logs).
    pub fn rounds(&self) -> usize {
        self.lock().rounds.len()
    }

    /// Waits for requests in flight, at most `timeout`.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.inner.requests.close();
        tokio::time::timeout(timeout, self.inner.requests.wait()).await.is_ok()
    }

    async fn schedule(self, stop: CancellationToken) {
        loop {
            let next = self.fire_due(Instant::now());
            let wake = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.inner.wake.notified() => {
                    // Urgent ids: gather the others of the same moment.
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(URGENT_GATHER) => {}
                    }
                }
                _ = wake => {}
            }
        }
        // Pending waiters get `Dropped` as their senders go.
        self.lock().members.values_mut().for_each(|m| m.waiter = None);
    }

    /// Sends every batch due at `now`; returns when the next round fires.
    fn fire_due(&self, now: Instant) -> Option<Instant> {
        let mut state = self.lock();
        let mut batches = Vec::new();
        // Urgent ids first, in batches of at most `size`.
        let mut urgent = Vec::new();
        while let Some(id) = state.urgent.pop_front() {
            if let Some(member) = state.members.get_mut(&id) {
                if member.waiter.is_some() && !member.in_flight && !urgent.contains(&id) {
                    member.in_flight = true;
                    urgent.push(id);
                }
            }
            if urgent.len() == self.inner.size {
                batches.push((None, std::mem::take(&mut urgent)));
            }
        }
        if !urgent.is_empty() {
            batches.push((None, urgent));
        }
        let due: Vec<u64> = state.rounds.iter().filter(|(_, r)| r.next <= now).map(|(k, _)| *k).collect();
        for key in due {
            let State { members, rounds, .. } = &mut *state;
            let round = rounds.get_mut(&key).expect("listed above");
            let mut ids = Vec::new();
            for id in &round.ids {
                let member = members.get_mut(id).expect("round members are members");
                if !member.in_flight && member.waiter.as_ref().is_some_and(|w| w.from <= now) {
                    member.in_flight = true;
                    ids.push(id.clone());
                }
            }
            round.next += self.inner.interval;
            if round.next <= now {
                // Fell behind (a stalled runtime): keep the phase roughly.
                round.next = now + self.inner.interval;
            }
            if !ids.is_empty() {
                batches.push((Some(key), ids));
            }
            self.merge_if_spare(&mut state, key);
        }
        for (round, ids) in batches {
            let validators = round
                .and_then(|k| state.rounds.get(&k))
                .filter(|r| r.key == key_of(&ids))
                .map(|r| r.validators.clone())
                .unwrap_or_default();
            let this = self.clone();
            self.inner.requests.spawn(async move { this.request(round, ids, validators).await });
        }
        state.rounds.values().map(|r| r.next).min()
    }

    async fn request(self, round: Option<u64>, ids: Vec<EventId>, validators: Validators) {
        let started = Instant::now();
        let result = self.inner.client.fetch_batch(&ids, &validators).await;
        let mut state = self.lock();
        let verdicts: Vec<Verdict> = match result {
            Ok(Batch::NotModified) => ids.iter().map(|_| Ok(Fetched::NotModified)).collect(),
            Ok(Batch::Values { values, validators }) => {
                if let Some(r) = round.and_then(|k| state.rounds.get_mut(&k)) {
                    // A 304 later stands for this whole answer: keep its
                    // validators only when every event got a value (a 304
                    // must not turn a missing event's failure into "fresh").
                    let complete =
                        values.iter().all(|v| matches!(v, BatchValue::Json { .. } | BatchValue::Ended));
                    r.key = if complete { key_of(&ids) } else { 0 };
                    r.validators = validators;
                }
                values.into_iter().map(verdict).collect()
            }
            Err(err) => {
                debug!(events = ids.len(), error = %err, "batch poll failed");
                let err = Arc::new(err);
                ids.iter().map(|_| Err(FetchError::Batch(err.clone()))).collect()
            }
        };
        for (id, verdict) in ids.iter().zip(verdicts) {
            if let Some(member) = state.members.get_mut(id) {
                member.in_flight = false;
                if let Some(waiter) = member.waiter.take() {
                    let _ = waiter.tx.send((started, verdict));
                }
            }
        }
    }

    /// A round with room for one more member, created if none has any.
    fn round_with_room(&self, state: &mut State, now: Instant) -> u64 {
        if let Some((key, _)) =
            state.rounds.iter().filter(|(_, r)| r.ids.len() < self.inner.size).min_by_key(|(k, _)| **k)
        {
            return *key;
        }
        let next = now + self.widest_gap(state, now);
        let key = state.next_round;
        state.next_round += 1;
        state.rounds.insert(key, Round { ids: Vec::new(), next, validators: Validators::default(), key: 0 });
        key
    }

    /// Where a new round goes, from now: the middle of the widest gap
    /// between the existing rounds' next firings (half an interval when
    /// there are none).
    fn widest_gap(&self, state: &State, now: Instant) -> Duration {
        let interval = self.inner.interval;
        let mut phases: Vec<Duration> =
            state.rounds.values().map(|r| r.next.saturating_duration_since(now).min(interval)).collect();
        if phases.is_empty() {
            return interval / 2;
        }
        phases.sort_unstable();
        let mut best = (Duration::ZERO, Duration::ZERO);
        for (i, start) in phases.iter().enumerate() {
            // The gap after `start`, up to the next phase (or around).
            let end = phases.get(i + 1).copied().unwrap_or(phases[0] + interval);
            let gap = end.saturating_sub(*start);
            if gap > best.1 {
                best = (*start, gap);
            }
        }
        let middle = best.0 + best.1 / 2;
        if middle >= interval { middle - interval } else { middle }
    }

    /// After round `key` fired: when there are more rounds than the members
    /// need and its members fit in the others' room, they move there and
    /// the round goes.
    fn merge_if_spare(&self, state: &mut State, key: u64) {
        let size = self.inner.size;
        let needed = state.members.len().div_ceil(size).max(1);
        if state.rounds.len() <= needed {
            return;
        }
        let moving = state.rounds[&key].ids.len();
        let room: usize =
            state.rounds.iter().filter(|(k, _)| **k != key).map(|(_, r)| size - r.ids.len().min(size)).sum();
        if moving > room {
            return;
        }
        let round = state.rounds.remove(&key).expect("exists");
        for id in round.ids {
            let (target, r) = state
                .rounds
                .iter_mut()
                .filter(|(_, r)| r.ids.len() < size)
                .min_by_key(|(k, _)| **k)
                .expect("room was counted");
            r.ids.push(id.clone());
            r.key = 0;
            let target = *target;
            if let Some(member) = state.members.get_mut(&id) {
                member.round = target;
            }
        }
    }

    fn leave(&self, id: &EventId, generation: u64) {
        let mut state = self.lock();
        if state.members.get(id).is_some_and(|m| m.generation == generation) {
            let member = state.members.remove(id).expect("just seen");
            remove_from_round(&mut state, member.round, id);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        livepush::sync::lock(&self.inner.state, "batch rounds")
    }
}

fn remove_from_round(state: &mut State, round: u64, id: &EventId) {
    if let Some(r) = state.rounds.get_mut(&round) {
        r.ids.retain(|i| i != id);
        r.key = 0;
        if r.ids.is_empty() {
            state.rounds.remove(&round);
        }
    }
}

/// One event's verdict from its part of a batch answer.
fn verdict(value: BatchValue) -> Verdict {
    match value {
        BatchValue::Json { data, fingerprint } => {
            Ok(Fetched::Json { data, fingerprint, validators: Validators::default() })
        }
        // `null` ends the event as a 404 of its own URL would.
        BatchValue::Ended => Ok(Fetched::Ended(StatusCode::NOT_FOUND)),
        BatchValue::Missing => {
            livepush::metrics::poller().batch_missing.increment(1);
            Err(FetchError::MissingFromBatch)
        }
        BatchValue::TooLarge { limit } => Err(FetchError::TooLarge { limit }),
    }
}

/// Identifies a list of ids (for whole-batch validators: an ETag is only
/// sent back for the very same list).
fn key_of(ids: &[EventId]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ids.hash(&mut h);
    // 0 means "no validators yet".
    h.finish() | 1
}

/// Membership of one event generation; dropping it leaves the rounds.
// Shaped like registry.rs's `SubscriberGuard` on purpose: each gives back
// a place in its own owner when dropped.
pub struct Membership {
    batcher: Batcher,
    id: EventId,
    generation: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.batcher.leave(&self.id, self.generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{headers::RequestHeaders, media_url::MediaUrl};

    fn batcher(size: usize, interval: Duration) -> (Batcher, CancellationToken) {
        // Nothing listens on port 9 of loopback: requests fail fast, and
        // these tests only look at the bookkeeping.
        let client = MediaClient::new(
            reqwest::Client::new(),
            RequestHeaders::none(),
            MediaUrl::parse("http://127.0.0.1:9/live/{event_id}").unwrap(),
            Duration::from_secs(1),
            1 << 20,
            4,
        )
        .with_batch_url(Some(MediaUrl::parse_batch("http://127.0.0.1:9/batch?ids={event_ids}").unwrap()));
        let stop = CancellationToken::new();
        (Batcher::start(client, interval, size, stop.clone()), stop)
    }

    fn id(i: usize) -> EventId {
        EventId::parse(&format!("e{i}")).unwrap()
    }

    #[tokio::test]
    async fn rounds_follow_the_members_and_merge_when_spare() {
        let interval = Duration::from_secs(3600);
        let (b, stop) = batcher(100, interval);
        let mut members: Vec<Membership> = (0..250).map(|i| b.join(&id(i), 1)).collect();
        assert_eq!(b.rounds(), 3);
        // Rounds are spread: no two fire within a tenth of the interval.
        let mut next: Vec<Instant> = b.lock().rounds.values().map(|r| r.next).collect();
        next.sort();
        assert!(next.windows(2).all(|w| w[1] - w[0] >= interval / 10), "{next:?}");
        // 160 leave: 90 are left, which one round holds; the emptied round
        // goes at once, the others merge when they fire.
        members.drain(..160);
        assert!(b.rounds() <= 2, "{} rounds", b.rounds());
        b.fire_due(Instant::now() + interval * 2);
        assert_eq!(b.rounds(), 1);
        let state = b.lock();
        let round = state.rounds.values().next().unwrap();
        assert_eq!(round.ids.len(), 90);
        assert!(state.members.values().all(|m| state.rounds.contains_key(&m.round)));
        drop(state);
        drop(members);
        assert_eq!(b.rounds(), 0);
        stop.cancel();
    }

    // Starts and stops a batcher like the tests around it on purpose: each
    // test has its own.
    #[tokio::test]
    async fn a_new_generation_takes_over_its_place() {
        let (b, stop) = batcher(10, Duration::from_secs(60));
        let old = b.join(&id(1), 1);
        let new = b.join(&id(1), 2);
        drop(old);
        assert_eq!(b.lock().rounds.values().map(|r| r.ids.len()).sum::<usize>(), 1);
        drop(new);
        assert_eq!(b.rounds(), 0);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_events() {
        let (b, stop) = batcher(10, Duration::from_secs(60));
        let (e1, e2) = (id(1), id(2));
        let _m = [b.join(&e1, 1), b.join(&e2, 1)];
        let (one, two) = tokio::join!(b.poll(&e1, 1, Due::Now), b.poll(&e2, 1, Due::Now));
        for (_, verdict) in [one, two] {
            assert!(matches!(verdict, Err(FetchError::Batch(_))), "{verdict:?}");
        }
        stop.cancel();
    }
}
