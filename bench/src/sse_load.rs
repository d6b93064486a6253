//! The browsers of every scenario (BENCHMARKS.md, "The SSE load generator"):
//! raw sockets bound to 127.0.0.2, 127.0.0.3, ..., paced connects, one small
//! task per connection reading into one buffer per worker thread, so it stays
//! much cheaper than the edge it measures. Latency is `now - served_at_ms` of
//! every data event but a connection's first (the replayed latest value).

use crate::{
    histogram::{Histogram, Snapshot},
    wire::{Id, Item, Kind, Parser},
};
// Recovers a poisoned lock, as everywhere in livepush: every critical section
// here is a single insert or update.
use livepush::sync::lock;
use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{io::AsyncWriteExt, net::TcpSocket, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

/// Most (event, stamp) pairs tracked; beyond it deliveries are not grouped.
const MAX_UPDATES: usize = 500_000;
const MAX_ERROR_KINDS: usize = 32;
/// Data and named events kept per traced connection (an hour at 1/s).
const MAX_TRACE: usize = 4_096;

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// The next source address, as an offset in 127.0.0.0/8, starting at a
/// place of this process's own: a run never meets the TIME_WAIT sockets of
/// an earlier one (in this process or a run just before), which would delay
/// its connects by SYN retransmits.
static NEXT_SOURCE: LazyLock<AtomicU32> =
    LazyLock::new(|| AtomicU32::new(2 + (std::process::id() % 200_000) * 64));

#[derive(Debug, Clone)]
pub struct Config {
    /// New connections (first ones and reconnects) per second.
    pub connect_rate: u32,
    /// Connections bound to one source address.
    pub per_source: u32,
    /// Bound on the TCP connect, the request, then the first bytes.
    pub connect_timeout: Duration,
    /// A stream silent this long is dead (the edge's keep-alive is 15 s).
    pub idle_timeout: Duration,
    pub reconnect_delay: Duration,
    /// Every task stops by itself here.
    pub deadline: Instant,
    /// Close with an RST (`SO_LINGER` 0), as a vanished tab; else a FIN.
    pub reset: bool,
    /// Keep each connection's [`Trace`] and resume with `Last-Event-ID`.
    pub trace: bool,
}

/// One data event as a traced connection read it (Unix µs; media-sim's stamp).
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    pub at_us: u64,
    pub id: Id,
    pub stamp: Option<u64>,
}

/// What one traced connection saw over all its reconnects: the first
/// [`MAX_TRACE`] data events, and named ones (Unix µs) but presence.
#[derive(Debug, Default)]
pub struct Trace {
    pub data: Vec<Rec>,
    pub named: Vec<(u64, Kind)>,
    /// The highest id read, sent as `Last-Event-ID` on reconnect.
    last_id: Option<u64>,
}

/// Who connects where: (address, request, event key) per connection, one
/// copy of each request.
#[derive(Default)]
pub struct Plan {
    conns: Vec<(SocketAddr, Arc<[u8]>, u32)>,
    requests: HashMap<String, Arc<[u8]>>,
}

impl Plan {
    /// One more connection to `addr`, `GET path`; `key` names its event
    /// (grouping deliveries per update).
    pub fn push(&mut self, addr: SocketAddr, path: &str, key: u32) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        let request = self.requests.entry(request).or_insert_with_key(|r| r.as_bytes().into()).clone();
        self.conns.push((addr, request, key));
    }
}

/// What the connections saw; histograms in µs: media-sim serving a value to
/// a browser reading it, the TCP connect, starting to connect to the first
/// data event.
#[derive(Default)]
pub struct Stats {
    pub latency: Histogram,
    pub connect: Histogram,
    pub first_event: Histogram,
    c: Atomics,
    error_kinds: Mutex<BTreeMap<String, u64>>,
    /// By event key, then time served: each event's updates in order.
    updates: Mutex<BTreeMap<(u32, u64), Update>>,
    updates_dropped: AtomicU64,
}

