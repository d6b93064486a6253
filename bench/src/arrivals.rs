//! When upstream requests reach the media service, recorded at the media
//! service (a middleware around media-sim's router) rather than inside the
//! poller: that is the load a real media service would see, queueing included,
//! and it needs nothing from the poller's code.
//!
//! A single poll (`GET /live/{id}`) is one arrival; a batch poll
//! (`GET /batch?ids=a,b,c`) is one arrival per id, the first marked as the
//! start of a request, so per-event figures read the same either way and
//! request figures count only the starts.
//!
//! Also the analysis of those arrivals over a measurement window: rate, how
//! evenly polls spread over the poll interval, and how bursty they are at a
//! finer grain.

use axum::{
    Router,
    extract::{Request, State},
    http::Method,
    middleware::{self, Next},
    response::Response,
};
use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

/// Most arrivals kept (16 bytes each, so 32 MB). Runs are bounded in time, so
/// this is only a backstop; arrivals beyond it are counted, not stored.
pub const MAX_ARRIVALS: usize = 2_000_000;

/// One event polled: a `GET /live/{event_id}` request, or one id of a
/// `GET /batch?ids=...` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// When the request reached the router, in µs since [`Arrivals::origin`].
    pub at_us: u64,
    /// Index of the event, from the scenario's id scheme; `u32::MAX` if the
    /// id was not one of the scenario's.
    pub event: u32,
    /// Status of the answer (a batch's, for each of its ids).
    pub status: u16,
    /// The first (or only) id of a request: counting these counts requests.
    pub request: bool,
}

/// Shared log of arrivals; clones share it.
#[derive(Clone)]
pub struct Arrivals {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Instant,
    index_of: fn(&str) -> Option<u32>,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    arrivals: Vec<Arrival>,
    dropped: u64,
}

impl Log {
    fn push(&mut self, arrival: Arrival) {
        if self.arrivals.len() < MAX_ARRIVALS {
            self.arrivals.push(arrival);
        } else {
            self.dropped += 1;
        }
    }
}

impl Arrivals {
    /// An empty log; `index_of` maps an event id to the scenario's index.
    pub fn new(index_of: fn(&str) -> Option<u32>) -> Self {
        let log = Log { arrivals: Vec::with_capacity(64 * 1024), dropped: 0 };
        Self { inner: Arc::new(Inner { origin: Instant::now(), index_of, log: Mutex::new(log) }) }
    }

    /// `t` in µs since the log's origin (0 if earlier).
    pub fn offset_us(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.inner.origin).as_micros()).unwrap_or(u64::MAX)
    }

    /// `router` with every `GET /live/...` and `GET /batch?ids=...` request
    /// recorded.
    pub fn wrap(&self, router: Router) -> Router {
        router.layer(middleware::from_fn_with_state(self.clone(), record))
    }

    /// A copy of the arrivals so far (unordered) and how many were dropped
    /// beyond [`MAX_ARRIVALS`].
    pub fn snapshot(&self) -> (Vec<Arrival>, u64) {
        let log = self.log();
        (log.arrivals.clone(), log.dropped)
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        // Pushing a Copy value cannot leave the log half-updated.
        self.inner.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn record(State(arrivals): State<Arrivals>, req: Request, next: Next) -> Response {
    let events = polled_events(&req, arrivals.inner.index_of);
    if events.is_empty() {
        return next.run(req).await;
    }
    let at_us = arrivals.offset_us(Instant::now());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let mut log = arrivals.log();
    for (i, event) in events.into_iter().enumerate() {
        log.push(Arrival { at_us, event, status, request: i == 0 });
    }
    response
}

/// The events a request polls, as indices (`u32::MAX` for a foreign id):
/// one for `GET /live/{id}`, one per id of `GET /batch?ids=a,b,c` (the
/// scenarios' ids need no percent-decoding), none for anything else.
fn polled_events(req: &Request, index_of: fn(&str) -> Option<u32>) -> Vec<u32> {
    if req.method() != Method::GET {
        return Vec::new();
    }
    let index = |id: &str| index_of(id).unwrap_or(u32::MAX);
    let uri = req.uri();
    if let Some(id) = uri.path().strip_prefix("/live/") {
        return vec![index(id)];
    }
    if uri.path() == "/batch" {
        let ids = uri.query().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("ids="));
        // A batch request without ids is still a request (media-sim answers
        // 400): one foreign arrival.
        return match ids {
            Some(ids) if !ids.is_empty() => ids.split(',').map(index).collect(),
            _ => vec![u32::MAX],
        };
    }
    Vec::new()
}

/// Arrival offsets relative to `start_us`, of the arrivals in
/// `[start_us, start_us + span_us)`, sorted.
pub fn window(arrivals: &[Arrival], start_us: u64, span_us: u64) -> Vec<Arrival> {
    let mut inside: Vec<Arrival> = arrivals
        .iter()
        .filter(|a| a.at_us >= start_us && a.at_us - start_us < span_us)
        .map(|a| Arrival { at_us: a.at_us - start_us, ..*a })
        .collect();
    inside.sort_unstable_by_key(|a| a.at_us);
    inside
}

