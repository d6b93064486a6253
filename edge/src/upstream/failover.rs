//! Each watched event's upstream subscription, and its failover: always
//! with the event's owner among the live pollers, moving when the owner
//! changes (a poller dies, drains, or returns), resubscribing with backoff
//! and jitter when it fails, and turning the poller's updates into the
//! [`Snapshot`] every browser of the event reads (see [`crate::feeds`] for
//! the table of events this serves).
//!
//! No failure is silent: a `Subscribe` that opens no stream within
//! [`SUBSCRIBE_TIMEOUT`] or is refused marks its browsers `stale` (even
//! before a first value), is retried with backoff, counted in
//! `livepush_edge_upstream_subscribe_failures_total{reason}`, and logged
//! once per poller and cause (see [`LogOnce`]), not once per event.

use crate::{
    snapshot::Snapshot,
    sse,
    upstream::{
        channels::Lease,
        pollers::{Live, Member, Pollers},
    },
};
use livepush::{
    EventId,
    metrics::{self, GaugeGuard},
    proto::{LiveUpdate, State, SubscribeRequest},
};
use rand::Rng;
use std::{collections::HashMap, net::SocketAddr, sync::Mutex, time::Duration};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

/// Shortest and longest wait before resubscribing after the poller failed.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(10);
/// Events move back to a returning (or new) poller within this long, spread
/// evenly, so its first polls do not arrive as one burst.
const REBALANCE_SPREAD: Duration = Duration::from_secs(5);
/// Seqs are microseconds since 1970 (about 2^51 today) plus changes; one at
/// or beyond 2^53 comes from a buggy or hostile poller. Refusing it keeps
/// every id a browser sees exact as a JavaScript number and far from
/// overflow, so such a poller cannot stall an event's feed at `u64::MAX`.
const MAX_SEQ: u64 = 1 << 53;
/// Longest a `Subscribe` may take to open its stream.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Immediate retries on another channel after a poller said a connection
/// is full, before the usual backoff applies.
const MAX_CHANNEL_RETRIES: u32 = 3;
/// One warning per poller and cause per this long; repeats are counted and
/// logged at debug.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What an event's upstream task needs of the table of watched events
/// ([`crate::feeds::Feeds`]), so that this module does not depend on it.
pub(crate) trait Table: Send + Sync + 'static {
    /// The pollers and which one owns each event.
    fn pollers(&self) -> &Pollers;
    /// One warning per poller and cause.
    fn log(&self) -> &LogOnce;
    /// The poller said the event is over.
    fn remember_ended(&self, id: &EventId);
    /// The poller whose stream feeds the event now.
    fn set_source(&self, id: &EventId, poller: SocketAddr);
}

/// Turns the poller's updates into snapshots.
///
/// Updates carry a `seq` that a feed raises on every change and starts at its
/// start time in microseconds, so within one upstream stream anything at or
/// below the last `seq` is a repeat, and a feed started later (a restarted
/// poller, or the next owner after a failover) continues above the last one.
/// Browsers only ever get data that differs from what they have, so a new
/// upstream's first value, which repeats the current one, sends nothing.
#[doc(hidden)] // Public for the micro-benchmarks (edge/benches) only.
pub struct Publisher {
    tx: watch::Sender<Snapshot>,
    /// `{"event_id":"…","data":`: the start of the multi-event envelope.
    envelope: String,
    /// Last `seq` taken from the current upstream stream.
    source_seq: u64,
    data: String,
    poller_stale: bool,
    upstream_lost: bool,
}

