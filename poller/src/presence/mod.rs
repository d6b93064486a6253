//! Presence: who watches each event, merged across every edge.
//!
//! Edges do not send one heartbeat per viewer; each sends one batch per
//! interval listing everyone who watched through it
//! (`livepush.v1.Presence/ReportHeartbeats`). A batch replaces that edge's
//! previous one entirely, and an edge silent for [`EXPIRY_INTERVALS`] of its
//! own intervals is dropped with its viewers, so a crashed edge stops counting
//! without anyone telling us.
//!
//! Data structures, chosen so that a batch costs O(its size + the size of the
//! same edge's previous batch), never O(everything stored):
//!
//! - per edge, its last batch as it arrived (validated), so that replacing it
//!   means subtracting exactly what it added;
//! - per event, a [`Tally`]: `vid → number of edge entries listing it`, the sum
//!   of anonymous streams and the number of edges with viewers. Distinct vids
//!   are the map's keys, so one vid on two edges (or listed twice) counts once
//!   and every count is O(1) to read.
//!
//! A new batch is added before the old one is subtracted, so a vid that stays
//! only has its counter bumped and lowered instead of its entry dropped and
//! rebuilt. Only the events of the two batches (or of an expired edge) are
//! recomputed and published to their watchers. Watchers hold a `watch` channel
//! per event, created on demand and removed with the last watcher: they only
//! ever need the latest counts, so a slow watcher skips intermediate ones
//! instead of queueing them.
//!
//! Batches are validated completely before the lock is taken; an invalid batch
//! changes nothing, so bad input never loses what was there.
//!
//! With a clients file (see `clients`), an edge is the pair (client name,
//! `edge_id`): the name comes from the caller's token, so a batch can only
//! replace a batch of the same client, and each client has a budget of its
//! own ([`MAX_EDGES`] edges, [`MAX_STORED_ENTRIES`] entries): a client
//! inventing edge ids fills its own budget, never another's. Without a
//! clients file every batch belongs to one anonymous owner and the budgets
//! are the whole store's, as before tokens existed.

//!
//! Files: [`validate`] (every check a batch passes before the lock),
//! [`tally`] (the per-event merge and what a batch adds or takes away),
//! [`watchers`] (`WatchPresence`), [`service`] (the gRPC service) and
//! [`forward`] (`--heartbeat-url`).

pub mod forward;
pub mod service;
mod tally;
#[cfg(test)]
mod tests;
mod validate;
mod watchers;

pub use validate::InvalidBatch;
pub use watchers::PresenceWatch;

use tally::{EdgeKey, Sizes, State, Watched, log_expired};
use validate::validate;
use watchers::WatchGuard;

use livepush::{
    EventId, InvalidEventId, InvalidViewerId, ViewerId,
    proto::{EventPresence, HeartbeatAck, HeartbeatBatch},
};
use std::{
    collections::{HashMap, HashSet, hash_map::Entry as MapEntry},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Edges tracked at once per owner (per client with a clients file, for the
/// whole store without one). A cluster has tens of edges; the bound keeps a
/// client inventing edge ids from making the expiry sweep (which scans all
/// edges) and the state grow without limit.
pub const MAX_EDGES: usize = 1024;
/// Shortest reporting interval accepted (the proto's contract): faster would
/// make batch handling, not viewers, the poller's main work.
pub const MIN_INTERVAL_MS: u32 = 100;
/// Longest reporting interval accepted (the proto's contract): with expiry
/// after three intervals, a dead edge's viewers linger at most 30 minutes.
pub const MAX_INTERVAL_MS: u32 = 600_000;
/// Events in one batch (the proto's contract).
pub const MAX_EVENTS_PER_BATCH: usize = 100_000;
/// Viewer ids listed for one event in one batch (the proto's contract).
pub const MAX_VIDS_PER_EVENT: usize = 100_000;
/// Anonymous streams of one event in one batch: far above what one edge can
/// hold open, low enough that sums over [`MAX_EDGES`] fit in a `u32`.
pub const MAX_ANONYMOUS: u32 = 1_000_000;
/// Viewer ids in one batch, all events together: bounds the work and memory
/// of one call.
pub const MAX_VIDS_PER_BATCH: usize = 1_000_000;
/// An edge silent for this many of its own intervals is expired: one lost or
/// late batch must not make its viewers flicker away.
pub const EXPIRY_INTERVALS: u32 = 3;
/// Entries stored across all edges of one owner (see [`MAX_EDGES`]), where
/// each event an edge lists with viewers and each vid it lists counts one
/// (about 150 bytes each, so ~1.5 GB at most per owner; with a clients file
/// the owners are the clients with role `edge`, which the operator lists).
/// Per-batch limits times [`MAX_EDGES`] would allow a thousand times more;
/// real edges (at most `--max-connections` streams each) stay far below. A
/// batch that would cross it is refused and the edge keeps its previous
/// state.
pub const MAX_STORED_ENTRIES: usize = 10_000_000;
/// Events whose presence is watched at once (WatchPresence), so that watching
/// made-up ids cannot grow the poller without limit. Matches the default
/// `--max-events` of LiveFeed.
pub const MAX_WATCHED_EVENTS: usize = 100_000;
/// Events remembered as "lost their last viewer" until the forwarder posts
/// their zero; beyond, the zero is skipped (the receiver sees the event stop
/// being reported instead). As many as one batch may list.
const MAX_PENDING_ZEROS: usize = 100_000;
/// How often expired edges are looked for: a dead edge's viewers vanish at most
/// this long after their deadline. The sweep scans at most [`MAX_EDGES`]
/// deadlines, so it is cheap.
pub const SWEEP_PERIOD: Duration = Duration::from_millis(250);

/// Why [`PresenceStore::report`] stored nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Invalid(#[from] InvalidBatch),
    #[error("the poller already tracks its maximum of {0} edges for this client")]
    TooManyEdges(usize),
    #[error("the poller already stores its maximum of {0} presence entries for this client")]
    Full(usize),
    #[error("the poller is shutting down")]
    ShuttingDown,
}

/// Why [`PresenceStore::watch`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("the poller is shutting down")]
    ShuttingDown,
    #[error("the poller already watches the presence of its maximum of {0} events")]
    TooManyWatched(usize),
}

