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

/// Why a batch was refused as malformed (INVALID_ARGUMENT). One line; it names
/// the offending position, never echoes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBatch {
    #[error("edge_id must be 1 to 64 characters from A-Z a-z 0-9 . _ ~ -")]
    EdgeId,
    #[error("interval_ms must be between {MIN_INTERVAL_MS} and {MAX_INTERVAL_MS}")]
    Interval,
    #[error("a batch may list at most {MAX_EVENTS_PER_BATCH} events")]
    TooManyEvents,
    #[error("a batch may list at most {MAX_VIDS_PER_BATCH} vids in total")]
    TooManyVidsInBatch,
    #[error("events[{index}]: {source}")]
    EventId { index: usize, source: InvalidEventId },
    #[error("events[{index}]: event id already listed earlier in the batch")]
    DuplicateEvent { index: usize },
    #[error("events[{index}]: at most {MAX_VIDS_PER_EVENT} vids per event")]
    TooManyVids { index: usize },
    #[error("events[{index}].vids[{vid}]: {source}")]
    ViewerId { index: usize, vid: usize, source: InvalidViewerId },
    #[error("events[{index}]: anonymous must be at most {MAX_ANONYMOUS}")]
    TooManyAnonymous { index: usize },
}

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

/// One reporting edge: its owner and its `edge_id` (which follows the
/// viewer-id rules, hence the type).
#[derive(Clone, PartialEq, Eq, Hash)]
struct EdgeKey {
    owner: Owner,
    edge: ViewerId,
}

impl EdgeKey {
    /// The client's name for logs (`-` without a clients file).
    fn client(&self) -> &str {
        self.owner.as_deref().unwrap_or("-")
    }
}

/// What one owner holds, bounded by [`MAX_EDGES`] and [`MAX_STORED_ENTRIES`].
#[derive(Default, Clone, Copy)]
struct Usage {
    edges: usize,
    stored: usize,
}

#[derive(Default)]
struct State {
    edges: HashMap<EdgeKey, Edge>,
    /// Per owner with at least one edge.
    usage: HashMap<Owner, Usage>,
    /// Only events with at least one viewer on some edge.
    events: HashMap<EventId, Tally>,
    watched: HashMap<EventId, Watched>,
    /// Sum of [`Edge::weight`] over all edges.
    stored: usize,
    /// Events that lost their last viewer since the forwarder last asked;
    /// `None` until it first asks, so nothing accumulates when forwarding is
    /// off.
    vanished: Option<HashSet<EventId>>,
    /// Viewers over all events: distinct vids per event plus anonymous.
    viewers: u64,
    /// What this store has added to the process's presence gauges.
    gauged: Sizes,
}

/// The sizes behind the presence gauges. Several stores in one process (the
/// tests) each add their own share, so the gauges move by deltas.
#[derive(Default, Clone, Copy)]
struct Sizes {
    edges: usize,
    events: usize,
    viewers: u64,
    watched: usize,
}

/// One edge's last batch.
struct Edge {
    expires_at: Instant,
    /// Only the events listed with at least one viewer.
    events: Vec<EdgeEvent>,
    /// Its share of [`MAX_STORED_ENTRIES`].
    weight: usize,
}

/// One event as one edge listed it.
struct EdgeEvent {
    id: EventId,
    vids: Box<[ViewerId]>,
    anonymous: u32,
}

impl EdgeEvent {
    fn has_viewers(&self) -> bool {
        !self.vids.is_empty() || self.anonymous > 0
    }
}

/// One event merged over all edges.
#[derive(Default)]
struct Tally {
    /// Distinct viewer ids, each with the number of edge entries listing it.
    vids: HashMap<ViewerId, u32>,
    anonymous: u64,
    /// Edges listing this event with viewers; the tally is dropped at zero.
    edges: u32,
}

struct Watched {
    tx: watch::Sender<EventPresence>,
    watchers: usize,
}

/// A batch that passed every check, ready to be stored.
struct ValidBatch {
    edge: ViewerId,
    interval: Duration,
    /// Every event listed, in batch order (the ack answers for each).
    listed: Vec<EventId>,
    /// The listed events that have viewers.
    events: Vec<EdgeEvent>,
}

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

