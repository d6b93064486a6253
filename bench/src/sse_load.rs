//! The load generator of browsers holding SSE streams, shared by every
//! scenario: N HTTP/1.1 connections, each `GET <path>` with `Accept:
//! text/event-stream`, read for the whole run, reconnected when they close.
//!
//! Hand-rolled on raw sockets because the figures that matter (edge RSS per
//! connection, latency at 15,000 connections) are only meaningful if the
//! client is much cheaper than the server and adds no queueing: a connection
//! is one task with a small parser state ([`crate::wire`]) reading into one
//! 64 KiB buffer per worker thread, so an idle one costs its task, its socket
//! and a few hundred bytes. Connections bind to 127.0.0.2, 127.0.0.3, ... so
//! ephemeral ports never run out and a later run never meets an earlier
//! one's TIME_WAIT sockets; new connections are paced so the accept queue is
//! not overrun. Latency is `now - served_at_ms` of every unnamed event but a
//! connection's first (the replayed latest value), up to 1 ms too high.

use crate::{
    histogram::{Histogram, Snapshot},
    wire::{Id, Item, Kind, ResponseParser, SseItem, SseParser, WireError},
};
use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpSocket, TcpStream},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// Read buffer shared by the connections of one worker thread.
const READ_BUF: usize = 64 * 1024;
/// Most (event, stamp) pairs tracked; beyond it deliveries are not grouped.
const MAX_UPDATES: usize = 500_000;
/// Most distinct error messages counted separately.
const MAX_ERROR_KINDS: usize = 32;
/// Data events and named events kept per traced connection (about an hour
/// at one per second).
const MAX_TRACE: usize = 4_096;

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUF]);
}

/// The next source address to hand out, as an offset in 127.0.0.0/8.
static NEXT_SOURCE: AtomicU32 = AtomicU32::new(2);

/// How the generator behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// New connections (first ones and reconnects) per second.
    pub connect_rate: u32,
    /// Connections bound to one source address.
    pub per_source: u32,
    /// Bound on the TCP connect, and then on the response head.
    pub connect_timeout: Duration,
    /// A stream with no bytes for this long is dead (the edge sends a
    /// keep-alive comment every 15 s).
    pub idle_timeout: Duration,
    /// Wait before reconnecting a connection that closed or failed.
    pub reconnect_delay: Duration,
    /// Every task stops by itself here.
    pub deadline: Instant,
    /// Close connections with a reset (`SO_LINGER` 0: RST, no FIN), as a
    /// browser whose tab or network vanished; otherwise with a FIN.
    pub reset: bool,
    /// Keep each connection's [`Trace`] and reconnect with `Last-Event-ID`,
    /// as EventSource does (about 2 KiB per connection for an hour).
    pub trace: bool,
}

/// One data event as a traced connection read it.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    /// Unix µs of the read.
    pub at_us: u64,
    pub id: Id,
    /// media-sim's `served_at_ms`, if any.
    pub stamp: Option<u64>,
}

/// What one traced connection saw, over all its reconnects.
#[derive(Debug, Default)]
pub struct Trace {
    /// The first [`MAX_TRACE`] data events; `dropped` counts the others.
    pub data: Vec<Rec>,
    pub dropped: u64,
    /// Named events (Unix µs, kind), presence excluded.
    pub named: Vec<(u64, Kind)>,
    /// The highest id read: sent as `Last-Event-ID` on reconnect.
    last_id: Option<u64>,
}

impl Trace {
    fn event(&mut self, kind: Kind, id: Id, stamp: Option<u64>, at_us: u64) {
        match kind {
            Kind::Message if self.data.len() < MAX_TRACE => {
                if let Id::Value(id) = id {
                    self.last_id = self.last_id.max(Some(id));
                }
                self.data.push(Rec { at_us, id, stamp });
            }
            Kind::Message => self.dropped += 1,
            Kind::Presence => {}
            _ if self.named.len() < MAX_TRACE => self.named.push((at_us, kind)),
            _ => {}
        }
    }
}

/// Who connects where: one entry per connection.
#[derive(Default)]
pub struct Plan {
    conns: Vec<Conn>,
    requests: HashMap<(SocketAddr, String), Arc<[u8]>>,
}

struct Conn {
    addr: SocketAddr,
    request: Arc<[u8]>,
    /// Groups deliveries per update (the event's index).
    key: u32,
}