impl Publisher {
    pub fn new(tx: watch::Sender<Snapshot>, id: &EventId) -> Self {
        let envelope = format!(r#"{{"event_id":"{}","data":"#, id.as_str());
        Self { tx, envelope, source_seq: 0, data: String::new(), poller_stale: false, upstream_lost: false }
    }

    /// The next updates come from a new stream (another poller, or the same
    /// one resubscribed), whose `seq` restarts from its feed's own base.
    fn new_source(&mut self) {
        self.source_seq = 0;
    }

    pub fn update(&mut self, update: &LiveUpdate) {
        let state = State::try_from(update.state).unwrap_or(State::Unspecified);
        if update.seq > self.source_seq {
            self.source_seq = update.seq;
            self.poller_stale = state == State::Stale;
            let has_data = !update.data.is_empty();
            if has_data && update.data != self.data {
                self.data.clone_from(&update.data);
                // Browsers compare ids to skip what they have: keep them
                // increasing even if another poller's clock lags behind.
                let seq = update.seq.max(self.tx.borrow().data_seq.saturating_add(1));
                let id = seq.to_string();
                let frame = sse::Event { id: Some(&id), event: None, data: &self.data }.encode();
                // Event ids need no JSON escaping (`[A-Za-z0-9._~-]`), and
                // the data is the poller's one-line JSON.
                let envelope = format!("{}{}}}", self.envelope, self.data);
                let tagged = sse::Event { id: None, event: None, data: &envelope }.encode();
                self.tx.send_modify(|s| {
                    s.data_seq = seq;
                    s.data_frame = Some(frame);
                    s.tagged.data = Some(tagged);
                });
            }
            if state == State::Ended {
                self.tx.send_modify(|s| s.ended = true);
            }
        }
        self.upstream_lost = false;
        self.publish_staleness();
    }

    /// The upstream stream could not be opened: browsers are told at once,
    /// with or without a value, so none waits in silence.
    fn failed(&mut self) {
        self.upstream_lost = true;
        self.publish_staleness();
    }

    /// The poller refuses the event for good: browsers get `end`.
    fn refused(&mut self) {
        self.tx.send_modify(|s| s.ended = true);
    }

    /// No upstream now. Browsers are told only once they have data that may
    /// go stale: before the first value, "stale" says nothing useful.
    fn lost(&mut self) {
        if self.data.is_empty() {
            return;
        }
        self.upstream_lost = true;
        self.publish_staleness();
    }

    fn publish_staleness(&self) {
        let stale = self.poller_stale || self.upstream_lost;
        self.tx.send_if_modified(|s| std::mem::replace(&mut s.stale, stale) != stale);
    }
}

/// How one upstream subscription ended.
enum Outcome {
    /// The edge no longer needs the event (no browser left, or shutdown).
    Cancelled,
    /// The poller said the event is over.
    Ended,
    /// The poller refuses the event id; retrying cannot help.
    Refused,
    /// The poller's connection was full: another channel will take it.
    ChannelFull,
    /// The event belongs elsewhere now: its poller left the live set, or a
    /// poller that ranks higher for it (re)joined.
    Moved,
    Failed(Status),
}

/// Holds the upstream subscription of one event until cancelled or ended:
/// always with the event's owner among the live pollers, moving when the
/// owner changes, resubscribing with backoff and jitter when it fails.
pub(crate) async fn upstream<T: Table>(
    feeds: T,
    id: EventId,
    tx: watch::Sender<Snapshot>,
    cancel: CancellationToken,
) {
    let pollers = feeds.pollers().clone();
    let mut live = pollers.watch();
    let mut publisher = Publisher::new(tx, &id);
    let mut failures = 0u32;
    debug!(event_id = %id, "upstream subscribing");
    let mut channel_retries = 0u32;
    loop {
        let Some(owner) = owner(&id, &mut live, &mut publisher, &cancel).await else { break };
        publisher.new_source();
        match follow(&feeds, &id, &owner, &mut live, &mut publisher, &cancel).await {
            Outcome::Cancelled | Outcome::Ended => break,
            Outcome::Refused => {
                publisher.refused();
                feeds.remember_ended(&id);
                break;
            }
            Outcome::ChannelFull if channel_retries < MAX_CHANNEL_RETRIES => {
                channel_retries += 1;
                continue;
            }
            Outcome::ChannelFull => {
                failures = failures.saturating_add(1);
                publisher.failed();
            }
            Outcome::Moved => {
                debug!(event_id = %id, from = %owner.addr, "event moves to another poller");
                metrics::edge_upstream().upstream_failovers.increment(1);
                failures = 0;
                channel_retries = 0;
                continue;
            }
            Outcome::Failed(status) => {
                failures = failures.saturating_add(1);
                if suggests_gone(&status) {
                    pollers.suspect(owner.addr);
                }
                let next = live.borrow().owner(&id).map(|m| m.addr);
                if next.is_some_and(|next| next != owner.addr) && failures <= 3 {
                    // Failover: the next poller in this event's ranking takes
                    // it at once; browsers keep the value they have meanwhile.
                    info!(event_id = %id, from = %owner.addr, %status, "upstream failed; failing over");
                    metrics::edge_upstream().upstream_failovers.increment(1);
                    continue;
                }
                let _ = feeds.log().warn(owner.addr, cause(&status), &id, &status);
                publisher.failed();
            }
        }
        channel_retries = 0;
        let wait = RESUBSCRIBE_MIN.saturating_mul(1 << failures.min(10)).min(RESUBSCRIBE_MAX);
        let wait = wait.mul_f64(rand::rng().random_range(0.5..=1.0));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    debug!(event_id = %id, "upstream closed");
}

/// The event's owner now, or once a poller is live (browsers are told the
/// data may be outdated meanwhile); `None` when cancelled.
async fn owner(
    id: &EventId,
    live: &mut watch::Receiver<Live>,
    publisher: &mut Publisher,
    cancel: &CancellationToken,
) -> Option<Member> {
    loop {
        if let Some(owner) = live.borrow_and_update().owner(id) {
            return Some(owner.clone());
        }
        publisher.lost();
        tokio::select! {
            _ = cancel.cancelled() => return None,
            changed = live.changed() => changed.ok()?,
        }
    }
}

/// Subscribes to `owner` and publishes what it sends until something ends
/// the subscription.
async fn follow(
    feeds: &impl Table,
    id: &EventId,
    owner: &Member,
    live: &mut watch::Receiver<Live>,
    publisher: &mut Publisher,
    cancel: &CancellationToken,
) -> Outcome {
    let request = SubscribeRequest { event_id: id.to_string() };
    // The stream's place on one of the owner's connections, held as long as
    // the stream.
    let mut lease: Lease = owner.feeds.lease();
    let subscribed = tokio::select! {
        _ = cancel.cancelled() => return Outcome::Cancelled,
        r = tokio::time::timeout(SUBSCRIBE_TIMEOUT, lease.client.subscribe(request)) => r,
    };
    let response = subscribed.unwrap_or_else(|_| {
        Err(Status::deadline_exceeded(format!("no stream within {SUBSCRIBE_TIMEOUT:?}")))
    });
    let mut stream = match response {
        Ok(response) => {
            if let Some(limit) = max_streams(response.metadata()) {
                owner.feeds.learn_limit(limit);
            }
            feeds.set_source(id, owner.addr);
            response.into_inner()
        }
        Err(status) => {
            metrics::edge_subscribe_failure(cause(&status));
            if let Some(limit) = max_streams(status.metadata()) {
                owner.feeds.learn_limit(limit);
            }
            return match status.code() {
                // Ids are validated before they get here, by the same rules
                // as the poller's; if the poller disagrees anyway, retrying
                // cannot help.
                Code::InvalidArgument => {
                    warn!(event_id = %id, %status, "poller refused the event id");
                    Outcome::Refused
                }
                _ if is_channel_full(&status) => Outcome::ChannelFull,
                _ => Outcome::Failed(status),
            };
        }
    };
    let _open = GaugeGuard::new(&metrics::edge_upstream().upstream_streams);
    // Set when a poller that ranks higher for this event joins while ours is
    // still live: the move waits a random part of REBALANCE_SPREAD, so a
    // returning poller takes its events back gradually instead of all at once.
    let mut move_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Outcome::Cancelled,
            message = stream.message() => match message {
                Ok(Some(update)) if update.seq >= MAX_SEQ => {
                    warn!(event_id = %id, poller = %owner.addr, seq = update.seq, "poller sent an impossible seq; dropping its stream");
                    return Outcome::Failed(Status::out_of_range("seq beyond 2^53"));
                }
                Ok(Some(update)) => {
                    publisher.update(&update);
                    if update.state == State::Ended as i32 {
                        info!(event_id = %id, "event ended");
                        feeds.remember_ended(id);
                        return Outcome::Ended;
                    }
                }
                Ok(None) => return Outcome::Failed(Status::unavailable("the poller closed the stream")),
                Err(status) => return Outcome::Failed(status),
            },
            changed = live.changed() => {
                if changed.is_err() {
                    return Outcome::Cancelled;
                }
                let live = live.borrow_and_update();
                if !live.members().contains(owner) {
                    return Outcome::Moved;
                }
                if live.owner(id) == Some(owner) {
                    move_at = None;
                } else if move_at.is_none() {
                    let delay = REBALANCE_SPREAD.mul_f64(rand::rng().random_range(0.0..1.0));
                    move_at = Some(Instant::now() + delay);
                }
            }
            () = tokio::time::sleep_until(move_at.unwrap_or_else(Instant::now)), if move_at.is_some() => {
                return Outcome::Moved;
            }
        }
    }
}