/// Handle to the presence state; clones share it.
#[derive(Clone)]
pub struct PresenceStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = livepush::sync::get_mut(&mut self.state, "presence store");
        state.gauge(Sizes::default());
    }
}

/// Who owns a batch: the authenticated client's name with a clients file,
/// `None` (one owner for everything) without.
pub type Owner = Option<Arc<str>>;

impl PresenceStore {
    /// An empty store. Expiry needs [`sweep`](Self::sweep) running; streams
    /// and new batches are refused once `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> Self {
        let inner = Inner { state: Mutex::new(State::default()), shutdown };
        Self { inner: Arc::new(inner) }
    }

    /// Stores an edge's batch in place of its previous one and answers the
    /// cluster-wide presence of every event the batch lists (no clients
    /// file: every batch has the same owner).
    pub fn report(&self, batch: HeartbeatBatch) -> Result<HeartbeatAck, BatchError> {
        self.report_for(None, batch)
    }

    /// Like [`report`](Self::report), for the edge `batch.edge_id` of
    /// `owner` (the authenticated client's name): it replaces only that
    /// owner's batch for that edge, within that owner's budget.
    pub fn report_for(&self, owner: Owner, batch: HeartbeatBatch) -> Result<HeartbeatAck, BatchError> {
        self.report_owned_at(owner, batch, Instant::now())
    }

    #[cfg(test)]
    fn report_at(&self, batch: HeartbeatBatch, now: Instant) -> Result<HeartbeatAck, BatchError> {
        self.report_owned_at(None, batch, now)
    }

    fn report_owned_at(
        &self,
        owner: Owner,
        batch: HeartbeatBatch,
        now: Instant,
    ) -> Result<HeartbeatAck, BatchError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(BatchError::ShuttingDown);
        }
        let batch = validate(batch)?;
        let key = EdgeKey { owner, edge: batch.edge.clone() };
        let (ack, replaced, expired) = {
            let mut state = self.lock();
            let mut expired = Vec::new();
            if !state.edges.contains_key(&key) && state.usage(&key.owner).edges >= MAX_EDGES {
                // Make room from edges that are already dead but not swept yet.
                expired = state.expire_due(now);
                if state.usage(&key.owner).edges >= MAX_EDGES {
                    drop(state);
                    log_expired(&expired);
                    warn!(
                        edge_id = %key.edge,
                        client = key.client(),
                        max = MAX_EDGES,
                        "presence batch refused: too many edges for this client"
                    );
                    return Err(BatchError::TooManyEdges(MAX_EDGES));
                }
            }
            let (ack, replaced) = state.replace(key.clone(), batch, now)?;
            (ack, replaced, expired)
        };
        log_expired(&expired);
        let (edge, client) = (&key.edge, key.client());
        match &replaced {
            None => {
                info!(edge_id = %edge, client, events = ack.presence.len(), "edge started reporting presence")
            }
            Some(_) => debug!(edge_id = %edge, client, events = ack.presence.len(), "presence batch stored"),
        }
        // The previous batch (possibly a million ids) is freed here, after the
        // lock is released.
        drop(replaced);
        Ok(ack)
    }

    /// Current presence of `id`, with all its distinct viewer ids sorted.
    pub fn get(&self, id: &EventId) -> EventPresence {
        self.get_at_most(id, usize::MAX)
    }

    /// Current presence of `id` (exact counts) with at most `max_vids` of its
    /// distinct viewer ids, sorted; `truncated` when some were left out.
    /// Only those are copied under the lock (reference counts, not strings),
    /// so an event with a crowd costs the bound, not the crowd: which ones
    /// is the map's order, not the first in sort order (that would mean
    /// scanning every viewer under the lock).
    pub fn get_at_most(&self, id: &EventId, max_vids: usize) -> EventPresence {
        let (mut presence, mut vids, truncated) = {
            let state = self.lock();
            let (vids, truncated) = match state.events.get(id) {
                Some(t) => (t.vids.keys().take(max_vids).cloned().collect(), t.vids.len() > max_vids),
                None => (Vec::new(), false),
            };
            (state.presence(id), vids, truncated)
        };
        vids.sort_unstable();
        presence.vids = vids.iter().map(|v| v.as_str().to_owned()).collect();
        presence.truncated = truncated;
        presence
    }

    /// Watches the presence of `id` (without viewer ids): the receiver holds
    /// the current counts at once and changes whenever they do.
    pub fn watch(&self, id: EventId) -> Result<PresenceWatch, WatchError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(WatchError::ShuttingDown);
        }
        let mut state = self.lock();
        let full = state.watched.len() >= MAX_WATCHED_EVENTS;
        let current = state.presence(&id);
        let rx = match state.watched.entry(id.clone()) {
            MapEntry::Occupied(o) => {
                let watched = o.into_mut();
                watched.watchers += 1;
                watched.tx.subscribe()
            }
            MapEntry::Vacant(v) => {
                if full {
                    return Err(WatchError::TooManyWatched(MAX_WATCHED_EVENTS));
                }
                let (tx, rx) = watch::channel(current);
                v.insert(Watched { tx, watchers: 1 });
                rx
            }
        };
        state.update_gauges();
        Ok(PresenceWatch { rx, _guard: WatchGuard { store: self.clone(), id } })
    }

    /// Expires edges silent for [`EXPIRY_INTERVALS`] of their interval, every
    /// [`SWEEP_PERIOD`], until shutdown.
    pub async fn sweep(self) {
        let mut tick = tokio::time::interval(SWEEP_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.inner.shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.expire_at(Instant::now());
        }
    }

    /// Drops every edge whose deadline is at or before `now`; returns how many.
    fn expire_at(&self, now: Instant) -> usize {
        let expired = self.lock().expire_due(now);
        log_expired(&expired);
        expired.len()
    }

    /// Edges currently reporting.
    pub fn edges(&self) -> usize {
        self.lock().edges.len()
    }

    /// Events with at least one viewer somewhere.
    pub fn events_with_viewers(&self) -> usize {
        self.lock().events.len()
    }

    /// Events whose presence is being watched.
    pub fn watched_events(&self) -> usize {
        self.lock().watched.len()
    }

    /// Cancelled when the poller shuts down: watch streams end with it.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// The events the forwarder should post this round: every event with
    /// viewers, and every event that lost its last viewer since the previous
    /// round (so it gets one post with zero).
    pub(crate) fn forward_round(&self) -> Vec<EventId> {
        let mut state = self.lock();
        let vanished = state.vanished.replace(HashSet::new()).unwrap_or_default();
        let mut ids: Vec<EventId> = state.events.keys().cloned().collect();
        ids.extend(vanished.into_iter().filter(|id| !state.events.contains_key(id)));
        ids
    }

    fn unwatch(&self, id: &EventId) {
        let mut state = self.lock();
        if let MapEntry::Occupied(mut o) = state.watched.entry(id.clone()) {
            o.get_mut().watchers -= 1;
            if o.get().watchers == 0 {
                o.remove();
            }
        }
        state.update_gauges();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        livepush::sync::lock(&self.inner.state, "presence store")
    }
}
