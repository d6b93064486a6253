//! One upstream gRPC stream per watched event, shared by all of this edge's
//! browsers watching it.
//!
//! Each watched event has an entry with a `watch` channel holding the latest
//! [`Snapshot`]: browsers only ever need the latest state, so a browser that
//! reads slowly skips intermediate values instead of queueing them, and the
//! edge's memory per connection stays constant whatever the update rate. The
//! first browser of an event starts its upstream task; the last one leaving
//! cancels it. Events the poller reported ended are remembered (bounded) so
//! reconnecting browsers can be told to stop.

use crate::sse;
use bytes::Bytes;
use livepush::{
    EventId,
    proto::{LiveUpdate, State, SubscribeRequest, live_feed_client::LiveFeedClient},
    recent::RecentMap,
};
use rand::Rng;
use std::{
    collections::{HashMap, hash_map::Entry as MapEntry},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Code, transport::Channel};
use tracing::{debug, info, warn};

/// What browsers of an event should have, encoded once for all of them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `seq` of the update that last changed the data (0: no data yet). It is
    /// the SSE `id` of `data_frame`.
    pub data_seq: u64,
    /// `id: <data_seq>` + `data: <json>`: an unnamed event, so
    /// `EventSource.onmessage` gets the JSON exactly as polling fetched it.
    pub data_frame: Option<Bytes>,
    /// The data may be outdated: the poller says the media service fails, or
    /// this edge lost its upstream stream.
    pub stale: bool,
    /// The poller said the event is over.
    pub ended: bool,
    /// Cluster-wide viewer count, once known, and its `presence` event.
    pub viewers: Option<u32>,
    pub presence_frame: Option<Bytes>,
}

/// Shortest and longest wait before resubscribing after the poller failed.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(10);
/// Ended events remembered per edge, and for how long.
const MAX_ENDED: usize = 10_000;
const ENDED_TTL: Duration = Duration::from_secs(600);

/// Handle to the feeds of this edge; clones share them.
#[derive(Clone)]
pub struct Feeds {
    inner: Arc<Inner>,
}

struct Inner {
    client: LiveFeedClient<Channel>,
    table: Mutex<Table>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
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
}