/// Share of the arrivals (window-relative, see [`window`]) falling in each of
/// `buckets` equal parts of the poll interval (offset modulo `interval_us`),
/// over the whole intervals that fit in `span_us`. A poller that spreads its
/// polls evenly gets `1 / buckets` everywhere. `None` if no whole interval
/// fits or nothing arrived.
pub fn phase_shares(window: &[Arrival], span_us: u64, interval_us: u64, buckets: usize) -> Option<Vec<f64>> {
    let whole = span_us.checked_div(interval_us)? * interval_us;
    if whole == 0 || buckets == 0 {
        return None;
    }
    let mut counts = vec![0u64; buckets];
    let mut total = 0u64;
    for a in window.iter().filter(|a| a.at_us < whole) {
        let phase = a.at_us % interval_us;
        let b = usize::try_from(u128::from(phase) * buckets as u128 / u128::from(interval_us)).unwrap_or(0);
        counts[b.min(buckets - 1)] += 1;
        total += 1;
    }
    (total > 0).then(|| counts.iter().map(|&c| c as f64 / total as f64).collect())
}

/// The arrivals that start a request: one per request to the media service,
/// whether it polls one event or a batch.
pub fn requests(window: &[Arrival]) -> Vec<Arrival> {
    window.iter().filter(|a| a.request).copied().collect()
}

/// Number of arrivals in each consecutive `slot_us` slot of the window (only
/// whole slots; a trailing partial slot is left out).
pub fn slot_counts(window: &[Arrival], span_us: u64, slot_us: u64) -> Vec<u64> {
    let slots = usize::try_from(span_us.checked_div(slot_us).unwrap_or(0)).unwrap_or(0);
    let mut counts = vec![0u64; slots];
    for a in window {
        if let Some(c) = usize::try_from(a.at_us / slot_us).ok().and_then(|i| counts.get_mut(i)) {
            *c += 1;
        }
    }
    counts
}

/// Requests per event over the window, for events `0..events`.
pub fn per_event_counts(window: &[Arrival], events: u32) -> Vec<u32> {
    let mut counts = vec![0u32; events as usize];
    for a in window {
        if let Some(c) = counts.get_mut(a.event as usize) {
            *c += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(us: &[u64]) -> Vec<Arrival> {
        us.iter()
            .map(|&at_us| Arrival { at_us, event: (at_us % 3) as u32, status: 200, request: true })
            .collect()
    }

    #[test]
    fn window_is_half_open_relative_and_sorted() {
        let w = window(&at(&[50, 10, 100, 99, 200]), 10, 90);
        assert_eq!(w.iter().map(|a| a.at_us).collect::<Vec<_>>(), [0, 40, 89]);
    }

    #[test]
    fn phase_shares_fold_whole_intervals() {
        // Interval 100, span 250: only [0, 200) counts; 10 buckets of 10.
        let w = at(&[0, 5, 15, 105, 115, 199, 210]);
        let shares = phase_shares(&w, 250, 100, 10).unwrap();
        assert_eq!(shares.len(), 10);
        assert!((shares[0] - 3.0 / 6.0).abs() < 1e-9);
        assert!((shares[1] - 2.0 / 6.0).abs() < 1e-9);
        assert!((shares[9] - 1.0 / 6.0).abs() < 1e-9);
        assert_eq!(phase_shares(&w, 50, 100, 10), None);
        assert_eq!(phase_shares(&[], 250, 100, 10), None);
    }

    #[test]
    fn slots_count_whole_slots_only() {
        assert_eq!(slot_counts(&at(&[0, 99, 100, 250, 299, 300]), 300, 100), [2, 1, 2]);
        assert!(slot_counts(&at(&[1]), 50, 100).is_empty());
    }

    #[test]
    fn per_event_ignores_foreign_ids() {
        let mut w = at(&[0, 1, 3]);
        w.push(Arrival { at_us: 4, event: u32::MAX, status: 200, request: true });
        assert_eq!(per_event_counts(&w, 2), [2, 1]);
    }

    #[test]
    fn batch_requests_count_once_and_poll_each_id() {
        let index = |id: &str| id.strip_prefix("e").and_then(|n| n.parse().ok());
        let get = |uri: &str| Request::builder().uri(uri).body(axum::body::Body::empty()).unwrap();
        assert_eq!(polled_events(&get("/live/e7"), index), [7]);
        assert_eq!(polled_events(&get("/batch?ids=e1,e2,x"), index), [1, 2, u32::MAX]);
        assert_eq!(polled_events(&get("/batch?x=1&ids=e3"), index), [3]);
        assert_eq!(polled_events(&get("/batch"), index), [u32::MAX]);
        assert!(polled_events(&get("/stats"), index).is_empty());
        let mut w = at(&[0, 10]);
        w[1].request = false;
        assert_eq!(requests(&w).len(), 1);
    }
}