impl State {
    /// Stores `batch` in place of the edge's previous one; returns the ack and
    /// the replaced edge (to be freed outside the lock).
    fn replace(
        &mut self,
        key: EdgeKey,
        batch: ValidBatch,
        now: Instant,
    ) -> Result<(HeartbeatAck, Option<Edge>), BatchError> {
        let ValidBatch { edge: _, interval, listed, events } = batch;
        let weight = events.iter().map(|e| 1 + e.vids.len()).sum::<usize>();
        let old_weight = self.edges.get(&key).map_or(0, |e| e.weight);
        let usage = self.usage(&key.owner);
        let owned = usage.stored - old_weight + weight;
        if owned > MAX_STORED_ENTRIES {
            warn!(
                edge_id = %key.edge,
                client = key.client(),
                weight,
                max = MAX_STORED_ENTRIES,
                "presence batch refused: this client's share of the store is full"
            );
            return Err(BatchError::Full(MAX_STORED_ENTRIES));
        }
        // Add first, then subtract: vids present in both keep their entries.
        for event in &events {
            self.add(event);
        }
        let expires_at = now + interval * EXPIRY_INTERVALS;
        let owner = key.owner.clone();
        let replaced = self.edges.insert(key, Edge { expires_at, events, weight });
        let edges = usage.edges + usize::from(replaced.is_none());
        self.usage.insert(owner, Usage { edges, stored: owned });
        if let Some(old) = &replaced {
            for event in &old.events {
                self.subtract(event);
            }
            for event in &old.events {
                self.publish(&event.id);
            }
        }
        self.stored = self.stored - old_weight + weight;
        self.update_gauges();
        for id in &listed {
            self.publish(id);
        }
        let presence = listed.iter().map(|id| self.presence(id)).collect();
        Ok((HeartbeatAck { presence }, replaced))
    }

    /// Removes every edge whose deadline has passed, publishing the events it
    /// listed.
    fn expire_due(&mut self, now: Instant) -> Vec<(EdgeKey, Edge)> {
        let due: Vec<EdgeKey> =
            self.edges.iter().filter(|(_, e)| e.expires_at <= now).map(|(id, _)| id.clone()).collect();
        let mut expired = Vec::with_capacity(due.len());
        for id in due {
            let Some(edge) = self.edges.remove(&id) else { continue };
            for event in &edge.events {
                self.subtract(event);
            }
            self.stored -= edge.weight;
            if let MapEntry::Occupied(mut entry) = self.usage.entry(id.owner.clone()) {
                let usage = entry.get_mut();
                usage.edges -= 1;
                usage.stored -= edge.weight;
                if usage.edges == 0 {
                    entry.remove();
                }
            }
            for event in &edge.events {
                self.publish(&event.id);
            }
            expired.push((id, edge));
        }
        if !expired.is_empty() {
            self.update_gauges();
        }
        expired
    }

    /// What `owner` holds now.
    fn usage(&self, owner: &Owner) -> Usage {
        self.usage.get(owner).copied().unwrap_or_default()
    }

    /// Brings the presence gauges to this store's current sizes.
    fn update_gauges(&mut self) {
        let now = Sizes {
            edges: self.edges.len(),
            events: self.events.len(),
            viewers: self.viewers,
            watched: self.watched.len(),
        };
        self.gauge(now);
    }

    /// Moves the process's presence gauges by `now` minus what this store
    /// added so far.
    fn gauge(&mut self, now: Sizes) {
        let m = livepush::metrics::poller();
        let was = std::mem::replace(&mut self.gauged, now);
        m.presence_edges.increment(now.edges as f64 - was.edges as f64);
        m.presence_events.increment(now.events as f64 - was.events as f64);
        m.presence_viewers.increment(now.viewers as f64 - was.viewers as f64);
        m.presence_watched.increment(now.watched as f64 - was.watched as f64);
    }

    fn add(&mut self, event: &EdgeEvent) {
        let tally = match self.events.entry(event.id.clone()) {
            MapEntry::Occupied(o) => o.into_mut(),
            MapEntry::Vacant(v) => {
                if let Some(vanished) = &mut self.vanished {
                    vanished.remove(&event.id);
                }
                v.insert(Tally::default())
            }
        };
        tally.vids.reserve(event.vids.len());
        for vid in &event.vids {
            let count = tally.vids.entry(vid.clone()).or_insert(0);
            if *count == 0 {
                self.viewers += 1;
            }
            *count += 1;
        }
        tally.anonymous += u64::from(event.anonymous);
        self.viewers += u64::from(event.anonymous);
        tally.edges += 1;
    }

    fn subtract(&mut self, event: &EdgeEvent) {
        let MapEntry::Occupied(mut o) = self.events.entry(event.id.clone()) else {
            debug_assert!(false, "an edge's event is always tallied");
            return;
        };
        let tally = o.get_mut();
        for vid in &event.vids {
            if let Some(count) = tally.vids.get_mut(vid) {
                *count -= 1;
                if *count == 0 {
                    tally.vids.remove(vid);
                    self.viewers -= 1;
                }
            }
        }
        tally.anonymous -= u64::from(event.anonymous);
        self.viewers -= u64::from(event.anonymous);
        tally.edges -= 1;
        if tally.edges == 0 {
            debug_assert!(tally.vids.is_empty() && tally.anonymous == 0);
            o.remove();
            if let Some(vanished) = self.vanished.as_mut().filter(|v| v.len() < MAX_PENDING_ZEROS) {
                vanished.insert(event.id.clone());
            }
        } else if tally.vids.capacity() > 1024 && tally.vids.len() < tally.vids.capacity() / 8 {
            // An event that had a crowd keeps a few viewers: give the memory
            // back (amortised: only after the map shrank eightfold).
            tally.vids.shrink_to_fit();
        }
    }