/// The poller's per-connection stream limit, from its answer's metadata.
fn max_streams(metadata: &tonic::metadata::MetadataMap) -> Option<usize> {
    metadata.get("livepush-max-streams")?.to_str().ok()?.parse().ok()
}

/// The poller refused because this connection holds its limit.
fn is_channel_full(status: &Status) -> bool {
    status.code() == Code::ResourceExhausted
        && status.metadata().get("livepush-refusal").is_some_and(|v| v == "connection-streams")
}

/// A failed subscription's cause, as counted and logged.
fn cause(status: &Status) -> &'static str {
    match status.code() {
        Code::DeadlineExceeded => "timeout",
        _ if is_channel_full(status) => "connection_full",
        Code::ResourceExhausted => "refused",
        Code::InvalidArgument => "invalid",
        // The poller wants another token (--poller-token-file).
        Code::Unauthenticated | Code::PermissionDenied => "unauthorized",
        _ => "error",
    }
}

/// Warns once per poller and cause per [`LOG_EVERY`]: 12,000 events failing
/// for one reason are one line (with how many repeats it stands for), not
/// 12,000. Bounded: pollers are capped and causes are a fixed set.
#[derive(Default)]
pub(crate) struct LogOnce {
    /// Per (poller, cause): when it was last logged, and repeats since.
    last: Mutex<HashMap<(SocketAddr, &'static str), Logged>>,
}

#[derive(Default)]
struct Logged {
    at: Option<Instant>,
    repeats: u64,
}

impl LogOnce {
    /// Logs at warn if this poller and cause were quiet for [`LOG_EVERY`]
    /// (and says whether it did), at debug otherwise.
    fn warn(&self, poller: SocketAddr, cause: &'static str, id: &EventId, status: &Status) -> bool {
        let now = Instant::now();
        let mut last = livepush::sync::lock(&self.last, "log-once table");
        let logged = last.entry((poller, cause)).or_default();
        if logged.at.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            let repeats = logged.repeats;
            warn!(%poller, cause, event_id = %id, %status, repeats, "upstream subscription failed; retrying with backoff");
            *logged = Logged { at: Some(now), repeats: 0 };
            true
        } else {
            logged.repeats += 1;
            debug!(%poller, cause, event_id = %id, %status, "upstream subscription failed again");
            false
        }
    }
}

