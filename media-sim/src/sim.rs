//! The simulated media service itself, free of HTTP: what an event's document
//! looks like at a given moment, and which events have ended.
//!
//! An event's data is a pure function of its id and the current change period,
//! so two requests in the same period get byte-identical bodies (and the same
//! ETag) without the simulator storing anything per event. The only state is
//! the bounded set of ended events and two request counters.
//!
//! A batch answer ([`Sim::batch`]) is the same documents gathered into one
//! JSON object keyed by event id, all taken at the same instant, with `null`
//! for ended events.

use livepush::EventId;
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Most events that can be marked ended at once, so the admin API cannot be
/// used to grow the simulator's memory without bound.
pub const MAX_ENDED: usize = 10_000;

/// Most ids one batch request may name: the poller's largest `--batch-size`.
/// It bounds what one request makes the simulator render (about 150 KiB).
pub const MAX_BATCH: usize = 1_000;

/// Refusal to end one more event while [`MAX_ENDED`] are already ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many ended events (at most {MAX_ENDED}); revive some first")]
pub struct TooManyEnded;

/// One event's current answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The JSON document.
    pub body: String,
    /// Strong validator of `body`; `None` when stamping (every body differs).
    pub etag: Option<String>,
    /// Start of the current change period; `None` when stamping.
    pub last_modified: Option<SystemTime>,
}

/// The answer to one batch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSnapshot {
    /// A JSON object: each distinct requested id, in request order, mapped to
    /// its document, or to `null` if the event has ended.
    pub body: String,
    /// Strong validator of `body`; `None` when stamping (every body differs).
    pub etag: Option<String>,
}

/// Handle on the simulator; clones share the same state.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

struct Inner {
    change_every_ms: u64,
    stamp: bool,
    ended: Mutex<HashSet<EventId>>,
    requests: AtomicU64,
    batch_requests: AtomicU64,
}

impl Sim {
    /// A simulator whose events change every `change_every` (at least 1ms;
    /// shorter is rounded up). With `stamp`, documents carry `served_at_ms`.
    pub fn new(change_every: Duration, stamp: bool) -> Self {
        let change_every_ms = u64::try_from(change_every.as_millis()).unwrap_or(u64::MAX).max(1);
        Self {
            inner: Arc::new(Inner {
                change_every_ms,
                stamp,
                ended: Mutex::new(HashSet::new()),
                requests: AtomicU64::new(0),
                batch_requests: AtomicU64::new(0),
            }),
        }
    }

    /// The answer for `id` right now, or `None` if the event has ended.
    pub fn current(&self, id: &EventId) -> Option<Snapshot> {
        self.current_at(id, unix_ms(SystemTime::now()))
    }

    /// The answer for each of `ids` at one instant, as one JSON object keyed
    /// by id (`null` for ended events). A repeated id appears once. Callers
    /// bound `ids` by [`MAX_BATCH`].
    pub fn batch(&self, ids: &[EventId]) -> BatchSnapshot {
        let now_ms = unix_ms(SystemTime::now());
        let mut seen = HashSet::with_capacity(ids.len());
        let mut body = String::from("{");
        for id in ids.iter().filter(|id| seen.insert(*id)) {
            if body.len() > 1 {
                body.push(',');
            }
            // Event ids are made of URL-unreserved characters only, none of
            // which JSON escapes, and each document is already JSON: the
            // object is assembled as text, keeping every document's bytes.
            body.push('"');
            body.push_str(id.as_str());
            body.push_str("\":");
            match self.current_at(id, now_ms) {
                Some(snapshot) => body.push_str(&snapshot.body),
                None => body.push_str("null"),
            }
        }
        body.push('}');
        let etag = (!self.inner.stamp).then(|| etag_of(&body));
        BatchSnapshot { body, etag }
    }

    fn current_at(&self, id: &EventId, now_ms: u64) -> Option<Snapshot> {
        if self.is_ended(id) {
            return None;
        }
        let period = now_ms / self.inner.change_every_ms;
        let start = UNIX_EPOCH + Duration::from_millis(period * self.inner.change_every_ms);
        Some(if self.inner.stamp {
            Snapshot { body: render(id, period, start, Some(now_ms)), etag: None, last_modified: None }
        } else {
            let body = render(id, period, start, None);
            Snapshot { etag: Some(etag_of(&body)), body, last_modified: Some(start) }
        })
    }

    /// Marks `id` ended: it answers 404 until revived. Returns whether it was
    /// live before; ending an already-ended event always succeeds.
    pub fn end(&self, id: EventId) -> Result<bool, TooManyEnded> {
        let mut ended = self.ended();
        if ended.contains(&id) {
            return Ok(false);
        }
        if ended.len() >= MAX_ENDED {
            return Err(TooManyEnded);
        }
        Ok(ended.insert(id))
    }

