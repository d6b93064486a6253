//! One upstream gRPC stream per watched event, shared by all of this edge's
//! browsers watching it.
//!
//! Each watched event has an entry with a `watch` channel holding the latest
//! [`Snapshot`]: browsers only ever need the latest state, so a browser that
//! reads slowly skips intermediate values instead of queueing them, and the
//! edge's memory per connection stays constant whatever the update rate. The
//! first browser of an event starts its upstream task; after the last one
//! leaves, the stream is kept for [`UPSTREAM_GRACE`] (a reloading page finds
//! it still there, and a crowd leaving at once cancels its streams spread
//! out rather than in one burst that the poller's HTTP/2 server would take
//! for a rapid-reset attack). Events the poller reported ended are
//! remembered (bounded) so reconnecting browsers can be told to stop.
//!
//! Each entry's upstream task, its subscription and its failover between
//! pollers, is [`crate::upstream::failover`].

pub use crate::snapshot::{Markers, Snapshot, Tagged};
use crate::{
    sse,
    upstream::{
        failover::{self, LogOnce, upstream},
        pollers::Pollers,
    },
};
use livepush::{EventId, metrics, recent::RecentMap};
use rand::Rng;
use std::{
    collections::{HashMap, hash_map::Entry as MapEntry},
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{sync::watch, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Ended events remembered per edge, and for how long.
const MAX_ENDED: usize = 10_000;
const ENDED_TTL: Duration = Duration::from_secs(600);
/// An upstream stream outlives its last browser by this long, plus up to
/// half of it at random (so a crowd's cancellations spread out).
pub const UPSTREAM_GRACE: Duration = Duration::from_secs(5);
/// How often streams past their grace are closed.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Handle to the feeds of this edge; clones share them.
#[derive(Clone)]
pub struct Feeds {
    inner: Arc<Inner>,
}

struct Inner {
    pollers: Pollers,
    table: Mutex<Table>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    log: LogOnce,
    /// Upstream streams closed after their grace, since the last look
    /// ([`Feeds::take_closed`]).
    closed: AtomicUsize,
}

struct Table {
    events: HashMap<EventId, Entry>,
    /// Events the poller said are over (bounded in count and age).
    ended: RecentMap<EventId, ()>,
    next_generation: u64,
}

struct Entry {
    tx: watch::Sender<Snapshot>,
    browsers: usize,
    cancel: CancellationToken,
    generation: u64,
    /// Set when the last browser left: the stream closes then, unless a
    /// browser comes back first.
    idle_until: Option<Instant>,
    /// The poller whose stream feeds the event (the last one subscribed).
    source: Option<SocketAddr>,
}

impl Feeds {
    /// The feeds of this edge, and the task that closes streams past their
    /// grace (both end with `shutdown`).
    pub fn new(pollers: Pollers, shutdown: CancellationToken) -> Self {
        let table =
            Table { events: HashMap::new(), ended: RecentMap::new(MAX_ENDED, ENDED_TTL), next_generation: 0 };
        let inner = Inner {
            pollers,
            table: Mutex::new(table),
            tasks: TaskTracker::new(),
            shutdown,
            log: LogOnce::default(),
            closed: AtomicUsize::new(0),
        };
        let feeds = Self { inner: Arc::new(inner) };
        feeds.inner.tasks.spawn(feeds.clone().sweep());
        feeds
    }

    /// Closes upstream streams whose grace after their last browser ran out.
    async fn sweep(self) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let mut table = self.lock();
            let before = table.events.len();
            table.events.retain(|_, e| {
                let keep = e.idle_until.is_none_or(|t| t > now);
                if !keep {
                    e.cancel.cancel();
                }
                keep
            });
            let closed = before - table.events.len();
            if closed > 0 {
                self.inner.closed.fetch_add(closed, Ordering::Relaxed);
                metrics::edge_upstream().events_watched.decrement(closed as f64);
                // A crowd that left frees its table space too (down to
                // twice what is left, so a table shrinking over several
                // sweeps moves a few times, not at every sweep).
                let left = table.events.len();
                if table.events.capacity() > 4 * left + 64 {
                    table.events.shrink_to(2 * left);
                }
            }
        }
    }

    /// Starts watching `id` for one browser; `None` if the event is known to
    /// have ended.
    pub fn watch(&self, id: EventId) -> Option<Watch> {
        let mut table = self.lock();
        if table.ended.contains(&id) {
            return None;
        }
        let generation = table.next_generation;
        table.next_generation += 1;
        // The stream keeps the table's copy of the id (a shared `Arc`), so
        // the one parsed from its request is freed with the request.
        let (id, entry) = match table.events.entry(id) {
            MapEntry::Occupied(o) => (o.key().clone(), o.into_mut()),
            MapEntry::Vacant(v) => {
                let id = v.key().clone();
                let (tx, _) = watch::channel(Snapshot::new(&id));
                let cancel = self.inner.shutdown.child_token();
                let task = upstream(self.clone(), id.clone(), tx.clone(), cancel.clone());
                self.inner.tasks.spawn(task);
                metrics::edge_upstream().events_watched.increment(1.0);
                (id, v.insert(Entry { tx, browsers: 0, cancel, generation, idle_until: None, source: None }))
            }
        };
        entry.browsers += 1;
        entry.idle_until = None;
        let rx = entry.tx.subscribe();
        let guard = WatchGuard { feeds: self.clone(), id, generation: entry.generation };
        Some(Watch { rx, _guard: guard })
    }

    /// The poller whose stream feeds `id` now (presence goes there).
    pub fn source(&self, id: &EventId) -> Option<SocketAddr> {
        self.lock().events.get(id)?.source
    }

    fn set_source(&self, id: &EventId, poller: SocketAddr) {
        if let Some(entry) = self.lock().events.get_mut(id) {
            entry.source = Some(poller);
        }
    }

    /// Upstream streams closed after their grace since the last call.
    pub fn take_closed(&self) -> usize {
        self.inner.closed.swap(0, Ordering::Relaxed)
    }

    /// Events with at least one browser on this edge.
    pub fn watched_events(&self) -> usize {
        self.lock().events.len()
    }

    /// Waits (at most `timeout`) for the upstream tasks to stop after shutdown.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.inner.tasks.close();
        tokio::time::timeout(timeout, self.inner.tasks.wait()).await.is_ok()
    }

    /// Records the cluster-wide viewer count of `event_id` (from a heartbeat
    /// answer); browsers get a `presence` event only when it changes.
    pub fn set_viewers(&self, event_id: &str, viewers: u32) {
        let Ok(id) = EventId::parse(event_id) else { return };
        let table = self.lock();
        if let Some(entry) = table.events.get(&id) {
            entry.tx.send_if_modified(|s| {
                if s.viewers == Some(viewers) {
                    return false;
                }
                let data = format!(r#"{{"viewers":{viewers}}}"#);
                s.viewers = Some(viewers);
                s.presence_frame =
                    Some(sse::Event { id: None, event: Some("presence"), data: &data }.encode());
                let data = format!(r#"{{"event_id":"{}","viewers":{viewers}}}"#, id.as_str());
                s.tagged.presence =
                    Some(sse::Event { id: None, event: Some("presence"), data: &data }.encode());
                true
            });
        }
    }

    fn remember_ended(&self, id: &EventId) {
        self.lock().ended.insert(id.clone(), ());
    }

    fn release(&self, id: &EventId, generation: u64) {
        let mut table = self.lock();
        if let Some(entry) = table.events.get_mut(id)
            && entry.generation == generation
        {
            entry.browsers -= 1;
            if entry.browsers == 0 {
                let grace = UPSTREAM_GRACE.mul_f64(rand::rng().random_range(1.0..1.5));
                entry.idle_until = Some(Instant::now() + grace);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        livepush::sync::lock(&self.inner.table, "event table")
    }
}

/// One browser's view of an event; dropping it (the browser went away) lets
/// the upstream stream close when it was the last.
pub struct Watch {
    pub rx: watch::Receiver<Snapshot>,
    _guard: WatchGuard,
}

impl Watch {
    pub fn event_id(&self) -> &EventId {
        &self._guard.id
    }
}

struct WatchGuard {
    feeds: Feeds,
    id: EventId,
    generation: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.feeds.release(&self.id, self.generation);
    }
}

/// The table as the upstream tasks see it.
impl failover::Table for Feeds {
    fn pollers(&self) -> &Pollers {
        &self.inner.pollers
    }

    fn log(&self) -> &LogOnce {
        &self.inner.log
    }

    fn remember_ended(&self, id: &EventId) {
        Feeds::remember_ended(self, id)
    }

    fn set_source(&self, id: &EventId, poller: SocketAddr) {
        Feeds::set_source(self, id, poller)
    }
}