impl Plan {
    /// One more connection to `addr`, `GET path`; `key` names its event.
    pub fn push(&mut self, addr: SocketAddr, path: &str, key: u32) {
        let request = self
            .requests
            .entry((addr, path.to_owned()))
            .or_insert_with(|| {
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
                    .into_bytes()
                    .into()
            })
            .clone();
        self.conns.push(Conn { addr, request, key });
    }
}

/// Counters of everything the connections saw; all monotonic except the
/// two gauges (`open`, `ready`).
#[derive(Default)]
pub struct Stats {
    /// µs from media-sim serving a value to a browser reading it (each
    /// connection's first event excluded).
    pub latency: Histogram,
    /// µs of the TCP connect.
    pub connect: Histogram,
    /// µs from starting to connect to the first data event.
    pub first_event: Histogram,
    c: Atomics,
    error_kinds: Mutex<BTreeMap<String, u64>>,
    updates: Mutex<HashMap<(u32, u64), Update>>,
    updates_dropped: AtomicU64,
}

/// Deliveries of one update (one event's value served at one instant).
#[derive(Debug, Clone, Copy)]
pub struct Update {
    /// Unix ms when media-sim served it.
    pub served_at_ms: u64,
    /// Browsers that received it (first events excluded).
    pub reached: u32,
    /// µs latency of the first and of the last browser to receive it.
    pub first_us: u64,
    pub last_us: u64,
}

/// Gaps in the updates of events (see [`Stats::gaps`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gaps {
    /// Events examined.
    pub events: u64,
    /// Events with a gap longer than the limit: a change missed.
    pub with_gap: u64,
    /// Longest gap of any event, in ms.
    pub longest_ms: u64,
}