impl Feeds {
    pub fn new(poller: Channel, shutdown: CancellationToken) -> Self {
        let table =
            Table { events: HashMap::new(), ended: RecentMap::new(MAX_ENDED, ENDED_TTL), next_generation: 0 };
        let inner = Inner {
            client: LiveFeedClient::new(poller),
            table: Mutex::new(table),
            tasks: TaskTracker::new(),
            shutdown,
        };
        Self { inner: Arc::new(inner) }
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
        let entry = match table.events.entry(id.clone()) {
            MapEntry::Occupied(o) => o.into_mut(),
            MapEntry::Vacant(v) => {
                let (tx, _) = watch::channel(Snapshot::default());
                let cancel = self.inner.shutdown.child_token();
                let task = upstream(self.clone(), id.clone(), tx.clone(), cancel.clone());
                self.inner.tasks.spawn(task);
                v.insert(Entry { tx, browsers: 0, cancel, generation })
            }
        };
        entry.browsers += 1;
        let rx = entry.tx.subscribe();
        let guard = WatchGuard { feeds: self.clone(), id, generation: entry.generation };
        Some(Watch { rx, _guard: guard })
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
                true
            });
        }
    }

    fn remember_ended(&self, id: &EventId) {
        self.lock().ended.insert(id.clone(), ());
    }

    fn release(&self, id: &EventId, generation: u64) {
        let mut table = self.lock();
        if let MapEntry::Occupied(mut o) = table.events.entry(id.clone()) {
            let entry = o.get_mut();
            if entry.generation == generation {
                entry.browsers -= 1;
                if entry.browsers == 0 {
                    entry.cancel.cancel();
                    o.remove();
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
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

/// Turns the poller's updates into snapshots. Updates carry a `seq` that
/// increases across poller restarts, so anything at or below the last one
/// seen is a repeat (a resubscription re-sends the current value) and only
/// clears the edge's own "upstream lost" staleness.
struct Publisher {
    tx: watch::Sender<Snapshot>,
    last_seq: u64,
    data: String,
    poller_stale: bool,
    upstream_lost: bool,
}

impl Publisher {
    fn update(&mut self, update: &LiveUpdate) {
        let state = State::try_from(update.state).unwrap_or(State::Unspecified);
        if update.seq > self.last_seq {
            self.last_seq = update.seq;
            self.poller_stale = state == State::Stale;
            let has_data = !update.data.is_empty();
            if has_data && update.data != self.data {
                self.data.clone_from(&update.data);
                let id = update.seq.to_string();
                let frame = sse::Event { id: Some(&id), event: None, data: &self.data }.encode();
                self.tx.send_modify(|s| {
                    s.data_seq = update.seq;
                    s.data_frame = Some(frame);
                });
            }
            if state == State::Ended {
                self.tx.send_modify(|s| s.ended = true);
            }
        }
        self.upstream_lost = false;
        self.publish_staleness();
    }

    fn lost(&mut self) {
        self.upstream_lost = true;
        self.publish_staleness();
    }

    fn publish_staleness(&self) {
        let stale = self.poller_stale || self.upstream_lost;
        self.tx.send_if_modified(|s| std::mem::replace(&mut s.stale, stale) != stale);
    }
}

/// Holds the upstream subscription of one event until cancelled or ended,
/// resubscribing with backoff and jitter when the poller fails or restarts.
async fn upstream(feeds: Feeds, id: EventId, tx: watch::Sender<Snapshot>, cancel: CancellationToken) {
    let mut client = feeds.inner.client.clone();
    let mut publisher =
        Publisher { tx, last_seq: 0, data: String::new(), poller_stale: false, upstream_lost: false };
    let mut failures = 0u32;
    debug!(event_id = %id, "upstream subscribing");
    loop {
        let request = SubscribeRequest { event_id: id.to_string() };
        let response = tokio::select! {
            _ = cancel.cancelled() => break,
            r = client.subscribe(request) => r,
        };
        match response {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let message = tokio::select! {
                        _ = cancel.cancelled() => return,
                        m = stream.message() => m,
                    };
                    match message {
                        Ok(Some(update)) => {
                            failures = 0;
                            publisher.update(&update);
                            if update.state == State::Ended as i32 {
                                info!(event_id = %id, "event ended");
                                feeds.remember_ended(&id);
                                return;
                            }
                        }
                        Ok(None) => {
                            debug!(event_id = %id, "upstream stream closed by the poller");
                            break;
                        }
                        Err(status) => {
                            warn!(event_id = %id, %status, "upstream stream failed");
                            break;
                        }
                    }
                }
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                // Ids are validated before they get here; if the poller
                // disagrees, retrying cannot help.
                warn!(event_id = %id, %status, "poller refused the event id");
                return;
            }
            Err(status) => warn!(event_id = %id, %status, "subscribe failed"),
        }
        publisher.lost();
        failures = failures.saturating_add(1);
        let wait = RESUBSCRIBE_MIN.saturating_mul(1 << failures.min(10)).min(RESUBSCRIBE_MAX);
        let wait = wait.mul_f64(rand::rng().random_range(0.5..=1.0));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    debug!(event_id = %id, "upstream closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(seq: u64, state: State, data: &str) -> LiveUpdate {
        LiveUpdate {
            event_id: "e".into(),
            seq,
            data: data.into(),
            fetched_at_unix_ms: 0,
            state: state as i32,
        }
    }

    #[test]
    fn publisher_moves_data_seq_only_on_new_data() {
        let (tx, rx) = watch::channel(Snapshot::default());
        let mut p =
            Publisher { tx, last_seq: 0, data: String::new(), poller_stale: false, upstream_lost: false };
        p.update(&update(10, State::Live, "{}"));
        assert_eq!((rx.borrow().data_seq, rx.borrow().stale), (10, false));
        p.update(&update(11, State::Stale, "{}"));
        assert_eq!((rx.borrow().data_seq, rx.borrow().stale), (10, true));
        p.update(&update(12, State::Live, "{}"));
        assert_eq!((rx.borrow().data_seq, rx.borrow().stale), (10, false));
        // Upstream lost, then the resubscription repeats seq 12.
        p.lost();
        assert!(rx.borrow().stale);
        p.update(&update(12, State::Live, "{}"));
        assert_eq!((rx.borrow().data_seq, rx.borrow().stale), (10, false));
        // A restarted poller: higher seq, same data, nothing to resend.
        p.update(&update(500, State::Live, "{}"));
        assert_eq!(rx.borrow().data_seq, 10);
        p.update(&update(501, State::Live, r#"{"a":1}"#));
        assert_eq!(rx.borrow().data_seq, 501);
        p.update(&update(502, State::Ended, r#"{"a":1}"#));
        assert!(rx.borrow().ended);
    }
}
