//! Which events are watched, by how many subscribers, and their latest value.
//!
//! One entry per watched event holds a `watch` channel: subscribers only ever
//! need the latest value, so a slow subscriber skips intermediate ones instead
//! of queueing them (the poller's memory does not depend on how fast edges
//! read). The first subscriber of an event starts its poll task, so any number
//! of simultaneous subscribers cause exactly one first fetch; the task stops
//! once the event has had no subscriber for `--linger`.

pub use crate::poll_loop::{Hint, Settings, Snapshot};
use crate::{
    batch::Batcher,
    media_client::MediaClient,
    poll_loop::{self, Control, Finished},
};
use livepush::{EventId, metrics::GaugeGuard, proto::LiveUpdate, recent::RecentMap};
use std::{
    collections::{HashMap, hash_map::Entry as MapEntry},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How long an ended event is remembered, so re-subscribing to it is answered
/// at once instead of costing the media service a request.
const ENDED_TTL: Duration = Duration::from_secs(600);
/// Most ended events remembered; the oldest is forgotten first.
const MAX_ENDED: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    #[error("the poller is shutting down")]
    ShuttingDown,
    #[error("the poller already watches its maximum of {0} events")]
    TooManyEvents(usize),
}

/// Handle to the registry; clones share it.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    client: MediaClient,
    /// With `--media-batch-url`: every poll goes through it.
    batcher: Option<Batcher>,
    settings: Settings,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

struct State {
    events: HashMap<EventId, Entry>,
    /// Recently ended events and their final update.
    ended: RecentMap<EventId, Arc<LiveUpdate>>,
    next_generation: u64,
}

struct Entry {
    tx: watch::Sender<Snapshot>,
    /// Subscribers now; the poll task follows it and lingers once it is 0.
    interest: watch::Sender<usize>,
    /// Tells this entry from a later one for the same id, so a stale guard or
    /// poll task never touches its successor.
    generation: u64,
    /// Hints and publishes for the poll task.
    control: Arc<Control>,
    /// Counts the entry in `livepush_poller_events_watched` while it exists.
    _watched: GaugeGuard,
}