    /// Brings `id` back to life. Returns whether it had ended.
    pub fn revive(&self, id: &EventId) -> bool {
        self.ended().remove(id)
    }

    pub fn is_ended(&self, id: &EventId) -> bool {
        self.ended().contains(id)
    }

    /// Counts one request to the live endpoint.
    pub fn record_request(&self) {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests to the live endpoint so far.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Counts one request to the batch endpoint.
    pub fn record_batch_request(&self) {
        self.inner.batch_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests to the batch endpoint so far (not counted in [`Sim::requests`]).
    pub fn batch_requests(&self) -> u64 {
        self.inner.batch_requests.load(Ordering::Relaxed)
    }

    fn ended(&self) -> MutexGuard<'_, HashSet<EventId>> {
        // The set stays consistent even if a holder panicked: every critical
        // section is a single insert, remove or lookup.
        livepush::sync::lock(&self.inner.ended, "ended events")
    }
}

/// Milliseconds since the Unix epoch (0 for a clock set before 1970).
fn unix_ms(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The document of `id` in change period `period`, which began at `start`.
fn render(id: &EventId, period: u64, start: SystemTime, served_at_ms: Option<u64>) -> String {
    let mut doc = serde_json::Map::new();
    doc.insert("event_id".into(), id.as_str().into());
    doc.insert("status".into(), "live".into());
    doc.insert("title".into(), format!("Live event {id}").into());
    doc.insert("viewers".into(), viewers(id, period).into());
    doc.insert("updated_at".into(), humantime::format_rfc3339_millis(start).to_string().into());
    doc.insert("version".into(), period.into());
    if let Some(ms) = served_at_ms {
        doc.insert("served_at_ms".into(), ms.into());
    }
    serde_json::Value::Object(doc).to_string()
}

/// A plausible audience (1,000 to 99,999) that looks random but depends only on
/// `(id, period)`. Its lowest bit is the period's, so consecutive periods
/// never show the same number and every period is a visible change.
fn viewers(id: &EventId, period: u64) -> u64 {
    let mut h = Fnv::new();
    h.write(id.as_str().as_bytes());
    h.write(&period.to_le_bytes());
    2 * (500 + h.finish() % 49_500) + (period & 1)
}

/// A strong ETag: the quoted hash of the exact body bytes.
fn etag_of(body: &str) -> String {
    let mut h = Fnv::new();
    h.write(body.as_bytes());
    format!("\"{:016x}\"", h.finish())
}

/// FNV-1a with a SplitMix64 finaliser: tiny, and stable across processes and
/// Rust versions (unlike `DefaultHasher`), so ETags survive restarts.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> EventId {
        EventId::parse(s).unwrap()
    }