/// Deliveries of one update (one event's value served at one instant, Unix
/// ms): browsers reached (first events excluded), µs latency of the first
/// and of the last of them.
#[derive(Debug, Clone, Copy)]
pub struct Update {
    pub served_at_ms: u64,
    pub reached: u32,
    pub first_us: u64,
    pub last_us: u64,
}

/// Of the events asked about, how many missed a change; the longest gap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gaps {
    pub with_gap: u64,
    pub longest_ms: u64,
}

/// Declares [`Counters`] and the atomics [`Stats`] keeps them in.
macro_rules! counters {
    ($($name:ident),*) => {
        /// A reading of the counters: all monotonic but the gauges `open`
        /// (answered 200, still open) and `ready` (open, first data event
        /// read); `messages` are data events, first ones included.
        #[derive(Debug, Clone, Copy, Default, serde::Serialize)]
        pub struct Counters { $(pub $name: u64,)* }

        #[derive(Default)]
        struct Atomics { $($name: AtomicU64,)* }

        impl Stats {
            pub fn counters(&self) -> Counters { Counters { $($name: self.c.$name.load(Relaxed),)* } }
        }

        impl Counters {
            /// What happened between `earlier` and `self` (gauges are `self`'s).
            pub fn since(&self, earlier: &Self) -> Self {
                let d = Self { $($name: self.$name.saturating_sub(earlier.$name),)* };
                Self { open: self.open, ready: self.ready, ..d }
            }
        }
    };
}

counters! { open, ready, reconnects, messages, stale, live, presence, end, comments, bytes, errors }

impl Stats {
    /// Error messages and how often each occurred, most frequent first.
    pub fn error_kinds(&self) -> Vec<(String, u64)> {
        let mut kinds: Vec<_> = lock(&self.error_kinds, "error kinds").clone().into_iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        kinds
    }

    /// Updates served in `[from_ms, to_ms)` (Unix ms), and how many
    /// deliveries could not be grouped (cap reached).
    pub fn updates_served(&self, from_ms: u64, to_ms: u64) -> (Vec<Update>, u64) {
        let updates = lock(&self.updates, "updates");
        let served = updates.values().filter(|u| (from_ms..to_ms).contains(&u.served_at_ms)).copied();
        (served.collect(), self.updates_dropped.load(Relaxed))
    }

    /// Which of the events `keys` missed a change in `[from_ms, to_ms)`: with
    /// media-sim's `--stamp` each poll (one per interval, 5 % jitter) is a
    /// change, so a change no browser received shows as two updates (or an
    /// update and an end of the window) more than `gap_ms` apart.
    pub fn gaps(&self, keys: impl IntoIterator<Item = u32>, from_ms: u64, to_ms: u64, gap_ms: u64) -> Gaps {
        let (updates, mut gaps) = (lock(&self.updates, "updates"), Gaps::default());
        for key in keys {
            let served = updates.range((key, from_ms)..(key, to_ms)).map(|(&(_, at), _)| at);
            let points: Vec<u64> = [from_ms].into_iter().chain(served).chain([to_ms]).collect();
            let longest = points.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
            gaps.with_gap += u64::from(longest > gap_ms);
            gaps.longest_ms = gaps.longest_ms.max(longest);
        }
        gaps
    }

    fn fail(&self, failure: String) {
        self.c.errors.fetch_add(1, Relaxed);
        let mut kinds = lock(&self.error_kinds, "error kinds");
        let full = kinds.len() >= MAX_ERROR_KINDS && !kinds.contains_key(&failure);
        *kinds.entry(if full { "(other errors)".to_owned() } else { failure }).or_default() += 1;
    }

    fn delivered(&self, key: u32, served_at_ms: u64, latency_us: u64) {
        self.latency.record(latency_us);
        let mut updates = lock(&self.updates, "updates");
        if updates.len() >= MAX_UPDATES && !updates.contains_key(&(key, served_at_ms)) {
            self.updates_dropped.fetch_add(1, Relaxed);
            return;
        }
        let new = Update { served_at_ms, reached: 0, first_us: latency_us, last_us: latency_us };
        let u = updates.entry((key, served_at_ms)).or_insert(new);
        u.reached += 1;
        u.first_us = u.first_us.min(latency_us);
        u.last_us = u.last_us.max(latency_us);
    }
}