/// Whether a failed call suggests the poller itself is gone (rather than
/// refusing this one request), so other events should stop using it too.
fn suggests_gone(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled)
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
    fn failures_are_logged_once_per_poller_and_cause() {
        let log = LogOnce::default();
        let (a, b): (SocketAddr, SocketAddr) = ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap());
        let full = Status::resource_exhausted("full");
        let slow = Status::deadline_exceeded("slow");
        let ids: Vec<EventId> = (0..1_000).map(|i| EventId::parse(&format!("e{i}")).unwrap()).collect();
        let logged = ids.iter().filter(|id| log.warn(a, cause(&full), id, &full)).count();
        assert_eq!(logged, 1, "1,000 events refused for one cause: one warning");
        assert!(log.warn(a, cause(&slow), &ids[0], &slow), "another cause is news");
        assert!(log.warn(b, cause(&full), &ids[0], &full), "another poller is news");
        assert_eq!(log.last.lock().unwrap()[&(a, "refused")].repeats, 999);
    }

    #[test]
    fn publisher_moves_data_seq_only_on_new_data() {
        let id = EventId::parse("e").unwrap();
        let (tx, rx) = watch::channel(Snapshot::new(&id));
        let mut p = Publisher::new(tx, &id);
        p.update(&update(10, State::Live, "{}"));
        assert_eq!((rx.borrow().data_seq, rx.borrow().stale), (10, false));
        p.update(&update(11, State::Stale, "{}"));
        assert_eq!((rx.borrow().data_seq, rx.borrow().stale), (10, true));
        p.update(&update(12, State::Live, "{}"));
        assert_eq!((rx.borrow().data_seq, rx.borrow().stale), (10, false));
        // Upstream lost, then the resubscription repeats seq 12.
        p.lost();
        assert!(rx.borrow().stale);
        p.new_source();
        p.update(&update(12, State::Live, "{}"));
        assert_eq!((rx.borrow().data_seq, rx.borrow().stale), (10, false));
        // A restarted poller: higher seq, same data, nothing to resend.
        p.update(&update(500, State::Live, "{}"));
        assert_eq!(rx.borrow().data_seq, 10);
        p.update(&update(501, State::Live, r#"{"a":1}"#));
        assert_eq!(rx.borrow().data_seq, 501);
        // Another poller whose clock lags: its first value is new data with a
        // lower seq; browsers still get it once, with an id above theirs.
        p.new_source();
        p.update(&update(300, State::Live, r#"{"a":1}"#));
        assert_eq!(rx.borrow().data_seq, 501, "same data: nothing new");
        p.update(&update(301, State::Live, r#"{"a":2}"#));
        assert_eq!(rx.borrow().data_seq, 502);
        p.update(&update(301, State::Live, r#"{"a":3}"#));
        assert_eq!(rx.borrow().data_seq, 502, "a repeated seq is not news");
        p.update(&update(900, State::Ended, r#"{"a":2}"#));
        assert!(rx.borrow().ended);
    }
}