    /// Sends `id`'s counts to its watchers, if any, when they changed.
    fn publish(&self, id: &EventId) {
        if let Some(watched) = self.watched.get(id) {
            let now = self.presence(id);
            watched.tx.send_if_modified(|current| {
                let changed = *current != now;
                if changed {
                    *current = now;
                }
                changed
            });
        }
    }

    /// Counts of `id` without viewer ids.
    fn presence(&self, id: &EventId) -> EventPresence {
        let mut presence = EventPresence { event_id: id.as_str().to_owned(), ..Default::default() };
        if let Some(tally) = self.events.get(id) {
            presence.identified = saturate(tally.vids.len() as u64);
            presence.anonymous = saturate(tally.anonymous);
            presence.viewers = presence.identified.saturating_add(presence.anonymous);
            presence.edges = tally.edges;
        }
        presence
    }
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn log_expired(expired: &[(EdgeKey, Edge)]) {
    for (id, edge) in expired {
        let (edge_id, client, events) = (&id.edge, id.client(), edge.events.len());
        info!(%edge_id, client, events, "edge stopped reporting presence; its viewers expired");
    }
}

/// Checks everything about a batch before anything is stored. Counts are
/// checked before any id is parsed, so an oversized batch costs no parsing.
fn validate(batch: HeartbeatBatch) -> Result<ValidBatch, InvalidBatch> {
    let edge = ViewerId::parse(&batch.edge_id).map_err(|_| InvalidBatch::EdgeId)?;
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&batch.interval_ms) {
        return Err(InvalidBatch::Interval);
    }
    if batch.events.len() > MAX_EVENTS_PER_BATCH {
        return Err(InvalidBatch::TooManyEvents);
    }
    let mut total_vids = 0usize;
    for (index, event) in batch.events.iter().enumerate() {
        if event.vids.len() > MAX_VIDS_PER_EVENT {
            return Err(InvalidBatch::TooManyVids { index });
        }
        if event.anonymous > MAX_ANONYMOUS {
            return Err(InvalidBatch::TooManyAnonymous { index });
        }
        total_vids += event.vids.len();
    }
    if total_vids > MAX_VIDS_PER_BATCH {
        return Err(InvalidBatch::TooManyVidsInBatch);
    }
    let mut seen = HashSet::with_capacity(batch.events.len());
    let mut listed = Vec::with_capacity(batch.events.len());
    let mut events = Vec::with_capacity(batch.events.len());
    for (index, event) in batch.events.into_iter().enumerate() {
        let id = EventId::parse(&event.event_id).map_err(|source| InvalidBatch::EventId { index, source })?;
        if !seen.insert(id.clone()) {
            return Err(InvalidBatch::DuplicateEvent { index });
        }
        // A vid listed twice is tolerated: it is counted once like any vid
        // on two edges, and refusing the whole batch for it would lose the
        // edge's presence over a harmless redundancy.
        let vids = event
            .vids
            .iter()
            .enumerate()
            .map(|(vid, s)| {
                ViewerId::parse(s).map_err(|source| InvalidBatch::ViewerId { index, vid, source })
            })
            .collect::<Result<Box<[_]>, _>>()?;
        listed.push(id.clone());
        let event = EdgeEvent { id, vids, anonymous: event.anonymous };
        if event.has_viewers() {
            events.push(event);
        }
    }
    let interval = Duration::from_millis(batch.interval_ms.into());
    Ok(ValidBatch { edge, interval, listed, events })
}

/// One watcher of an event's presence. Dropping it (the gRPC stream ends or
/// the client goes away) releases the watch; the event's channel goes with
/// its last watcher.
pub struct PresenceWatch {
    pub rx: watch::Receiver<EventPresence>,
    _guard: WatchGuard,
}

impl std::fmt::Debug for PresenceWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceWatch").field("event_id", &self._guard.id).finish_non_exhaustive()
    }
}