/// The running generator; dropping it aborts every connection.
pub struct Load {
    shared: Arc<Shared>,
    /// The connections (with their place in the plan and trace) and a watchdog.
    tasks: JoinSet<Option<(usize, Trace)>>,
}

/// What the connection tasks share, so that each holds only its index.
struct Shared {
    stats: Arc<Stats>,
    config: Config,
    stop: CancellationToken,
    conns: Vec<(SocketAddr, Arc<[u8]>, u32)>,
    sources: Vec<Ipv4Addr>,
    /// When the next connection may start (paced across all).
    next_start: Mutex<Instant>,
}

impl Load {
    /// Starts every connection of `plan`, paced; inside a tokio runtime.
    pub fn start(plan: Plan, config: Config) -> Self {
        let count = plan.conns.len().div_ceil(config.per_source.max(1) as usize) as u32;
        let first = NEXT_SOURCE.fetch_add(count, Relaxed);
        let sources = (first..first + count).map(|i| Ipv4Addr::from(0x7f00_0000 | (i & 0xff_ffff))).collect();
        let (stop, next_start) = (CancellationToken::new(), Mutex::new(Instant::now()));
        let (mut tasks, deadline, watchdog) = (JoinSet::new(), config.deadline, stop.clone());
        tasks.spawn(async move {
            let _ = watchdog.run_until_cancelled(tokio::time::sleep_until(deadline)).await;
            watchdog.cancel();
            None
        });
        let shared =
            Arc::new(Shared { stats: Arc::default(), config, stop, conns: plan.conns, sources, next_start });
        tasks.extend((0..shared.conns.len()).map(|i| connection(i, shared.clone())));
        Self { shared, tasks }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.shared.stats
    }

    /// The source addresses this run binds to.
    pub fn sources(&self) -> &[Ipv4Addr] {
        &self.shared.sources
    }

    /// Waits until `n` connections have their first event; how long it took,
    /// or `None` after `limit`.
    pub async fn wait_ready(&self, n: u64, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while self.shared.stats.counters().ready < n {
            if start.elapsed() >= limit || self.shared.stop.is_cancelled() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(start.elapsed())
    }

    /// Closes every connection; how many tasks had not ended within `grace`.
    pub async fn stop(self, grace: Duration) -> usize {
        self.stop_traced(grace).await.1
    }

    /// [`Load::stop`], and each connection's [`Trace`] in plan order (`None`:
    /// not traced, or not stopped within `grace`).
    pub async fn stop_traced(mut self, grace: Duration) -> (Vec<Option<Trace>>, usize) {
        self.shared.stop.cancel();
        let deadline = Instant::now() + grace;
        let mut traces: Vec<Option<Trace>> = (0..self.shared.conns.len()).map(|_| None).collect();
        while let Ok(Some(done)) = tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
            let Ok(Some((i, trace))) = done else { continue };
            traces[i] = Some(trace);
        }
        let left = self.tasks.len();
        self.tasks.shutdown().await;
        (traces, left)
    }
}

/// One browser: connect, read until stopped, reconnect when the stream ends.
async fn connection(i: usize, shared: Arc<Shared>) -> Option<(usize, Trace)> {
    // Boxed: an untraced connection pays one pointer.
    let mut trace = shared.config.trace.then(Box::<Trace>::default);
    for attempt in 0u64.. {
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            Err(failure) = async {
                if attempt > 0 {
                    tokio::time::sleep(shared.config.reconnect_delay).await;
                }
                let start = {
                    let mut next = lock(&shared.next_start, "connect pacing");
                    let at = (*next).max(Instant::now());
                    *next = at + Duration::from_secs(1) / shared.config.connect_rate.max(1);
                    at
                };
                tokio::time::sleep_until(start).await;
                shared.stats.c.reconnects.fetch_add(attempt.min(1), Relaxed);
                stream(&shared, i, trace.as_deref_mut()).await
            } => shared.stats.fail(failure),
        }
    }
    trace.map(|t| (i, *t))
}

