//! One upstream gRPC stream per watched event, shared by all of this edge's
//! browsers watching it.
//!
//! Each watched event has an entry with a `watch` channel holding the latest
//! encoded [`Frame`]: browsers only ever need the latest value, so a browser
//! that reads slowly skips intermediate frames instead of queueing them, and
//! the edge's memory per connection stays constant. The first browser of an
//! event starts its upstream task; the last one leaving cancels it.

use crate::sse;
use bytes::Bytes;
use livepush::{
    EventId,
    proto::{LiveUpdate, State, SubscribeRequest, live_feed_client::LiveFeedClient},
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

/// An update encoded once as an SSE event; every browser writes the same bytes.
#[derive(Debug)]
pub struct Frame {
    pub seq: u64,
    pub state: State,
    pub bytes: Bytes,
}

impl Frame {
    /// LIVE data goes out as an unnamed event so `EventSource.onmessage` gets
    /// it exactly as the old polling code got the JSON; STALE and ENDED are
    /// named events that `onmessage` ignores.
    pub fn from_update(update: &LiveUpdate) -> Self {
        let state = State::try_from(update.state).unwrap_or(State::Unspecified);
        let id = update.seq.to_string();
        let (event, data) = match state {
            State::Stale => (Some("stale"), r#"{"state":"stale"}"#),
            State::Ended => (Some("end"), r#"{"state":"ended"}"#),
            State::Live | State::Unspecified => (None, update.data.as_str()),
        };
        let bytes = sse::Event { id: Some(&id), event, data }.encode();
        Self { seq: update.seq, state, bytes }
    }
}

/// Latest frame of an event; `None` until the poller sent one.
pub type Latest = Option<Arc<Frame>>;

/// Shortest and longest wait before resubscribing after the poller failed.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(10);

/// Handle to the feeds of this edge; clones share them.
#[derive(Clone)]
pub struct Feeds {
    inner: Arc<Inner>,
}

struct Inner {
    client: LiveFeedClient<Channel>,
    state: Mutex<Table>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

#[derive(Default)]
struct Table {
    events: HashMap<EventId, Entry>,
    next_generation: u64,
}

struct Entry {
    tx: watch::Sender<Latest>,
    browsers: usize,
    cancel: CancellationToken,
    generation: u64,
}

impl Feeds {
    pub fn new(poller: Channel, shutdown: CancellationToken) -> Self {
        let inner = Inner {
            client: LiveFeedClient::new(poller),
            state: Mutex::default(),
            tasks: TaskTracker::new(),
            shutdown,
        };
        Self { inner: Arc::new(inner) }
    }

    /// Starts watching `id` for one browser.
    pub fn watch(&self, id: EventId) -> Watch {
        let mut state = self.lock();
        let generation = state.next_generation;
        state.next_generation += 1;
        let entry = match state.events.entry(id.clone()) {
            MapEntry::Occupied(o) => o.into_mut(),
            MapEntry::Vacant(v) => {
                let (tx, _) = watch::channel(None);
                let cancel = self.inner.shutdown.child_token();
                let task = upstream(self.inner.client.clone(), id.clone(), tx.clone(), cancel.clone());
                self.inner.tasks.spawn(task);
                v.insert(Entry { tx, browsers: 0, cancel, generation })
            }
        };
        entry.browsers += 1;
        let rx = entry.tx.subscribe();
        let guard = WatchGuard { feeds: self.clone(), id, generation: entry.generation };
        Watch { rx, _guard: guard }
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

    fn release(&self, id: &EventId, generation: u64) {
        let mut state = self.lock();
        if let MapEntry::Occupied(mut o) = state.events.entry(id.clone()) {
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
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One browser's view of an event; dropping it (the browser went away) lets
/// the upstream stream close when it was the last.
pub struct Watch {
    pub rx: watch::Receiver<Latest>,
    _guard: WatchGuard,
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

/// Holds the upstream subscription of one event until cancelled or ended,
/// resubscribing with backoff and jitter when the poller fails or restarts.
async fn upstream(
    mut client: LiveFeedClient<Channel>,
    id: EventId,
    tx: watch::Sender<Latest>,
    cancel: CancellationToken,
) {
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
                            let frame = Arc::new(Frame::from_update(&update));
                            let ended = frame.state == State::Ended;
                            tx.send_replace(Some(frame));
                            if ended {
                                info!(event_id = %id, "event ended");
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