struct WatchGuard {
    store: PresenceStore,
    id: EventId,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.store.unwatch(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livepush::proto::EventViewers;

    fn store() -> PresenceStore {
        PresenceStore::new(CancellationToken::new())
    }

    fn ev(id: &str, vids: &[&str], anonymous: u32) -> EventViewers {
        EventViewers { event_id: id.into(), vids: vids.iter().map(|v| v.to_string()).collect(), anonymous }
    }

    fn batch(edge: &str, interval_ms: u32, events: Vec<EventViewers>) -> HeartbeatBatch {
        HeartbeatBatch { edge_id: edge.into(), interval_ms, events }
    }

    fn id(s: &str) -> EventId {
        EventId::parse(s).unwrap()
    }

    /// (viewers, identified, anonymous, edges)
    fn counts(p: &EventPresence) -> (u32, u32, u32, u32) {
        (p.viewers, p.identified, p.anonymous, p.edges)
    }

    fn invalid(result: Result<HeartbeatAck, BatchError>) -> InvalidBatch {
        match result {
            Err(BatchError::Invalid(e)) => e,
            other => panic!("expected an invalid batch, got {other:?}"),
        }
    }

    #[test]
    fn merges_edges_counting_each_vid_once() {
        let s = store();
        let ack =
            s.report(batch("e1", 1000, vec![ev("ev", &["a", "b"], 2), ev("other", &["z"], 0)])).unwrap();
        assert_eq!(counts(&ack.presence[0]), (4, 2, 2, 1));
        // "b" on a second edge, "c" listed twice (two tabs): each counts once.
        let ack = s.report(batch("e2", 1000, vec![ev("ev", &["b", "c", "c"], 3)])).unwrap();
        assert_eq!(ack.presence.len(), 1);
        assert_eq!(ack.presence[0].event_id, "ev");
        assert_eq!(counts(&ack.presence[0]), (8, 3, 5, 2));
        assert!(ack.presence[0].vids.is_empty(), "acks carry no vids");
        let got = s.get(&id("ev"));
        assert_eq!(counts(&got), (8, 3, 5, 2));
        assert_eq!(got.vids, ["a", "b", "c"]);
        assert_eq!(counts(&s.get(&id("other"))), (1, 1, 0, 1));
        assert_eq!(s.get(&id("nobody")), EventPresence { event_id: "nobody".into(), ..Default::default() });
    }

    #[test]
    fn vids_are_sorted() {
        let s = store();
        s.report(batch("e1", 1000, vec![ev("ev", &["m", "a", "Z", "b~"], 0)])).unwrap();
        s.report(batch("e2", 1000, vec![ev("ev", &["0", "m"], 0)])).unwrap();
        assert_eq!(s.get(&id("ev")).vids, ["0", "Z", "a", "b~", "m"]);
    }

    #[test]
    fn a_batch_replaces_the_edges_previous_one() {
        let s = store();
        s.report(batch("e1", 1000, vec![ev("x", &["a", "b"], 1), ev("y", &["a"], 0)])).unwrap();
        s.report(batch("e2", 1000, vec![ev("x", &["b"], 0)])).unwrap();
        // e1 now only lists x with "c": "a" is gone from x and y is gone.
        let ack = s.report(batch("e1", 1000, vec![ev("x", &["c"], 0)])).unwrap();
        assert_eq!(counts(&ack.presence[0]), (2, 2, 0, 2));
        assert_eq!(s.get(&id("x")).vids, ["b", "c"]);
        assert_eq!(counts(&s.get(&id("y"))), (0, 0, 0, 0));
        assert_eq!(s.events_with_viewers(), 1);
        // An event listed without viewers is answered but does not count the
        // edge.
        let ack = s.report(batch("e1", 1000, vec![ev("x", &[], 0)])).unwrap();
        assert_eq!(counts(&ack.presence[0]), (1, 1, 0, 1));
        // An empty batch empties the edge, which stays known.
        s.report(batch("e2", 1000, vec![])).unwrap();
        assert_eq!(s.events_with_viewers(), 0);
        assert_eq!(s.edges(), 2);
        assert_eq!(s.lock().stored, 0);
    }

    #[test]
    fn gauges_follow_edges_events_viewers_and_watches() {
        // This store's share of the process-wide gauges.
        let sizes = |s: &PresenceStore| {
            let g = s.lock().gauged;
            (g.edges, g.events, g.viewers, g.watched)
        };
        let s = store();
        s.report(batch("e1", 1000, vec![ev("x", &["a", "b"], 1), ev("y", &["a"], 0)])).unwrap();
        s.report(batch("e2", 1000, vec![ev("x", &["b", "c"], 2)])).unwrap();
        // x: a, b, c and 3 anonymous; y: a.
        assert_eq!(sizes(&s), (2, 2, 7, 0));
        let w = s.watch(id("x")).unwrap();
        assert_eq!(sizes(&s), (2, 2, 7, 1));
        s.report(batch("e1", 1000, vec![])).unwrap();
        // x: b, c and 2 anonymous; e1 stays known with nothing.
        assert_eq!(sizes(&s), (2, 1, 4, 1));
        assert_eq!(u64::from(s.get(&id("x")).viewers), s.lock().viewers);
        drop(w);
        assert_eq!(sizes(&s), (2, 1, 4, 0));
        assert_eq!(s.expire_at(Instant::now() + Duration::from_secs(3)), 2);
        assert_eq!(sizes(&s), (0, 0, 0, 0));
    }

    #[test]
    fn edges_expire_after_three_of_their_intervals() {
        let s = store();
        let t0 = Instant::now();
        s.report_at(batch("slow", 1000, vec![ev("x", &["a"], 1)]), t0).unwrap();
        s.report_at(batch("fast", 100, vec![ev("x", &["b"], 0)]), t0).unwrap();
        assert_eq!(s.expire_at(t0 + Duration::from_millis(299)), 0);
        assert_eq!(counts(&s.get(&id("x"))), (3, 2, 1, 2));
        assert_eq!(s.expire_at(t0 + Duration::from_millis(300)), 1);
        assert_eq!(counts(&s.get(&id("x"))), (2, 1, 1, 1));
        // A new batch pushes the deadline back.
        s.report_at(batch("slow", 1000, vec![ev("x", &["a"], 1)]), t0 + Duration::from_millis(2000)).unwrap();
        assert_eq!(s.expire_at(t0 + Duration::from_millis(4999)), 0);
        assert_eq!(s.expire_at(t0 + Duration::from_millis(5000)), 1);
        assert_eq!(counts(&s.get(&id("x"))), (0, 0, 0, 0));
        assert_eq!((s.edges(), s.events_with_viewers(), s.lock().stored), (0, 0, 0));
    }

    #[tokio::test]
    async fn the_sweep_expires_edges_and_tells_watchers() {
        let stop = CancellationToken::new();
        let s = PresenceStore::new(stop.clone());
        let sweeper = tokio::spawn(s.clone().sweep());
        let mut w = s.watch(id("x")).unwrap();
        s.report(batch("e1", 100, vec![ev("x", &["a"], 0)])).unwrap();
        assert!(w.rx.has_changed().unwrap());
        assert_eq!(counts(&w.rx.borrow_and_update()), (1, 1, 0, 1));
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), w.rx.changed()).await.unwrap().unwrap();
        assert_eq!(counts(&w.rx.borrow()), (0, 0, 0, 0));
        assert!(started.elapsed() >= Duration::from_millis(250), "expired early: {:?}", started.elapsed());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), sweeper).await.unwrap().unwrap();
    }

    #[test]
    fn watchers_see_changes_only() {
        let s = store();
        s.report(batch("e1", 1000, vec![ev("x", &["a"], 0)])).unwrap();
        let mut w = s.watch(id("x")).unwrap();
        assert_eq!(counts(&w.rx.borrow_and_update()), (1, 1, 0, 1), "the current value at once");
        // The same counts again (other vid, same numbers): nothing to send.
        s.report(batch("e1", 1000, vec![ev("x", &["b"], 0)])).unwrap();
        assert!(!w.rx.has_changed().unwrap());
        // Other events do not wake this watcher.
        s.report(batch("e2", 1000, vec![ev("y", &["a"], 0)])).unwrap();
        assert!(!w.rx.has_changed().unwrap());
        s.report(batch("e2", 1000, vec![ev("x", &["a"], 0)])).unwrap();
        assert!(w.rx.has_changed().unwrap());
        assert_eq!(counts(&w.rx.borrow_and_update()), (2, 2, 0, 2));
        // The edge dropping the event is a change too.
        s.report(batch("e1", 1000, vec![])).unwrap();
        assert_eq!(counts(&w.rx.borrow_and_update()), (1, 1, 0, 1));
    }

    #[test]
    fn watch_channels_go_with_their_last_watcher() {
        let s = store();
        let a = s.watch(id("x")).unwrap();
        let b = s.watch(id("x")).unwrap();
        assert_eq!(s.watched_events(), 1);
        drop(a);
        assert_eq!(s.watched_events(), 1);
        drop(b);
        assert_eq!(s.watched_events(), 0);
        // A later watcher gets a fresh channel with the current value.
        s.report(batch("e1", 1000, vec![ev("x", &[], 4)])).unwrap();
        let c = s.watch(id("x")).unwrap();
        assert_eq!(counts(&c.rx.borrow()), (4, 0, 4, 1));
    }

    #[test]
    fn watched_events_are_bounded() {
        let s = store();
        let watches: Vec<_> =
            (0..MAX_WATCHED_EVENTS).map(|i| s.watch(id(&format!("w{i}"))).unwrap()).collect();
        assert_eq!(s.watch(id("one-more")).unwrap_err(), WatchError::TooManyWatched(MAX_WATCHED_EVENTS));
        // Already watched events still take watchers.
        let again = s.watch(id("w0")).unwrap();
        drop(watches);
        assert_eq!(s.watched_events(), 1);
        drop(again);
        assert!(s.watch(id("one-more")).is_ok());
    }

    #[test]
    fn the_1025th_edge_is_refused_until_one_expires() {
        let s = store();
        let t0 = Instant::now();
        for i in 0..MAX_EDGES {
            let interval = if i == 7 { 100 } else { 60_000 };
            s.report_at(batch(&format!("edge-{i}"), interval, vec![]), t0).unwrap();
        }
        let extra = || batch("edge-extra", 1000, vec![ev("x", &["a"], 0)]);
        assert_eq!(s.report_at(extra(), t0).unwrap_err(), BatchError::TooManyEdges(MAX_EDGES));
        assert_eq!(counts(&s.get(&id("x"))), (0, 0, 0, 0), "nothing stored");
        // Known edges keep reporting.
        s.report_at(batch("edge-3", 1000, vec![]), t0).unwrap();
        // Once edge-7 is past its deadline its slot is reused at once.
        s.report_at(extra(), t0 + Duration::from_millis(300)).unwrap();
        assert_eq!(s.edges(), MAX_EDGES);
    }

    fn owner(name: &str) -> Owner {
        Some(Arc::from(name))
    }

    #[test]
    fn a_client_inventing_edge_ids_fills_only_its_own_budget() {
        let s = store();
        let t0 = Instant::now();
        s.report_for(owner("edges"), batch("edge-a", 60_000, vec![ev("x", &["ann"], 0)])).unwrap();
        let mut refused = 0;
        for i in 0..2_000 {
            let fake = batch(&format!("fake-{i}"), 60_000, vec![ev("x", &[], 1)]);
            match s.report_owned_at(owner("evil"), fake, t0) {
                Ok(_) => {}
                Err(BatchError::TooManyEdges(MAX_EDGES)) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(refused, 2_000 - MAX_EDGES);
        // The real edge keeps reporting, and a new edge of another client is
        // still admitted.
        s.report_for(owner("edges"), batch("edge-a", 60_000, vec![ev("x", &["ann", "bob"], 0)])).unwrap();
        s.report_for(owner("edges"), batch("edge-b", 60_000, vec![ev("x", &["carl"], 0)])).unwrap();
        let p = s.get(&id("x"));
        assert_eq!(p.vids, ["ann", "bob", "carl"]);
        assert_eq!((p.identified, p.edges), (3, 2 + MAX_EDGES as u32));
        // The same edge id under another client is another edge: nobody else
        // can replace (or empty) edge-a's batch.
        assert_eq!(
            s.report_for(owner("evil"), batch("edge-a", 60_000, vec![])).unwrap_err(),
            BatchError::TooManyEdges(MAX_EDGES)
        );
        s.report_for(owner("other"), batch("edge-a", 60_000, vec![])).unwrap();
        s.report_for(owner("edges"), batch("fake-0", 60_000, vec![])).unwrap();
        assert_eq!(s.get(&id("x")).vids, ["ann", "bob", "carl"]);
        assert_eq!(s.edges(), 3 + MAX_EDGES + 1);
    }

    #[test]
    fn each_client_has_its_own_share_of_entries() {
        let s = store();
        s.lock().usage.insert(owner("evil"), Usage { edges: 0, stored: MAX_STORED_ENTRIES - 1 });
        let err = s.report_for(owner("evil"), batch("e", 1000, vec![ev("x", &["a", "b"], 0)])).unwrap_err();
        assert_eq!(err, BatchError::Full(MAX_STORED_ENTRIES));
        s.report_for(owner("edges"), batch("e", 1000, vec![ev("x", &["a", "b"], 0)])).unwrap();
        assert_eq!(s.get(&id("x")).identified, 2);
    }

    #[test]
    fn owners_budgets_follow_expiry() {
        let s = store();
        let t0 = Instant::now();
        s.report_owned_at(owner("a"), batch("e1", 100, vec![ev("x", &["v"], 0)]), t0).unwrap();
        s.report_owned_at(owner("a"), batch("e2", 1000, vec![ev("x", &["w"], 0)]), t0).unwrap();
        s.report_owned_at(owner("b"), batch("e1", 100, vec![ev("x", &[], 2)]), t0).unwrap();
        let usage = |s: &PresenceStore, o: &str| {
            let u = s.lock().usage(&owner(o));
            (u.edges, u.stored)
        };
        assert_eq!((usage(&s, "a"), usage(&s, "b")), ((2, 4), (1, 1)));
        assert_eq!(s.expire_at(t0 + Duration::from_millis(300)), 2);
        assert_eq!((usage(&s, "a"), usage(&s, "b")), ((1, 2), (0, 0)));
        assert_eq!(s.lock().usage.len(), 1, "an owner without edges is forgotten");
        assert_eq!(counts(&s.get(&id("x"))), (1, 1, 0, 1));
    }

    #[test]
    fn get_at_most_bounds_the_ids_and_keeps_the_counts_exact() {
        let s = store();
        let vids: Vec<String> = (0..1_000).map(|i| format!("v{i:04}")).collect();
        let refs: Vec<&str> = vids.iter().map(String::as_str).collect();
        s.report(batch("e1", 1000, vec![ev("x", &refs, 3)])).unwrap();
        let p = s.get_at_most(&id("x"), 10);
        assert_eq!((p.viewers, p.identified, p.anonymous), (1_003, 1_000, 3));
        assert_eq!(p.vids.len(), 10);
        assert!(p.truncated);
        assert!(p.vids.windows(2).all(|w| w[0] < w[1]), "sorted: {:?}", p.vids);
        assert!(p.vids.iter().all(|v| vids.contains(v)), "real viewer ids");
        let all = s.get_at_most(&id("x"), 1_000);
        assert_eq!((all.vids, all.truncated), (vids.clone(), false));
        let none = s.get_at_most(&id("x"), 0);
        assert!(none.vids.is_empty() && none.truncated && none.identified == 1_000);
        assert!(!s.get_at_most(&id("nobody"), 0).truncated);
    }

    #[test]
    fn the_store_is_bounded_in_entries() {
        let s = store();
        {
            // Pretend other edges already hold almost everything.
            s.lock().usage.insert(None, Usage { edges: 0, stored: MAX_STORED_ENTRIES - 3 });
        }
        s.report(batch("e1", 1000, vec![ev("x", &["a", "b"], 0)])).unwrap();
        let err = s.report(batch("e2", 1000, vec![ev("y", &[], 1)])).unwrap_err();
        assert_eq!(err, BatchError::Full(MAX_STORED_ENTRIES));
        // An edge may still shrink or keep its own share.
        s.report(batch("e1", 1000, vec![ev("x", &["c"], 1)])).unwrap();
        s.report(batch("e2", 1000, vec![ev("y", &[], 1)])).unwrap();
    }

    #[test]
    fn invalid_batches_change_nothing() {
        let s = store();
        s.report(batch("e1", 1000, vec![ev("x", &["a"], 1)])).unwrap();
        // The second event is bad: the first must not be applied either.
        let err = invalid(s.report(batch("e1", 1000, vec![ev("y", &["b"], 0), ev("../x", &[], 0)])));
        assert_eq!(err, InvalidBatch::EventId { index: 1, source: InvalidEventId::BadCharacter });
        assert_eq!(counts(&s.get(&id("x"))), (2, 1, 1, 1));
        assert_eq!(counts(&s.get(&id("y"))), (0, 0, 0, 0));
        assert_eq!(s.edges(), 1);
        invalid(s.report(batch("e2", 1000, vec![ev("y", &["bad vid"], 0)])));
        assert_eq!(s.edges(), 1, "an invalid batch does not register its edge");
    }

    #[test]
    fn hostile_ids_are_refused() {
        let s = store();
        for edge in ["", &"e".repeat(65), "a/b", "a b", "é", "a\nb", "e\0"] {
            assert_eq!(invalid(s.report(batch(edge, 1000, vec![]))), InvalidBatch::EdgeId, "{edge:?}");
        }
        assert!(s.report(batch(&"e".repeat(64), 1000, vec![])).is_ok());
        for (event, why) in [
            ("", InvalidEventId::Empty),
            ("..", InvalidEventId::OnlyDots),
            ("a?b", InvalidEventId::BadCharacter),
            (&"x".repeat(129), InvalidEventId::TooLong),
        ] {
            let err = invalid(s.report(batch("e", 1000, vec![ev("ok", &[], 0), ev(event, &[], 0)])));
            assert_eq!(err, InvalidBatch::EventId { index: 1, source: why }, "{event:?}");
        }
        for (vid, why) in [
            ("", InvalidViewerId::Empty),
            ("<script>", InvalidViewerId::BadCharacter),
            (&"v".repeat(65), InvalidViewerId::TooLong),
        ] {
            let err = invalid(s.report(batch("e", 1000, vec![ev("x", &["ok", vid], 0)])));
            assert_eq!(err, InvalidBatch::ViewerId { index: 0, vid: 1, source: why }, "{vid:?}");
            assert!(!err.to_string().contains("script") && !err.to_string().contains('\n'), "{err}");
        }
        let err =
            invalid(s.report(batch("e", 1000, vec![ev("x", &[], 0), ev("y", &[], 0), ev("x", &[], 1)])));
        assert_eq!(err, InvalidBatch::DuplicateEvent { index: 2 });
    }

    #[test]
    fn intervals_are_bounded() {
        let s = store();
        for ms in [0, 99, 600_001, u32::MAX] {
            assert_eq!(invalid(s.report(batch("e", ms, vec![]))), InvalidBatch::Interval, "{ms}");
        }
        for ms in [100, 600_000] {
            assert!(s.report(batch("e", ms, vec![])).is_ok(), "{ms}");
        }
    }

    #[test]
    fn counts_per_batch_are_bounded() {
        let s = store();
        let too_many_events = (0..=MAX_EVENTS_PER_BATCH).map(|_| EventViewers::default()).collect();
        assert_eq!(invalid(s.report(batch("e", 1000, too_many_events))), InvalidBatch::TooManyEvents);

        let vids = |n: usize| (0..n).map(|i| format!("v{i}")).collect::<Vec<_>>();
        let event = |id: &str, vids: Vec<String>| EventViewers { event_id: id.into(), vids, anonymous: 0 };
        let err = invalid(s.report(batch(
            "e",
            1000,
            vec![event("a", vec![]), event("b", vids(MAX_VIDS_PER_EVENT + 1))],
        )));
        assert_eq!(err, InvalidBatch::TooManyVids { index: 1 });
        let at_limit = s.report(batch("e", 1000, vec![event("a", vids(MAX_VIDS_PER_EVENT))])).unwrap();
        assert_eq!(at_limit.presence[0].identified as usize, MAX_VIDS_PER_EVENT);

        // Eleven events of 100,000 vids each: every event is fine, the batch
        // is not. Vids are never parsed (they would be valid anyway).
        let per_event = vids(MAX_VIDS_PER_EVENT);
        let events = (0..=MAX_VIDS_PER_BATCH / MAX_VIDS_PER_EVENT)
            .map(|i| event(&format!("ev{i}"), per_event.clone()))
            .collect();
        assert_eq!(invalid(s.report(batch("e", 1000, events))), InvalidBatch::TooManyVidsInBatch);

        let err = invalid(s.report(batch("e", 1000, vec![ev("x", &[], MAX_ANONYMOUS + 1)])));
        assert_eq!(err, InvalidBatch::TooManyAnonymous { index: 0 });
        let ack = s.report(batch("e", 1000, vec![ev("x", &[], MAX_ANONYMOUS)])).unwrap();
        assert_eq!(ack.presence[0].viewers, MAX_ANONYMOUS);
        assert_eq!(s.get(&id("a")).viewers, 0, "the valid batch replaced the one at the limit");
    }

    #[test]
    fn shutting_down_refuses_batches_and_watches() {
        let stop = CancellationToken::new();
        let s = PresenceStore::new(stop.clone());
        stop.cancel();
        assert_eq!(s.report(batch("e", 1000, vec![])).unwrap_err(), BatchError::ShuttingDown);
        assert_eq!(s.watch(id("x")).unwrap_err(), WatchError::ShuttingDown);
    }

    #[test]
    fn forward_rounds_include_events_that_just_lost_their_viewers_once() {
        let s = store();
        s.report(batch("e1", 1000, vec![ev("x", &["a"], 0), ev("y", &[], 1)])).unwrap();
        let sorted = |mut v: Vec<EventId>| {
            v.sort();
            v
        };
        assert_eq!(sorted(s.forward_round()), [id("x"), id("y")]);
        s.report(batch("e1", 1000, vec![ev("x", &["a"], 0)])).unwrap();
        assert_eq!(sorted(s.forward_round()), [id("x"), id("y")], "y once more, with zero");
        assert_eq!(sorted(s.forward_round()), [id("x")]);
        // Lost and found again between two rounds: listed once.
        s.report(batch("e1", 1000, vec![])).unwrap();
        s.report(batch("e1", 1000, vec![ev("x", &["b"], 0)])).unwrap();
        assert_eq!(sorted(s.forward_round()), [id("x")]);
    }

    #[test]
    fn big_batches_replace_incrementally() {
        // Not a benchmark: checks that replacing a large batch with an
        // overlapping one leaves exactly the new state.
        let s = store();
        let vids = |from: usize, to: usize| (from..to).map(|i| format!("v{i}")).collect::<Vec<_>>();
        let big = |vids| batch("e1", 1000, vec![EventViewers { event_id: "x".into(), vids, anonymous: 0 }]);
        s.report(big(vids(0, 50_000))).unwrap();
        s.report(batch(
            "e2",
            1000,
            vec![EventViewers { event_id: "x".into(), vids: vids(0, 10), anonymous: 0 }],
        ))
        .unwrap();
        let ack = s.report(big(vids(40_000, 60_000))).unwrap();
        assert_eq!(ack.presence[0].identified, 20_010);
        assert_eq!(s.lock().stored, 1 + 20_000 + 1 + 10);
        s.report(big(vec![])).unwrap();
        assert_eq!(s.get(&id("x")).identified, 10);
    }
}