/// Connection `i`'s life, until it fails: why.
async fn stream(shared: &Shared, i: usize, trace: Option<&mut Trace>) -> Result<Infallible, String> {
    let (stats, config, conn) = (&*shared.stats, &shared.config, &shared.conns[i]);
    let source = shared.sources[i / config.per_source.max(1) as usize];
    let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    let late = |what: &'static str| move |_| format!("timeout: {what}");
    let started = Instant::now();
    let socket = TcpSocket::new_v4().map_err(io("socket/bind"))?;
    socket.bind(SocketAddr::new(source.into(), 0)).map_err(io("socket/bind"))?;
    if config.reset {
        socket.set_zero_linger().map_err(io("socket/bind"))?;
    }
    let connecting = tokio::time::timeout(config.connect_timeout, socket.connect(conn.0));
    let mut tcp = connecting.await.map_err(late("TCP connect"))?.map_err(io("connect"))?;
    stats.connect.record(micros(started.elapsed()));
    let _ = tcp.set_nodelay(true);
    // A block of its own, so the task does not keep the resumed request.
    let written = async {
        let resumed = trace.as_ref().and_then(|t| t.last_id).map(|id| {
            [&conn.1[..conn.1.len() - 2], format!("Last-Event-ID: {id}\r\n\r\n").as_bytes()].concat()
        });
        tcp.write_all(resumed.as_deref().unwrap_or(&conn.1)).await
    };
    let sending = tokio::time::timeout(config.connect_timeout, written);
    sending.await.map_err(late("sending the request"))?.map_err(io("read/write"))?;
    let mut reader = Reader::new(stats, started, conn.2, trace);
    let mut silence = config.connect_timeout;
    loop {
        // Polled readiness, not `readable()`: a smaller task, and the one read
        // waker slot is enough for the only reader.
        let readable = tokio::time::timeout(silence, std::future::poll_fn(|cx| tcp.poll_read_ready(cx)));
        let what = if reader.open { "no bytes within the idle timeout" } else { "no response head" };
        readable.await.map_err(late(what))?.map_err(io("read/write"))?;
        silence = BUF.with_borrow_mut(|buf| match tcp.try_read(buf) {
            Ok(0) => Err("closed by the server".to_owned()),
            Ok(n) => reader.feed(&buf[..n]).map(|()| config.idle_timeout),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(silence),
            Err(e) => Err(io("read/write")(e)),
        })?;
    }
}

/// Parser state of one connection; `open` and `ready` (has its first data
/// event) are its share of the gauges, returned when it ends.
struct Reader<'a> {
    stats: &'a Stats,
    parser: Parser,
    open: bool,
    ready: bool,
    started: Instant,
    key: u32,
    trace: Option<&'a mut Trace>,
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        self.stats.c.open.fetch_sub(u64::from(self.open), Relaxed);
        self.stats.c.ready.fetch_sub(u64::from(self.ready), Relaxed);
    }
}

