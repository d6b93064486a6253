//! The merge: per event, a [`Tally`] of distinct viewer ids (each with the
//! number of edge entries listing it), anonymous streams and edges; per
//! edge, its last batch, so that replacing it subtracts exactly what it
//! added. Everything here runs under the store's lock and costs the size of
//! the batches involved, never of everything stored.

use super::{
    validate::{EdgeEvent, ValidBatch},
    *,
};

/// One reporting edge: its owner and its `edge_id` (which follows the
/// viewer-id rules, hence the type).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct EdgeKey {
    pub(super) owner: Owner,
    pub(super) edge: ViewerId,
}

impl EdgeKey {
    /// The client's name for logs (`-` without a clients file).
    pub(super) fn client(&self) -> &str {
        self.owner.as_deref().unwrap_or("-")
    }
}

/// What one owner holds, bounded by [`MAX_EDGES`] and [`MAX_STORED_ENTRIES`].
#[derive(Default, Clone, Copy)]
pub(super) struct Usage {
    pub(super) edges: usize,
    pub(super) stored: usize,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) edges: HashMap<EdgeKey, Edge>,
    /// Per owner with at least one edge.
    pub(super) usage: HashMap<Owner, Usage>,
    /// Only events with at least one viewer on some edge.
    pub(super) events: HashMap<EventId, Tally>,
    pub(super) watched: HashMap<EventId, Watched>,
    /// Sum of [`Edge::weight`] over all edges.
    pub(super) stored: usize,
    /// Events that lost their last viewer since the forwarder last asked;
    /// `None` until it first asks, so nothing accumulates when forwarding is
    /// off.
    pub(super) vanished: Option<HashSet<EventId>>,
    /// Viewers over all events: distinct vids per event plus anonymous.
    pub(super) viewers: u64,
    /// What this store has added to the process's presence gauges.
    pub(super) gauged: Sizes,
}

/// The sizes behind the presence gauges. Several stores in one process (the
/// tests) each add their own share, so the gauges move by deltas.
#[derive(Default, Clone, Copy)]
pub(super) struct Sizes {
    pub(super) edges: usize,
    pub(super) events: usize,
    pub(super) viewers: u64,
    pub(super) watched: usize,
}

/// One edge's last batch.
pub(super) struct Edge {
    pub(super) expires_at: Instant,
    /// Only the events listed with at least one viewer.
    pub(super) events: Vec<EdgeEvent>,
    /// Its share of [`MAX_STORED_ENTRIES`].
    pub(super) weight: usize,
}

/// One event merged over all edges.
#[derive(Default)]
pub(super) struct Tally {
    /// Distinct viewer ids, each with the number of edge entries listing it.
    pub(super) vids: HashMap<ViewerId, u32>,
    pub(super) anonymous: u64,
    /// Edges listing this event with viewers; the tally is dropped at zero.
    pub(super) edges: u32,
}

pub(super) struct Watched {
    pub(super) tx: watch::Sender<EventPresence>,
    pub(super) watchers: usize,
}

impl State {
    /// Stores `batch` in place of the edge's previous one; returns the ack and
    /// the replaced edge (to be freed outside the lock).
    pub(super) fn replace(
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
    pub(super) fn expire_due(&mut self, now: Instant) -> Vec<(EdgeKey, Edge)> {
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
    pub(super) fn usage(&self, owner: &Owner) -> Usage {
        self.usage.get(owner).copied().unwrap_or_default()
    }

    /// Brings the presence gauges to this store's current sizes.
    pub(super) fn update_gauges(&mut self) {
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
    pub(super) fn gauge(&mut self, now: Sizes) {
        let m = livepush::metrics::poller();
        let was = std::mem::replace(&mut self.gauged, now);
        m.presence_edges.increment(now.edges as f64 - was.edges as f64);
        m.presence_events.increment(now.events as f64 - was.events as f64);
        m.presence_viewers.increment(now.viewers as f64 - was.viewers as f64);
        m.presence_watched.increment(now.watched as f64 - was.watched as f64);
    }

    pub(super) fn add(&mut self, event: &EdgeEvent) {
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

    pub(super) fn subtract(&mut self, event: &EdgeEvent) {
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
    pub(super) fn publish(&self, id: &EventId) {
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
    pub(super) fn presence(&self, id: &EventId) -> EventPresence {
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

pub(super) fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(super) fn log_expired(expired: &[(EdgeKey, Edge)]) {
    for (id, edge) in expired {
        let (edge_id, client, events) = (&id.edge, id.client(), edge.events.len());
        info!(%edge_id, client, events, "edge stopped reporting presence; its viewers expired");
    }
}