impl Registry {
    pub fn new(client: MediaClient, settings: Settings, shutdown: CancellationToken) -> Self {
        let state =
            State { events: HashMap::new(), ended: RecentMap::new(MAX_ENDED, ENDED_TTL), next_generation: 0 };
        let batcher = client.batched().then(|| {
            Batcher::start(client.clone(), settings.interval, settings.batch_size, shutdown.clone())
        });
        let inner = Inner {
            state: Mutex::new(state),
            client,
            batcher,
            settings,
            shutdown,
            tasks: TaskTracker::new(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Subscribes to `id`, starting its poll task if nobody watched it yet.
    pub fn subscribe(&self, id: EventId) -> Result<Subscription, SubscribeError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(SubscribeError::ShuttingDown);
        }
        let mut state = self.lock();
        if let Some(ended) = state.ended.get(&id).cloned() {
            // Nothing will ever change: a closed channel holding the final
            // update makes the stream deliver it and end.
            let (_, rx) = watch::channel(Some(ended));
            return Ok(Subscription { rx, _guard: None, _open: subscriber_gauge() });
        }
        let full = state.events.len() >= self.inner.settings.max_events;
        // Generations only need to be unique; burning one per call is simpler
        // than tracking whether this call created the entry.
        let generation = state.next_generation;
        state.next_generation += 1;
        let entry = match state.events.entry(id.clone()) {
            MapEntry::Occupied(o) => o.into_mut(),
            MapEntry::Vacant(v) => {
                if full {
                    return Err(SubscribeError::TooManyEvents(self.inner.settings.max_events));
                }
                let (tx, _) = watch::channel(None);
                let (interest, _) = watch::channel(0);
                let control = Arc::new(Control::default());
                self.spawn_poll(id.clone(), generation, &tx, &interest, &control);
                let _watched = GaugeGuard::new(&livepush::metrics::poller().events_watched);
                v.insert(Entry { tx, interest, generation, control, _watched })
            }
        };
        entry.interest.send_modify(|n| *n += 1);
        let guard = SubscriberGuard { registry: self.clone(), id, generation: entry.generation };
        let rx = entry.tx.subscribe();
        Ok(Subscription { rx, _guard: Some(guard), _open: subscriber_gauge() })
    }

    /// Hands a change hint (or a document to publish) to `id`'s poll task,
    /// if this poller watches the event.
    pub fn hint(&self, id: &EventId, hint: Hint) -> HintOutcome {
        let state = self.lock();
        let Some(entry) = state.events.get(id) else {
            return HintOutcome::NotWatched;
        };
        let outcome = match &hint {
            Hint::Poll => HintOutcome::Poll,
            Hint::Publish { .. } => HintOutcome::Published,
        };
        entry.control.offer(hint);
        outcome
    }

    /// Number of events currently watched (polled or lingering).
    pub fn watched_events(&self) -> usize {
        self.lock().events.len()
    }

    /// Number of subscribers of `id` right now.
    pub fn subscribers(&self, id: &EventId) -> usize {
        self.lock().events.get(id).map_or(0, |e| *e.interest.borrow())
    }

    /// Starts the poll task of `id`'s entry; the registry owns its life and
    /// hears how it ended.
    fn spawn_poll(
        &self,
        id: EventId,
        generation: u64,
        tx: &watch::Sender<Snapshot>,
        interest: &watch::Sender<usize>,
        control: &Arc<Control>,
    ) {
        let task = poll_loop::Task {
            id: id.clone(),
            generation,
            tx: tx.clone(),
            control: control.clone(),
            interest: interest.subscribe(),
            client: self.inner.client.clone(),
            batcher: self.inner.batcher.clone(),
            settings: self.inner.settings.clone(),
            shutdown: self.inner.shutdown.clone(),
        };
        let registry = self.clone();
        self.inner.tasks.spawn(async move {
            let finished = poll_loop::run(task).await;
            registry.finished(id, generation, finished);
        });
    }

    /// A poll task ended: forget its entry (remembering an ended event's
    /// final update), unless a subscriber came back in the instant between
    /// the linger running out and now, in which case polling goes on.
    fn finished(&self, id: EventId, generation: u64, finished: Finished) {
        let mut state = self.lock();
        let current = state.events.get(&id).filter(|e| e.generation == generation);
        match finished {
            Finished::Idle if current.is_some_and(|e| *e.interest.borrow() > 0) => {
                if self.inner.shutdown.is_cancelled() {
                    state.events.remove(&id);
                    return;
                }
                let entry = current.expect("just seen");
                let (tx, interest, control) =
                    (entry.tx.clone(), entry.interest.clone(), entry.control.clone());
                drop(state);
                self.spawn_poll(id, generation, &tx, &interest, &control);
            }
            Finished::Ended(last) => {
                if current.is_some() {
                    state.events.remove(&id);
                }
                state.ended.insert(id, last);
            }
            Finished::Idle | Finished::Stopped => {
                if current.is_some() {
                    state.events.remove(&id);
                }
            }
        }
    }

    fn release(&self, id: &EventId, generation: u64) {
        let mut state = self.lock();
        if let Some(entry) = state.events.get_mut(id).filter(|e| e.generation == generation) {
            entry.interest.send_modify(|n| *n = n.saturating_sub(1));
        }
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Waits (at most `timeout`) for every poll task to stop after shutdown.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.inner.tasks.close();
        let polls = tokio::time::timeout(timeout, self.inner.tasks.wait()).await.is_ok();
        match &self.inner.batcher {
            Some(batcher) => batcher.drain(timeout).await && polls,
            None => polls,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        livepush::sync::lock(&self.inner.state, "poller registry")
    }
}

/// What became of a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintOutcome {
    Poll,
    Published,
    /// This poller does not watch the event.
    NotWatched,
}

/// One subscriber's view of an event. Dropping it (the gRPC stream ends or the
/// client goes away) releases the subscription.
pub struct Subscription {
    pub rx: watch::Receiver<Snapshot>,
    _guard: Option<SubscriberGuard>,
    /// Counts the subscription in `livepush_poller_subscribers`.
    _open: GaugeGuard,
}

fn subscriber_gauge() -> GaugeGuard {
    GaugeGuard::new(&livepush::metrics::poller().subscribers)
}

struct SubscriberGuard {
    registry: Registry,
    id: EventId,
    generation: u64,
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.registry.release(&self.id, self.generation);
    }
}