impl<'a> Reader<'a> {
    fn new(stats: &'a Stats, started: Instant, key: u32, trace: Option<&'a mut Trace>) -> Self {
        Self { stats, parser: Parser::default(), open: false, ready: false, started, key, trace }
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        // When these bytes were read (Unix µs).
        let (at_us, stats, c) = (unix_micros(), self.stats, &self.stats.c);
        c.bytes.fetch_add(bytes.len() as u64, Relaxed);
        // The closure borrows the Reader's other fields, apart from its parser.
        self.parser.feed(bytes, &mut |item| {
            if let (Some(t), Item::Event(kind, id, stamp)) = (self.trace.as_deref_mut(), item) {
                if let (Kind::Message, Id::Value(id)) = (kind, id) {
                    t.last_id = t.last_id.max(Some(id));
                }
                match kind {
                    Kind::Message if t.data.len() < MAX_TRACE => t.data.push(Rec { at_us, id, stamp }),
                    Kind::Message | Kind::Presence => {}
                    _ if t.named.len() < MAX_TRACE => t.named.push((at_us, kind)),
                    _ => {}
                }
            }
            // The 200 head: this connection is open until its Reader drops.
            self.open |= item == Item::Open;
            let counter = match item {
                Item::Open => &c.open,
                Item::Comment => &c.comments,
                Item::Event(Kind::Message, _, stamp) => {
                    if let Some(ms) = stamp.filter(|_| self.ready) {
                        stats.delivered(self.key, ms, at_us.saturating_sub(ms.saturating_mul(1000)));
                    }
                    if !std::mem::replace(&mut self.ready, true) {
                        stats.first_event.record(micros(self.started.elapsed()));
                        c.ready.fetch_add(1, Relaxed);
                    }
                    &c.messages
                }
                Item::Event(Kind::Stale, ..) => &c.stale,
                Item::Event(Kind::Live, ..) => &c.live,
                Item::Event(Kind::Presence, ..) => &c.presence,
                Item::Event(Kind::End, ..) => &c.end,
                Item::Event(Kind::Other, ..) => return,
            };
            counter.fetch_add(1, Relaxed);
        })
    }
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Microseconds since the Unix epoch (0 for a clock before 1970).
pub fn unix_micros() -> u64 {
    micros(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Quantiles `qs` of a histogram of µs, in ms (named as [`crate::report::quantiles_ms`]'s).
pub fn ms(s: &Snapshot, qs: &[f64]) -> Vec<Option<f64>> {
    qs.iter().map(|&q| s.quantile(q).map(|us| us as f64 / 1000.0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_events_are_not_deliveries_and_gauges_return() {
        let (stats, mut trace, now_ms) = (Stats::default(), Trace::default(), unix_micros() / 1000);
        let data = |id, ago| format!("id: {id}\ndata: {{\"served_at_ms\":{}}}\n\n", now_ms - ago);
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n:\n\n";
        let wire = [head, &data(1, 5000), &data(2, 20), "event: stale\ndata: {}\n\n", &data(3, 10)].concat();
        let mut reader = Reader::new(&stats, Instant::now(), 7, Some(&mut trace));
        reader.feed(wire.as_bytes()).unwrap();
        let c = stats.counters();
        assert_eq!((c.open, c.ready, c.messages, c.comments, c.stale), (1, 1, 3, 1, 1));
        drop(reader);
        let (c, latency) = (stats.counters(), stats.latency.snapshot());
        assert_eq!((c.open, c.ready, latency.count, stats.first_event.snapshot().count), (0, 0, 2, 1));
        assert!(latency.max < 1_000_000, "the replayed value (5 s old) is no delivery");
        let (updates, _) = stats.updates_served(0, u64::MAX);
        assert!(updates.len() == 2 && updates.iter().all(|u| u.reached == 1));
        assert_eq!((trace.data.len(), trace.named.len(), trace.last_id), (3, 1, Some(3)));
    }

    #[test]
    fn gaps_find_events_that_missed_a_change() {
        // Event 1: every 1,000 ms; event 2 misses 3,000; 3 receives nothing; 4 is not asked about.
        let stats = Stats::default();
        [(1, 1_000), (1, 2_000), (1, 3_000), (1, 4_000), (2, 1_000), (2, 2_000), (2, 4_000), (4, 2_500)]
            .into_iter()
            .for_each(|(key, at)| stats.delivered(key, at, 5));
        let g = |keys: &[u32], from| stats.gaps(keys.iter().copied(), from, 4_500, 1_500);
        let want = |with_gap, longest_ms| Gaps { with_gap, longest_ms };
        assert_eq!(
            [g(&[1, 2], 500), g(&[1, 2, 3], 500), g(&[1], 2_500)],
            [want(1, 2_000), want(2, 4_000), want(0, 1_000)]
        );
    }
}