    #[test]
    fn documents_have_the_documented_shape_and_order() {
        let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_200);
        let body = render(&id("ev-1"), 42, start, None);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["event_id", "status", "title", "viewers", "updated_at", "version"]);
        assert_eq!(v["event_id"], "ev-1");
        assert_eq!(v["status"], "live");
        assert_eq!(v["title"], "Live event ev-1");
        assert_eq!(v["updated_at"], "2023-11-14T22:13:20.200Z");
        assert_eq!(v["version"], 42);
        let stamped = render(&id("ev-1"), 42, start, Some(7));
        assert!(stamped.ends_with(r#","served_at_ms":7}"#), "{stamped}");
    }

    #[test]
    fn viewers_are_deterministic_in_range_and_change_every_period() {
        for name in ["a", "ev-1", "x.y~z"] {
            let ev = id(name);
            for p in 0..1_000 {
                let v = viewers(&ev, p);
                assert_eq!(v, viewers(&ev, p));
                assert!((1_000..100_000).contains(&v), "{v}");
                assert_ne!(v, viewers(&ev, p + 1));
            }
        }
        assert_ne!(viewers(&id("a"), 5), viewers(&id("b"), 5));
    }

    #[test]
    fn etags_are_quoted_and_follow_the_body() {
        let e = etag_of("{}");
        assert!(e.starts_with('"') && e.ends_with('"') && e.len() == 18, "{e}");
        assert_eq!(e, etag_of("{}"));
        assert_ne!(e, etag_of("{ }"));
    }

    #[test]
    fn same_period_same_answer() {
        let sim = Sim::new(Duration::from_secs(3600), false);
        let ev = id("ev");
        // Retry in the unlikely case an hour boundary passes in between.
        let (a, b) = loop {
            let (a, b) = (sim.current(&ev).unwrap(), sim.current(&ev).unwrap());
            if a.last_modified == b.last_modified {
                break (a, b);
            }
        };
        assert_eq!(a, b);
        assert!(a.etag.is_some());
        let start = a.last_modified.unwrap();
        assert_eq!(unix_ms(start) % 3_600_000, 0);
    }

    #[test]
    fn stamped_answers_carry_no_validators() {
        let s = Sim::new(Duration::from_secs(2), true).current(&id("ev")).unwrap();
        assert_eq!((s.etag, s.last_modified), (None, None));
        assert!(s.body.contains("served_at_ms"));
    }

    #[test]
    fn ending_is_bounded_idempotent_and_reversible() {
        let sim = Sim::new(Duration::from_secs(2), false);
        for i in 0..MAX_ENDED {
            assert_eq!(sim.end(id(&format!("e{i}"))), Ok(true));
        }
        assert_eq!(sim.end(id("one-too-many")), Err(TooManyEnded));
        assert_eq!(sim.end(id("e0")), Ok(false), "re-ending is fine when full");
        assert!(sim.current(&id("e0")).is_none());
        assert!(sim.revive(&id("e0")));
        assert!(!sim.revive(&id("e0")));
        assert!(sim.current(&id("e0")).is_some());
        assert_eq!(sim.end(id("one-too-many")), Ok(true));
    }

    /// `sim.batch(ids)` twice within one change period.
    fn batch_twice(sim: &Sim, ids: &[EventId]) -> (BatchSnapshot, BatchSnapshot) {
        loop {
            let (a, b) = (sim.batch(ids), sim.batch(ids));
            if a == b {
                return (a, b);
            }
        }
    }

    #[test]
    fn a_batch_is_an_object_of_current_documents_with_null_for_ended_events() {
        let sim = Sim::new(Duration::from_secs(3600), false);
        sim.end(id("gone")).unwrap();
        let ids = [id("b"), id("gone"), id("a"), id("b")];
        let batch = sim.batch(&ids);
        let v: serde_json::Value = serde_json::from_str(&batch.body).unwrap();
        let obj = v.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys, ["b", "gone", "a"], "request order, each id once");
        assert_eq!(obj["gone"], serde_json::Value::Null);
        for name in ["a", "b"] {
            let single: serde_json::Value =
                serde_json::from_str(&sim.current(&id(name)).unwrap().body).unwrap();
            assert_eq!(obj[name], single, "{name}");
        }
        assert!(batch.body.contains(r#""a":{"event_id":"a","status":"live""#), "documents keep their bytes");
    }

    #[test]
    fn batch_etags_follow_members_order_and_endings() {
        let sim = Sim::new(Duration::from_secs(3600), false);
        let ab = [id("a"), id("b")];
        let (first, again) = batch_twice(&sim, &ab);
        let etag = first.etag.clone().expect("an ETag");
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        assert_eq!(first, again, "same period, same answer");
        assert_ne!(sim.batch(&[id("a")]).etag, first.etag, "other members");
        assert_ne!(sim.batch(&[id("b"), id("a")]).etag, first.etag, "other order, other bytes");
        sim.end(id("b")).unwrap();
        let ended = sim.batch(&ab);
        assert_ne!(ended.etag, first.etag, "an ending member changes the batch");
        sim.revive(&id("b"));
        assert_eq!(batch_twice(&sim, &ab).0.etag, first.etag);
    }

    #[test]
    fn stamped_batches_carry_no_validator() {
        let sim = Sim::new(Duration::from_secs(2), true);
        let b = sim.batch(&[id("a")]);
        assert_eq!(b.etag, None);
        let v: serde_json::Value = serde_json::from_str(&b.body).unwrap();
        assert!(v["a"]["served_at_ms"].is_u64(), "{}", b.body);
    }

    #[test]
    fn batch_requests_are_counted_apart() {
        let sim = Sim::new(Duration::from_secs(2), false);
        sim.record_batch_request();
        sim.clone().record_batch_request();
        sim.record_request();
        assert_eq!((sim.requests(), sim.batch_requests()), (1, 2));
    }

    #[test]
    fn clones_share_state() {
        let sim = Sim::new(Duration::ZERO, false);
        let other = sim.clone();
        other.record_request();
        other.end(id("x")).unwrap();
        assert_eq!(sim.requests(), 1);
        assert!(sim.is_ended(&id("x")));
        assert_eq!(sim.inner.change_every_ms, 1, "zero is rounded up to 1ms");
    }
}