/// Declares [`Counters`], a reading of the generator's counters, and the
/// atomics [`Stats`] keeps them in.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// A reading of the monotonic counters and the gauges (`open`, `ready`).
        #[derive(Debug, Clone, Copy, Default, serde::Serialize)]
        pub struct Counters { $($(#[$doc])* pub $name: u64,)* }

        #[derive(Default)]
        struct Atomics { $($name: AtomicU64,)* }

        impl Atomics {
            fn read(&self) -> Counters {
                Counters { $($name: self.$name.load(Relaxed),)* }
            }
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

counters! {
    attempts,
    established,
    /// Connections whose response head was 200 and that are still open.
    open,
    /// Open connections that have received their first data event.
    ready,
    reconnects,
    /// Unnamed (data) events, first ones included.
    messages,
    unstamped,
    stale,
    live,
    presence,
    end,
    other_named,
    comments,
    bytes,
    errors,
}

impl Stats {
    pub fn counters(&self) -> Counters {
        self.c.read()
    }

    /// Error messages and how often each occurred, most frequent first.
    pub fn error_kinds(&self) -> Vec<(String, u64)> {
        let mut kinds: Vec<_> = lock(&self.error_kinds).iter().map(|(k, &n)| (k.clone(), n)).collect();
        kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        kinds
    }

    /// Updates served in `[from_ms, to_ms)` (Unix ms) and their deliveries,
    /// plus how many deliveries could not be grouped (cap reached).
    pub fn updates_served(&self, from_ms: u64, to_ms: u64) -> (Vec<Update>, u64) {
        let updates = lock(&self.updates)
            .values()
            .filter(|u| (from_ms..to_ms).contains(&u.served_at_ms))
            .copied()
            .collect();
        (updates, self.updates_dropped.load(Relaxed))
    }

    /// Whether the browsers missed changes of their events in `[from_ms,
    /// to_ms)`, judged by the stamps of the updates they received: with
    /// media-sim's `--stamp` every poll is a change, and an event is polled
    /// once per interval (5 % jitter), so a change no browser received shows
    /// as two of the event's updates (or an update and an end of the window)
    /// more than `max_gap_ms` apart. `keys` are the events expected.
    pub fn gaps(
        &self,
        keys: impl IntoIterator<Item = u32>,
        from_ms: u64,
        to_ms: u64,
        max_gap_ms: u64,
    ) -> Gaps {
        let mut stamps: HashMap<u32, Vec<u64>> = HashMap::new();
        for &(key, served_at_ms) in lock(&self.updates).keys() {
            if (from_ms..to_ms).contains(&served_at_ms) {
                stamps.entry(key).or_default().push(served_at_ms);
            }
        }
        let mut gaps = Gaps::default();
        for key in keys {
            let mut points = stamps.remove(&key).unwrap_or_default();
            points.extend([from_ms, to_ms]);
            points.sort_unstable();
            let longest = points.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
            gaps.events += 1;
            gaps.with_gap += u64::from(longest > max_gap_ms);
            gaps.longest_ms = gaps.longest_ms.max(longest);
        }
        gaps
    }

    fn fail(&self, failure: &Failure) {
        self.c.errors.fetch_add(1, Relaxed);
        let mut kinds = lock(&self.error_kinds);
        let text = failure.to_string();
        if let Some(n) = kinds.get_mut(&text) {
            *n += 1;
        } else if kinds.len() < MAX_ERROR_KINDS {
            kinds.insert(text, 1);
        } else {
            *kinds.entry("(other errors)".to_owned()).or_default() += 1;
        }
    }

    fn delivered(&self, key: u32, served_at_ms: u64, latency_us: u64) {
        self.latency.record(latency_us);
        let mut updates = lock(&self.updates);
        let len = updates.len();
        match updates.get_mut(&(key, served_at_ms)) {
            Some(u) => {
                u.reached += 1;
                u.first_us = u.first_us.min(latency_us);
                u.last_us = u.last_us.max(latency_us);
            }
            None if len < MAX_UPDATES => {
                let u = Update { served_at_ms, reached: 1, first_us: latency_us, last_us: latency_us };
                updates.insert((key, served_at_ms), u);
            }
            None => {
                self.updates_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single insert or update.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a connection ended (other than being stopped).
enum Failure {
    Socket(std::io::Error),
    Connect(std::io::Error),
    Timeout(&'static str),
    Status(u16),
    NotEventStream,
    Io(std::io::Error),
    Closed,
    Parse(WireError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(e) => write!(f, "socket/bind: {e}"),
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Timeout(what) => write!(f, "timeout: {what}"),
            Self::Status(code) => write!(f, "status {code}"),
            Self::NotEventStream => f.write_str("200 without content-type text/event-stream"),
            Self::Io(e) => write!(f, "read/write: {e}"),
            Self::Closed => f.write_str("closed by the server"),
            Self::Parse(e) => write!(f, "parse: {e}"),
        }
    }
}

/// The running generator; dropping it aborts every connection.
pub struct Load {
    stats: Arc<Stats>,
    stop: CancellationToken,
    /// The connections' tasks (with their place in the plan and their trace
    /// when traced) and a watchdog.
    tasks: JoinSet<Option<(usize, Trace)>>,
    sources: Vec<Ipv4Addr>,
    connections: usize,
}

struct Shared {
    stats: Arc<Stats>,
    config: Config,
    stop: CancellationToken,
    pacer: Pacer,
}

impl Load {
    /// Starts every connection of `plan` (paced; see the module doc). Must be
    /// called inside a tokio runtime.
    pub fn start(plan: Plan, config: Config) -> Self {
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let connections = plan.conns.len();
        let per_source = config.per_source.max(1) as usize;
        let count = u32::try_from(plan.conns.len().div_ceil(per_source)).unwrap_or(u32::MAX);
        let first = NEXT_SOURCE.fetch_add(count, Relaxed);
        let sources: Vec<Ipv4Addr> =
            (0..count).map(|i| Ipv4Addr::from(0x7f00_0000 | ((first + i) & 0x00ff_ffff))).collect();
        let mut tasks = JoinSet::new();
        let deadline = config.deadline;
        let gap = Duration::from_secs(1) / config.connect_rate.max(1);
        let shared = Arc::new(Shared {
            stats: stats.clone(),
            config,
            stop: stop.clone(),
            pacer: Pacer { next: Mutex::new(Instant::now()), gap },
        });
        let watchdog = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = watchdog.cancelled() => {}
                _ = tokio::time::sleep_until(deadline) => watchdog.cancel(),
            }
            None
        });
        for (i, conn) in plan.conns.into_iter().enumerate() {
            let source = IpAddr::V4(sources[i / per_source]);
            tasks.spawn(connection(i, conn, source, shared.clone()));
        }
        Self { stats, stop, tasks, sources, connections }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The source addresses this run binds to.
    pub fn sources(&self) -> &[Ipv4Addr] {
        &self.sources
    }

    /// Waits until `n` connections have their first event, or `limit` has
    /// passed; returns how long it took, or `None` on the limit.
    pub async fn wait_ready(&self, n: u64, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if self.stats.counters().ready >= n {
                return Some(start.elapsed());
            }
            if start.elapsed() >= limit || self.stop.is_cancelled() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes every connection; returns how many tasks had not finished
    /// within `grace` (they are aborted).
    pub async fn stop(self, grace: Duration) -> usize {
        self.stop_traced(grace).await.1
    }

    /// [`Load::stop`], and each connection's [`Trace`] in plan order
    /// (`None`: not traced, or not stopped within `grace`).
    pub async fn stop_traced(mut self, grace: Duration) -> (Vec<Option<Trace>>, usize) {
        self.stop.cancel();
        let deadline = Instant::now() + grace;
        let mut traces: Vec<Option<Trace>> = (0..self.connections).map(|_| None).collect();
        while let Ok(Some(done)) = tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
            if let Ok(Some((i, trace))) = done {
                traces[i] = Some(trace);
            }
        }
        let left = self.tasks.len();
        self.tasks.shutdown().await;
        (traces, left)
    }
}

/// Spaces connection starts `gap` apart, across all connections.
struct Pacer {
    next: Mutex<Instant>,
    gap: Duration,
}

impl Pacer {
    /// Waits for this caller's slot; `false` if stopped first.
    async fn wait(&self, stop: &CancellationToken) -> bool {
        let at = {
            let mut next = lock(&self.next);
            let at = (*next).max(Instant::now());
            *next = at + self.gap;
            at
        };
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep_until(at) => true,
        }
    }
}

/// One browser: connect, read until stopped; reconnect when the stream ends.
/// Its trace, if traced, when it ends.
async fn connection(i: usize, conn: Conn, source: IpAddr, shared: Arc<Shared>) -> Option<(usize, Trace)> {
    let mut first = true;
    // Boxed: an untraced connection pays one pointer.
    let mut trace = shared.config.trace.then(Box::<Trace>::default);
    loop {
        if !shared.pacer.wait(&shared.stop).await {
            break;
        }
        if !std::mem::take(&mut first) {
            shared.stats.c.reconnects.fetch_add(1, Relaxed);
        }
        match stream(&conn, source, &shared, trace.as_deref_mut()).await {
            Ok(()) => break,
            Err(failure) => shared.stats.fail(&failure),
        }
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = tokio::time::sleep(shared.config.reconnect_delay) => {}
        }
    }
    trace.map(|t| (i, *t))
}

/// Decrements a gauge when dropped.
struct Gauge<'a>(Option<&'a AtomicU64>);

impl<'a> Gauge<'a> {
    fn raise(&mut self, counter: &'a AtomicU64) {
        if self.0.is_none() {
            counter.fetch_add(1, Relaxed);
            self.0 = Some(counter);
        }
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.fetch_sub(1, Relaxed);
        }
    }
}

/// One connection's life; `Ok` when stopped, `Err` when it ended otherwise.
async fn stream(
    conn: &Conn,
    source: IpAddr,
    shared: &Shared,
    trace: Option<&mut Trace>,
) -> Result<(), Failure> {
    let stats = &shared.stats;
    let config = &shared.config;
    let started = Instant::now();
    stats.c.attempts.fetch_add(1, Relaxed);
    let socket = TcpSocket::new_v4().map_err(Failure::Socket)?;
    socket.bind(SocketAddr::new(source, 0)).map_err(Failure::Socket)?;
    if config.reset {
        socket.set_zero_linger().map_err(Failure::Socket)?;
    }
    let connecting = tokio::time::timeout(config.connect_timeout, socket.connect(conn.addr));
    let mut tcp: TcpStream = tokio::select! {
        _ = shared.stop.cancelled() => return Ok(()),
        r = connecting => r.map_err(|_| Failure::Timeout("TCP connect"))?.map_err(Failure::Connect)?,
    };
    stats.connect.record(micros(started.elapsed()));
    let _ = tcp.set_nodelay(true);
    let resumed = trace.as_ref().and_then(|t| t.last_id).map(|id| {
        let head = &conn.request[..conn.request.len() - 2];
        [head, format!("Last-Event-ID: {id}\r\n\r\n").as_bytes()].concat()
    });
    let request = resumed.as_deref().unwrap_or(&conn.request);
    let writing = tokio::time::timeout(config.connect_timeout, tcp.write_all(request));
    tokio::select! {
        _ = shared.stop.cancelled() => return Ok(()),
        r = writing => r.map_err(|_| Failure::Timeout("sending the request"))?.map_err(Failure::Io)?,
    }

    let mut open = Gauge(None);
    let mut ready = Gauge(None);
    let mut reader = Reader {
        http: ResponseParser::new(),
        sse: SseParser::new(),
        status: None,
        first_done: false,
        started,
        key: conn.key,
        trace,
    };
    // No head within the connect timeout, then no bytes within the idle
    // timeout, ends the connection.
    let mut silence = pin!(tokio::time::sleep(config.connect_timeout));
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return Ok(()),
            _ = silence.as_mut() => {
                let what = if reader.status.is_some() { "no bytes within the idle timeout" } else { "no response head" };
                return Err(Failure::Timeout(what));
            }
            r = tcp.readable() => r.map_err(Failure::Io)?,
        }
        let read = BUF.with_borrow_mut(|buf| match tcp.try_read(buf) {
            Ok(0) => Err(Failure::Closed),
            Ok(n) => {
                stats.c.bytes.fetch_add(n as u64, Relaxed);
                reader.feed(&buf[..n], stats).map(|()| true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(Failure::Io(e)),
        })?;
        if read {
            silence.as_mut().reset(Instant::now() + config.idle_timeout);
        }
        if reader.status == Some(200) {
            if open.0.is_none() {
                stats.c.established.fetch_add(1, Relaxed);
            }
            open.raise(&stats.c.open);
        }
        if reader.first_done {
            ready.raise(&stats.c.ready);
        }
    }
}

/// Parser state of one connection.
struct Reader<'t> {
    http: ResponseParser,
    sse: SseParser,
    status: Option<u16>,
    first_done: bool,
    started: Instant,
    key: u32,
    trace: Option<&'t mut Trace>,
}

impl Reader<'_> {
    fn feed(&mut self, bytes: &[u8], stats: &Stats) -> Result<(), Failure> {
        let now_us = unix_micros();
        let Self { http, sse, status, first_done, started, key, trace } = self;
        let mut not_sse = false;
        let mut ended = false;
        let fed = http.feed(bytes, &mut |item| match item {
            Item::Head(head) => {
                *status = Some(head.status);
                if head.status != 200 {
                    return Err(WireError("status"));
                }
                if !head.content_type.is_some_and(|t| t.starts_with("text/event-stream")) {
                    not_sse = true;
                    return Err(WireError("content-type"));
                }
                Ok(())
            }
            Item::Body(body) => sse.feed(body, &mut |event| match event {
                SseItem::Comment => {
                    stats.c.comments.fetch_add(1, Relaxed);
                }
                SseItem::Event { kind, id, stamp } => {
                    if let Some(t) = trace.as_deref_mut() {
                        t.event(kind, id, stamp, now_us);
                    }
                    let named = match kind {
                        Kind::Message => {
                            stats.c.messages.fetch_add(1, Relaxed);
                            match stamp {
                                None => {
                                    stats.c.unstamped.fetch_add(1, Relaxed);
                                }
                                Some(ms) if *first_done => {
                                    let latency = now_us.saturating_sub(ms.saturating_mul(1000));
                                    stats.delivered(*key, ms, latency);
                                }
                                Some(_) => {}
                            }
                            if !std::mem::replace(first_done, true) {
                                stats.first_event.record(micros(started.elapsed()));
                            }
                            return;
                        }
                        Kind::Stale => &stats.c.stale,
                        Kind::Live => &stats.c.live,
                        Kind::Presence => &stats.c.presence,
                        Kind::End => &stats.c.end,
                        Kind::Other => &stats.c.other_named,
                    };
                    named.fetch_add(1, Relaxed);
                }
            }),
            Item::End => {
                ended = true;
                Err(WireError("end"))
            }
        });
        match fed {
            Ok(()) => Ok(()),
            Err(_) if ended => Err(Failure::Closed),
            Err(_) if not_sse => Err(Failure::NotEventStream),
            Err(_) if status.is_some_and(|s| s != 200) => Err(Failure::Status(status.unwrap_or(0))),
            Err(e) => Err(Failure::Parse(e)),
        }
    }
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Microseconds since the Unix epoch (0 for a clock before 1970).
pub fn unix_micros() -> u64 {
    micros(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Percentiles of a histogram of µs, in ms.
pub fn ms(s: &Snapshot, q: f64) -> Option<f64> {
    s.quantile(q).map(|us| us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncReadExt, net::TcpListener};

    /// A scripted SSE server: answers each connection with `script(i)` and
    /// closes it (if `close`) or holds it open.
    async fn server(script: fn(usize) -> Vec<u8>, close: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            for i in 0.. {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let mut req = [0u8; 1024];
                let n = s.read(&mut req).await.unwrap();
                assert!(req[..n].starts_with(b"GET /live/e/stream HTTP/1.1\r\n"));
                let accept = b"\r\nAccept: text/event-stream\r\n";
                assert!(req[..n].windows(accept.len()).any(|w| w == accept));
                s.write_all(&script(i)).await.unwrap();
                if !close {
                    held.push(s);
                }
            }
        });
        (addr, task)
    }

    fn config(rate: u32) -> Config {
        Config {
            connect_rate: rate,
            per_source: 2,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
            reconnect_delay: Duration::from_millis(10),
            deadline: Instant::now() + Duration::from_secs(10),
            reset: false,
            trace: false,
        }
    }

    #[test]
    fn gaps_find_events_that_missed_a_change() {
        let stats = Stats::default();
        // Event 1: every 1,000 ms; event 2 misses the change at 3,000;
        // event 3 receives nothing; event 4 is not expected.
        for at in [1_000, 2_000, 3_000, 4_000] {
            stats.delivered(1, at, 5);
        }
        for at in [1_000, 2_000, 4_000] {
            stats.delivered(2, at, 5);
        }
        stats.delivered(4, 2_500, 5);
        let g = stats.gaps([1, 2], 500, 4_500, 1_500);
        assert_eq!((g.events, g.with_gap, g.longest_ms), (2, 1, 2_000));
        let g = stats.gaps([1, 2, 3], 500, 4_500, 1_500);
        assert_eq!((g.events, g.with_gap, g.longest_ms), (3, 2, 4_000));
        // Updates outside the window do not count.
        let g = stats.gaps([1], 2_500, 4_500, 1_500);
        assert_eq!((g.with_gap, g.longest_ms), (0, 1_000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reset_closes_with_rst() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut plan = Plan::default();
        plan.push(addr, "/live/e/stream", 0);
        let load = Load::start(plan, Config { reset: true, ..config(1000) });
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = [0u8; 1024];
        assert!(s.read(&mut req).await.unwrap() > 0);
        s.write_all(&stream_with_stamps(&[1])).await.unwrap();
        assert!(load.wait_ready(1, Duration::from_secs(5)).await.is_some());
        assert_eq!(load.stop(Duration::from_secs(2)).await, 0);
        let err = s.read(&mut req).await.expect_err("a reset, not an end of stream");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn traced_connections_keep_their_events_and_resume_with_the_last_id() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut plan = Plan::default();
        plan.push(addr, "/live/e/stream", 0);
        let load = Load::start(plan, Config { trace: true, ..config(1000) });
        let mut req = [0u8; 1024];
        let (mut s, _) = listener.accept().await.unwrap();
        let n = s.read(&mut req).await.unwrap();
        assert!(!String::from_utf8_lossy(&req[..n]).contains("Last-Event-ID"));
        s.write_all(&stream_with_stamps(&[1, 2])).await.unwrap();
        drop(s);
        let (mut s, _) = listener.accept().await.unwrap();
        let n = s.read(&mut req).await.unwrap();
        assert!(String::from_utf8_lossy(&req[..n]).ends_with("\r\nLast-Event-ID: 1\r\n\r\n"));
        let (traces, stuck) = load.stop_traced(Duration::from_secs(2)).await;
        let trace = traces[0].as_ref().expect("a trace");
        assert_eq!((trace.data.len(), trace.named.len(), stuck), (2, 0, 0));
        assert_eq!((trace.data[1].id, trace.data[1].stamp), (Id::Value(1), Some(2)));
    }

    fn stream_with_stamps(stamps: &[u64]) -> Vec<u8> {
        let mut body = b"retry: 3000\n\n:\n\n".to_vec();
        for s in stamps {
            body.extend_from_slice(format!("id: 1\ndata: {{\"a\":1,\"served_at_ms\":{s}}}\n\n").as_bytes());
        }
        body.extend_from_slice(b"event: presence\ndata: {\"viewers\":3}\n\n");
        // Split into chunks of 7 bytes so events straddle chunks.
        let mut wire =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec();
        for piece in body.chunks(7) {
            wire.extend_from_slice(format!("{:X}\r\n", piece.len()).as_bytes());
            wire.extend_from_slice(piece);
            wire.extend_from_slice(b"\r\n");
        }
        wire
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_latency_per_update_and_binds_distinct_sources() {
        // The same stamps for every connection: they are the same updates.
        static BASE_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let (addr, server) = server(
            |_| {
                let now_ms = *BASE_MS.get_or_init(|| unix_micros() / 1000);
                stream_with_stamps(&[now_ms - 5000, now_ms - 20, now_ms - 10])
            },
            false,
        )
        .await;
        let mut plan = Plan::default();
        for _ in 0..5 {
            plan.push(addr, "/live/e/stream", 7);
        }
        let load = Load::start(plan, config(1000));
        assert_eq!(load.sources().len(), 3, "2 per source address");
        assert!(load.wait_ready(5, Duration::from_secs(5)).await.is_some());
        let c = load.stats().counters();
        assert_eq!((c.open, c.ready, c.established, c.errors), (5, 5, 5, 0));
        assert_eq!((c.messages, c.presence, c.comments, c.unstamped), (15, 5, 5, 0));
        // The first event (5 s old) is not a delivery.
        let lat = load.stats().latency.snapshot();
        assert_eq!(lat.count, 10);
        assert!(lat.max < 1_000_000, "{}", lat.max);
        let (updates, dropped) = load.stats().updates_served(0, u64::MAX);
        assert_eq!((updates.len(), dropped), (2, 0), "two updates, each reached 5 browsers");
        assert!(updates.iter().all(|u| u.reached == 5 && u.first_us <= u.last_us));
        assert_eq!(load.stop(Duration::from_secs(2)).await, 0);
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_nchan_eventsource_streams() {
        // nchan's EventSource answer: no length, no chunking (the body runs
        // until close), a `: hi` comment, `id: <time>:<tag>` before the data.
        static BASE_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let (addr, server) = server(
            |_| {
                let now_ms = *BASE_MS.get_or_init(|| unix_micros() / 1000);
                let mut wire = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
                    Content-Type: text/event-stream; charset=utf-8\r\nConnection: keep-alive\r\n\r\n: hi\n\n"
                    .to_vec();
                for (i, stamp) in [now_ms - 5000, now_ms - 20].iter().enumerate() {
                    let event = format!("id: 1795613267:{i}\ndata: {{\"a\":1,\"served_at_ms\":{stamp}}}\n\n");
                    wire.extend_from_slice(event.as_bytes());
                }
                wire
            },
            false,
        )
        .await;
        let mut plan = Plan::default();
        for _ in 0..3 {
            plan.push(addr, "/live/e/stream", 0);
        }
        let load = Load::start(plan, config(1000));
        assert!(load.wait_ready(3, Duration::from_secs(5)).await.is_some());
        let c = load.stats().counters();
        assert_eq!((c.open, c.ready, c.errors, c.messages, c.comments, c.unstamped), (3, 3, 0, 6, 3, 0));
        let (updates, _) = load.stats().updates_served(0, u64::MAX);
        assert_eq!(updates.len(), 1, "the first event of each connection is not a delivery");
        assert_eq!(updates[0].reached, 3);
        assert_eq!(load.stop(Duration::from_secs(2)).await, 0);
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closes_and_bad_answers_are_errors_and_reconnect() {
        let (addr, server) = server(
            |i| match i % 3 {
                0 => b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec(),
                1 => stream_with_stamps(&[1]),
                _ => b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"
                    .to_vec(),
            },
            true,
        )
        .await;
        let mut plan = Plan::default();
        plan.push(addr, "/live/e/stream", 0);
        let load = Load::start(plan, config(100));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let stats = load.stats().clone();
        load.stop(Duration::from_secs(2)).await;
        let c = stats.counters();
        assert!(c.reconnects >= 3 && c.errors >= 3, "{c:?}");
        let kinds: Vec<String> = stats.error_kinds().into_iter().map(|(k, _)| k).collect();
        for want in ["status 503", "closed by the server", "parse: bad chunk size line"] {
            assert!(kinds.iter().any(|k| k == want), "{want} missing from {kinds:?}");
        }
        server.abort();
    }
}
