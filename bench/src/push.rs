//! One measured run of the push path, media-sim → poller → edge(s) → SSE
//! browsers, shared by `fanout`, `breadth` and `nchan` ([`System`] is what
//! serves the browsers). BENCHMARKS.md describes the phases; they are chosen
//! so each figure means one thing (fresh servers per size so memory does not
//! carry over, a warm-up before the idle RSS, a settle before the connected
//! RSS). Errors are never hidden: every failure and reconnect of the whole
//! run is counted and listed by message.

use crate::{
    histogram::Snapshot,
    procstat::{self, MemoryDetail, Sample},
    report,
    sse_load::{self, Counters, Load, Plan},
    stack::{self, BinArgs, Proc},
};
use anyhow::Context;
use serde::Serialize;
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};
use tokio::time::Instant;

/// Targets from the issue, shown next to the figures.
pub const TARGET_RSS_PER_CONN_KIB: f64 = 6.0;
pub const TARGET_P99_MS: f64 = 50.0;

/// How the browsers are generated; shared with the `polling` scenario.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct LoadArgs {
    /// New SSE connections per second (first connections and reconnects).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub connect_rate: u32,

    /// Connections bound to each source address (127.0.0.2, 127.0.0.3, ...).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=25_000))]
    pub per_source: u32,
}

impl LoadArgs {
    /// The generator's settings for a run that must end by `deadline`.
    pub fn config(&self, deadline: Instant) -> sse_load::Config {
        sse_load::Config {
            connect_rate: self.connect_rate,
            per_source: self.per_source,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(40),
            reconnect_delay: Duration::from_millis(100),
            deadline,
            reset: false,
            trace: false,
        }
    }

    /// Time to start `n` connections at the connect rate.
    pub fn ramp(&self, n: u64) -> Duration {
        Duration::from_secs_f64(n as f64 / f64::from(self.connect_rate.max(1)))
    }
}

/// Events x browsers over edges: the shape of the multi-event scenarios
/// (`breadth`, `failover`).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct ShapeArgs {
    /// Events watched (ids ev-000000, ev-000001, ...).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub events: u32,

    /// Browsers per event, spread over the edges.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub browsers: u32,

    /// Edge processes (each given every poller).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub edges: u32,
}

/// The sizes of the one-channel scenarios (`fanout`, `nchan`).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct Sizes {
    /// SSE connections; a comma-separated list (1000,5000,15000) runs each
    /// size in turn with a fresh server.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000",
        value_parser = clap::value_parser!(u32).range(1..=18_000)
    )]
    pub connections: Vec<u32>,
}

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct PushArgs {
    /// Length of the measurement window.
    #[arg(long, default_value = "30s", value_parser = at_least_1s)]
    #[serde(rename = "duration_s", serialize_with = "crate::report::secs")]
    pub duration: Duration,

    /// Wait between "every browser has its first event" and the connected
    /// RSS sample / the window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    #[serde(rename = "settle_s", serialize_with = "crate::report::secs")]
    pub settle: Duration,

    /// The poller's --interval.
    #[arg(long, default_value = "1s", value_parser = at_least_1s)]
    #[serde(rename = "interval_s", serialize_with = "crate::report::secs")]
    pub interval: Duration,

    /// media-sim's --change-every (it runs with --stamp: every answer is new).
    #[arg(long, default_value = "1s", value_parser = at_least_1s)]
    #[serde(rename = "change_every_s", serialize_with = "crate::report::secs")]
    pub change_every: Duration,

    #[command(flatten)]
    pub load: LoadArgs,

    #[command(flatten)]
    pub bins: BinArgs,
}

pub fn at_least_1s(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

/// Who watches what.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub edges: usize,
    pub events: u32,
    pub per_event: u32,
}

impl Shape {
    pub fn connections(&self) -> u64 {
        u64::from(self.events) * u64::from(self.per_event)
    }
}

pub fn event_id(index: u32) -> String {
    format!("ev-{index:06}")
}

/// What serves the browsers in a run: livepush (fresh edges fed by one
/// poller and media-sim, [`Upstream`]) or another push server
/// ([`crate::nchan`]). [`measure`] runs the same phases against either.
pub trait System {
    type Server: Server;
    /// Names the system in columns and notes: "livepush", "nchan".
    fn name(&self) -> &'static str;
    /// What one of its servers is called in labels: "edge", "nginx".
    fn server_name(&self) -> &'static str;
    /// Starts one fresh server and waits until it answers.
    async fn start_server(&mut self) -> anyhow::Result<Self::Server>;
    /// The path of event `index`'s SSE stream on a server.
    fn stream_path(&self, event: u32) -> String;
    /// The system's other processes, whose CPU is reported too.
    fn feeders(&self) -> Vec<(&'static str, u32)>;
    /// Upstream requests so far (media-sim's count), if the system polls one.
    async fn upstream_requests(&self) -> anyhow::Result<Option<u64>>;
    /// Fails if one of the system's long-running processes died.
    fn ensure_running(&mut self) -> anyhow::Result<()>;
}

/// One server holding browsers: an edge, or an nginx instance.
pub trait Server {
    fn addr(&self) -> SocketAddr;
    /// Its command line, for the report.
    fn cmd(&self) -> &str;
    /// Its processes, measured together: the edge; nginx's master and workers.
    fn pids(&self) -> anyhow::Result<Vec<u32>>;
    /// Fails if it died.
    fn ensure_running(&mut self) -> anyhow::Result<()>;
    async fn stop(self) -> anyhow::Result<()>;
    /// Its connections to the poller, if it has any (an edge's `/metrics`).
    async fn upstream(&self) -> anyhow::Result<Option<EdgeUpstream>> {
        Ok(None)
    }
}

/// An edge's upstream, from its `/metrics`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EdgeUpstream {
    /// `livepush_edge_upstream_channels`, all pollers: HTTP/2 connections
    /// carrying `Subscribe` streams.
    pub channels: u64,
    /// `livepush_edge_upstream_streams`.
    pub streams: u64,
    /// `livepush_edge_upstream_subscribe_failures_total`, all reasons.
    pub subscribe_failures: u64,
}

impl EdgeUpstream {
    /// Reads the edge at `addr`.
    pub async fn read(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self::parse(&stack::scrape(addr).await?))
    }

    /// From an edge's `/metrics` text (a metric missing counts 0).
    pub fn parse(text: &str) -> Self {
        use livepush::metrics::{
            EDGE_UPSTREAM_CHANNELS, EDGE_UPSTREAM_STREAMS, EDGE_UPSTREAM_SUBSCRIBE_FAILURES,
        };
        let get = |name| stack::metric(text, name).unwrap_or(0);
        Self {
            channels: get(EDGE_UPSTREAM_CHANNELS),
            streams: get(EDGE_UPSTREAM_STREAMS),
            subscribe_failures: get(EDGE_UPSTREAM_SUBSCRIBE_FAILURES),
        }
    }

    fn add(mut self, other: Self) -> Self {
        self.channels += other.channels;
        self.streams += other.streams;
        self.subscribe_failures += other.subscribe_failures;
        self
    }
}

/// The running upstream: media-sim (with `--stamp`) and the poller.
pub struct Upstream {
    pub media: Proc,
    pub poller: Proc,
    bins: BinArgs,
}

impl Upstream {
    pub async fn start(args: &PushArgs) -> anyhow::Result<Self> {
        let media = stack::media_sim(&args.bins, args.change_every, true).await?;
        let poller = stack::poller(&args.bins, media.addr, args.interval).await?;
        Ok(Self { media, poller, bins: args.bins.clone() })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.poller.stop().await?;
        self.media.stop().await
    }
}

impl System for Upstream {
    type Server = Proc;

    fn name(&self) -> &'static str {
        "livepush"
    }

    fn server_name(&self) -> &'static str {
        "edge"
    }

    async fn start_server(&mut self) -> anyhow::Result<Proc> {
        stack::edge(&self.bins, &[self.poller.addr]).await
    }

    fn stream_path(&self, event: u32) -> String {
        format!("/live/{}/stream", event_id(event))
    }

    fn feeders(&self) -> Vec<(&'static str, u32)> {
        vec![("poller", self.poller.pid()), ("media-sim", self.media.pid())]
    }

    async fn upstream_requests(&self) -> anyhow::Result<Option<u64>> {
        stack::media_requests(self.media.addr).await.map(Some)
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.poller.child.ensure_running()?;
        self.media.child.ensure_running()
    }
}

/// An edge.
impl Server for Proc {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn cmd(&self) -> &str {
        &self.cmd
    }

    fn pids(&self) -> anyhow::Result<Vec<u32>> {
        Ok(vec![self.pid()])
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.child.ensure_running()
    }

    async fn stop(self) -> anyhow::Result<()> {
        Proc::stop(self).await
    }

    async fn upstream(&self) -> anyhow::Result<Option<EdgeUpstream>> {
        EdgeUpstream::read(self.addr).await.map(Some)
    }
}

/// The parameters shared by every column of a run.
#[derive(Serialize)]
pub struct Params<'a> {
    /// The flags (`interval_s`, `change_every_s`: the livepush side's).
    pub args: &'a PushArgs,
    /// Host cores, shared by all processes.
    pub cores: usize,
    /// The livepush side (`None` in an nchan-only run).
    pub media_cmd: Option<String>,
    pub poller_cmd: Option<String>,
    /// Each kind of server's command line (ports vary).
    pub server_cmds: BTreeMap<&'static str, String>,
}

impl<'a> Params<'a> {
    pub fn new(args: &'a PushArgs, up: Option<&Upstream>, outcomes: &[Outcome]) -> Self {
        Self {
            args,
            cores: report::cores(),
            media_cmd: up.map(|u| u.media.cmd.clone()),
            poller_cmd: up.map(|u| u.poller.cmd.clone()),
            server_cmds: outcomes.iter().map(|o| (o.server, o.server_cmd.clone())).collect(),
        }
    }
}

/// The report of the one-channel and many-event runs: shared parameters,
/// one column per outcome.
#[derive(Serialize)]
pub struct Figures<'a> {
    pub params: Params<'a>,
    pub runs: &'a [Outcome],
}

/// The latency note every report of [`measure`]'s outcomes carries.
pub fn latency_note(clock: &str) -> String {
    format!(
        "latency = browser read time - served_at_ms ({clock}, ms precision: up to 1 ms too high); \
         each connection's first event (the replayed latest value) is not counted"
    )
}

/// Everything measured in one run: one column of the report.
#[derive(Serialize)]
pub struct Outcome {
    /// Names the column (set by the scenario).
    pub column: String,
    /// [`System::name`].
    pub system: &'static str,
    pub connections: u64,
    pub servers: usize,
    pub events: u32,
    pub per_event: u32,
    pub connecting: Connecting,
    /// During the window: the update produced (media-sim serving it, or the
    /// harness just before publishing to nchan) to a browser reading it.
    pub delivery: Delivery,
    /// Updates served in the window and all their deliveries.
    pub per_update: PerUpdate,
    /// The load generator's counters over the window (`open`, `ready`: at
    /// its end) and over the whole run, ramp included.
    pub window: Counters,
    pub totals: Counters,
    /// Errors of the whole run by message.
    pub error_kinds: BTreeMap<String, u64>,
    /// Load generator tasks not stopped within 5 s.
    pub stuck: usize,
    /// media-sim's `GET /live` count in the window (`None`: not polled).
    pub upstream: Option<Polls>,
    /// The edges' upstream to the poller, summed over their `/metrics`.
    pub edge_upstream: Option<EdgeUpstreams>,
    /// Mean per server (nginx: master and workers summed).
    pub memory: Memory,
    /// CPU in the window; `_pct` in % of one core.
    pub cpu: Cpu,
    pub targets: Targets,
    #[serde(skip)]
    pub server: &'static str,
    #[serde(skip)]
    pub server_cmd: String,
}

#[derive(Serialize)]
pub struct Connecting {
    /// Every browser had its first event after (`None`: not within the limit).
    pub all_ready_s: Option<f64>,
    pub ready: u64,
    pub connect_p50_ms: Option<f64>,
    pub connect_p99_ms: Option<f64>,
    pub connect_max_ms: Option<f64>,
    /// TcpExt ListenOverflows, ListenDrops, SyncookiesSent during the ramp
    /// (the whole network namespace).
    pub listen_overflows: u64,
    pub listen_drops: u64,
    pub syncookies: u64,
    /// The servers' CPU while connecting.
    pub server_cpu_pct: f64,
    pub server_us_per_conn: f64,
    pub first_event_p50_ms: Option<f64>,
    pub first_event_p99_ms: Option<f64>,
}

#[derive(Serialize)]
pub struct Delivery {
    pub messages_per_s: f64,
    pub kib_per_s: f64,
    pub latency_n: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p90_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub latency_mean_ms: Option<f64>,
}

#[derive(Serialize)]
pub struct PerUpdate {
    pub updates: usize,
    pub reached_min: Option<u32>,
    pub reached_mean: Option<f64>,
    /// Updates that reached every browser of their event.
    pub reached_all_pct: Option<f64>,
    /// The slowest browser of an update, and first to last browser.
    pub last_p50_ms: Option<f64>,
    pub last_p99_ms: Option<f64>,
    pub spread_p50_ms: Option<f64>,
    pub spread_max_ms: Option<f64>,
    /// Events whose updates lay more than 1.5 intervals apart (`None`: not polled).
    pub events_missing_a_change: Option<u64>,
    pub longest_gap_s: Option<f64>,
    /// Deliveries not grouped per update (cap).
    pub dropped: u64,
}

#[derive(Serialize)]
pub struct Polls {
    pub requests: u64,
    pub requests_per_s: f64,
    /// events / interval
    pub expected_per_s: f64,
    pub polls_per_event_per_interval: f64,
}

#[derive(Serialize)]
pub struct EdgeUpstreams {
    /// All browsers connected, settled.
    pub connected: EdgeUpstream,
    pub end: EdgeUpstream,
}

#[derive(Serialize)]
pub struct Memory {
    pub conns_per_server: f64,
    pub processes: f64,
    pub rss_idle_mib: f64,
    pub rss_connected_mib: f64,
    pub rss_end_mib: f64,
    pub rss_peak_mib: f64,
    /// (connected - idle) / connections, then its RssAnon, RssFile and
    /// RssShmem parts.
    pub rss_per_conn_kib: f64,
    pub anon_per_conn_kib: f64,
    pub file_per_conn_kib: f64,
    pub shmem_per_conn_kib: f64,
    pub end_per_conn_kib: f64,
    /// smaps_rollup Private_Dirty, connected.
    pub private_dirty_mib: f64,
    pub threads: f64,
    pub load_rss_per_conn_kib: f64,
    pub load_rss_mib: f64,
}

#[derive(Serialize)]
pub struct Cpu {
    pub server_s: f64,
    pub server_pct: f64,
    pub server_system_pct: f64,
    pub server_us_per_delivery: f64,
    pub server_ms_per_update: f64,
    /// The system's other processes (poller, media-sim).
    pub feeders_s: BTreeMap<&'static str, f64>,
    pub feeders_pct: BTreeMap<&'static str, f64>,
    pub load_s: f64,
    pub load_pct: f64,
    pub load_system_pct: f64,
    /// Other programs on the host, competing.
    pub others_pct: f64,
}

/// The targets.
#[derive(Serialize)]
pub struct Targets {
    pub no_errors: bool,
    pub rss_per_conn_le_6_kib: bool,
    pub p99_lt_50_ms: Option<bool>,
    pub one_poll_per_event_per_interval: Option<bool>,
}

/// Runs one shape against `sys` (see the module doc for the phases).
pub async fn measure<S: System>(args: &PushArgs, shape: Shape, sys: &mut S) -> anyhow::Result<Outcome> {
    let noun = sys.server_name();
    let mut edges = Vec::with_capacity(shape.edges);
    for _ in 0..shape.edges {
        edges.push(sys.start_server().await?);
    }
    let server_cmd = edges.first().map(|e| e.cmd().to_owned()).unwrap_or_default();

    // Warm-up: one stream per edge until its first event.
    let mut plan = Plan::default();
    for e in &edges {
        plan.push(e.addr(), &sys.stream_path(0), 0);
    }
    let warm = Load::start(plan, args.load.config(Instant::now() + Duration::from_secs(30)));
    let warmed = warm.wait_ready(edges.len() as u64, Duration::from_secs(20)).await;
    let warm_errors = warm.stats().error_kinds();
    warm.stop(Duration::from_secs(2)).await;
    warmed.with_context(|| format!("warm-up streams got no first event within 20 s: {warm_errors:?}"))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let me = std::process::id();
    let idle: Vec<(usize, Sample, MemoryDetail)> = edges.iter().map(memory).collect::<Result<_, _>>()?;
    let load_rss_idle = procstat::sample(me)?.rss_bytes;

    // Connect everyone: connection i watches event i % events on edge
    // (i / events) % edges, so every event has browsers on every edge.
    let n = shape.connections();
    let mut plan = Plan::default();
    let mut conns = vec![0u64; edges.len()];
    for i in 0..n {
        let event = u32::try_from(i % u64::from(shape.events)).context("event index")?;
        let e = usize::try_from((i / u64::from(shape.events)) % edges.len() as u64).context("edge index")?;
        plan.push(edges[e].addr(), &sys.stream_path(event), event);
        conns[e] += 1;
    }
    let ramp_limit = args.load.ramp(n) + Duration::from_secs(30);
    let deadline = Instant::now() + ramp_limit + args.settle + args.duration + Duration::from_secs(60);
    let listen0 = procstat::tcp_ext(LISTEN_COUNTERS)?;
    let ramp_cpu0 = servers_cpu(&edges)?;
    let ramp_start = Instant::now();
    let load = Load::start(plan, args.load.config(deadline));
    eprintln!(
        "connecting {n} browsers to {} {noun}(s) from {} source address(es) at {}/s",
        edges.len(),
        load.sources().len(),
        args.load.connect_rate
    );
    let ready_after = load.wait_ready(n, ramp_limit).await;
    let cpu_ramp = servers_cpu(&edges)? - ramp_cpu0;
    let ramp = ramp_start.elapsed();
    let ready_at_wait_end = load.stats().counters().ready;
    if ready_after.is_none() {
        eprintln!(
            "only {ready_at_wait_end} of {n} browsers had a first event after {ramp_limit:?}; measuring anyway"
        );
    }
    tokio::time::sleep(args.settle).await;
    for e in &mut edges {
        e.ensure_running()?;
    }
    let connected: Vec<(usize, Sample, MemoryDetail)> = edges.iter().map(memory).collect::<Result<_, _>>()?;
    let load_rss_connected = procstat::sample(me)?.rss_bytes;
    let upstream_connected = upstream(&edges).await?;

    // The window.
    let stats = load.stats().clone();
    eprintln!("measuring for {}", humantime::format_duration(args.duration));
    stats.latency.reset();
    let c0 = stats.counters();
    let r0 = sys.upstream_requests().await?;
    // The servers' processes, then the system's others, then this process.
    let mut pids: Vec<u32> = Vec::new();
    for e in &edges {
        pids.extend(e.pids()?);
    }
    let k = pids.len();
    let feeders = sys.feeders();
    pids.extend(feeders.iter().map(|&(_, pid)| pid));
    pids.push(me);
    let cpu0 = procstat::Cpu::read(&pids)?;
    let t0_ms = sse_load::unix_micros() / 1000;
    let start = Instant::now();
    tokio::time::sleep(args.duration).await;
    let cpu = procstat::Cpu::read(&pids)?.since(&cpu0);
    let secs = start.elapsed().as_secs_f64();
    let t1_ms = sse_load::unix_micros() / 1000;
    let latency = stats.latency.snapshot();
    let window = stats.counters().since(&c0);
    let r1 = sys.upstream_requests().await?;
    let end: Vec<Sample> =
        edges.iter().map(|e| memory(e).map(|(_, sample, _)| sample)).collect::<Result<_, _>>()?;
    let upstream_end = upstream(&edges).await?;
    for e in &mut edges {
        e.ensure_running()?;
    }
    sys.ensure_running()?;

    // Let the updates served in the window reach everyone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (updates, updates_dropped) = stats.updates_served(t0_ms, t1_ms);
    // A poll every interval (5 % jitter; the settle lets each event's
    // second poll, up to 1.5 intervals after its first, pass): a gap over
    // 1.5 intervals is a change missed.
    let max_gap_ms = u64::try_from(args.interval.as_millis() * 3 / 2).unwrap_or(u64::MAX);
    let gaps = r0.is_some().then(|| stats.gaps(0..shape.events, t0_ms, t1_ms, max_gap_ms));
    let connect = stats.connect.snapshot();
    let first_event = stats.first_event.snapshot();
    let listen1 = procstat::tcp_ext(LISTEN_COUNTERS)?;
    let stuck = load.stop(Duration::from_secs(5)).await;
    let totals = stats.counters();
    for e in edges {
        e.stop().await?;
    }

    // (CPU, of which system) per process.
    let spent = &cpu.procs;
    let (server_s, server_system_s) = spent[..k].iter().fold((0.0, 0.0), |a, s| (a.0 + s.0, a.1 + s.1));
    let (load_s, load_system_s) = spent[spent.len() - 1];
    let pct = |s: f64| 100.0 * s / secs;
    let latency_ms = |q| sse_load::ms(&latency, q);
    let mean = |g: &dyn Fn(usize) -> f64| (0..conns.len()).map(g).sum::<f64>() / conns.len().max(1) as f64;
    let per_conn = |kib: &dyn Fn(usize) -> f64| mean(&|i| kib(i) / conns[i].max(1) as f64);
    let rss_per_conn_kib =
        per_conn(&|i| connected[i].1.rss_bytes.saturating_sub(idle[i].1.rss_bytes) as f64 / 1024.0);
    let requests = r1.zip(r0).map(|(r1, r0)| r1.saturating_sub(r0));
    let interval = args.interval.as_secs_f64();
    let polls_per = requests.map(|r| r as f64 / f64::from(shape.events) / (secs / interval));
    let mut last: Vec<f64> = updates.iter().map(|u| u.last_us as f64 / 1000.0).collect();
    let mut spread: Vec<f64> = updates.iter().map(|u| (u.last_us - u.first_us) as f64 / 1000.0).collect();
    let nonempty = !updates.is_empty();
    let ms = |h: &Snapshot, q| sse_load::ms(h, q);
    Ok(Outcome {
        column: String::new(),
        system: sys.name(),
        connections: n,
        servers: shape.edges,
        events: shape.events,
        per_event: shape.per_event,
        connecting: Connecting {
            all_ready_s: ready_after.map(|d| d.as_secs_f64()),
            ready: ready_at_wait_end,
            connect_p50_ms: ms(&connect, 0.5),
            connect_p99_ms: ms(&connect, 0.99),
            connect_max_ms: ms(&connect, 1.0),
            listen_overflows: listen1[0].saturating_sub(listen0[0]),
            listen_drops: listen1[1].saturating_sub(listen0[1]),
            syncookies: listen1[2].saturating_sub(listen0[2]),
            server_cpu_pct: 100.0 * cpu_ramp / ramp.as_secs_f64().max(1e-3),
            server_us_per_conn: 1e6 * cpu_ramp / n.max(1) as f64,
            first_event_p50_ms: ms(&first_event, 0.5),
            first_event_p99_ms: ms(&first_event, 0.99),
        },
        delivery: Delivery {
            messages_per_s: window.messages as f64 / secs,
            kib_per_s: window.bytes as f64 / 1024.0 / secs,
            latency_n: latency.count,
            latency_p50_ms: latency_ms(0.5),
            latency_p90_ms: latency_ms(0.9),
            latency_p99_ms: latency_ms(0.99),
            latency_max_ms: latency_ms(1.0),
            latency_mean_ms: latency.mean().map(|us| us / 1000.0),
        },
        per_update: PerUpdate {
            updates: updates.len(),
            reached_min: updates.iter().map(|u| u.reached).min(),
            reached_mean: nonempty
                .then(|| updates.iter().map(|u| f64::from(u.reached)).sum::<f64>() / updates.len() as f64),
            reached_all_pct: nonempty.then(|| {
                let all = updates.iter().filter(|u| u.reached >= shape.per_event).count();
                100.0 * all as f64 / updates.len() as f64
            }),
            last_p50_ms: quantile_of(&mut last, 0.5),
            last_p99_ms: quantile_of(&mut last, 0.99),
            spread_p50_ms: quantile_of(&mut spread, 0.5),
            spread_max_ms: quantile_of(&mut spread, 1.0),
            events_missing_a_change: gaps.map(|g| g.with_gap),
            longest_gap_s: gaps.map(|g| g.longest_ms as f64 / 1000.0),
            dropped: updates_dropped,
        },
        window,
        totals,
        error_kinds: stats.error_kinds().into_iter().collect(),
        stuck,
        upstream: requests.zip(polls_per).map(|(requests, polls)| Polls {
            requests,
            requests_per_s: requests as f64 / secs,
            expected_per_s: f64::from(shape.events) / interval,
            polls_per_event_per_interval: polls,
        }),
        edge_upstream: upstream_connected
            .zip(upstream_end)
            .map(|(connected, end)| EdgeUpstreams { connected, end }),
        memory: Memory {
            conns_per_server: mean(&|i| conns[i] as f64),
            processes: mean(&|i| idle[i].0 as f64),
            rss_idle_mib: mean(&|i| report::mib(idle[i].1.rss_bytes)),
            rss_connected_mib: mean(&|i| report::mib(connected[i].1.rss_bytes)),
            rss_end_mib: mean(&|i| report::mib(end[i].rss_bytes)),
            rss_peak_mib: mean(&|i| report::mib(end[i].peak_rss_bytes)),
            rss_per_conn_kib,
            anon_per_conn_kib: per_conn(&|i| {
                connected[i].2.rss_anon_kib as f64 - idle[i].2.rss_anon_kib as f64
            }),
            file_per_conn_kib: per_conn(&|i| {
                connected[i].2.rss_file_kib as f64 - idle[i].2.rss_file_kib as f64
            }),
            shmem_per_conn_kib: per_conn(&|i| {
                connected[i].2.rss_shmem_kib as f64 - idle[i].2.rss_shmem_kib as f64
            }),
            end_per_conn_kib: per_conn(&|i| {
                end[i].rss_bytes.saturating_sub(idle[i].1.rss_bytes) as f64 / 1024.0
            }),
            private_dirty_mib: mean(&|i| connected[i].2.private_dirty_kib as f64 / 1024.0),
            threads: mean(&|i| connected[i].2.threads as f64),
            load_rss_per_conn_kib: load_rss_connected.saturating_sub(load_rss_idle) as f64
                / 1024.0
                / n.max(1) as f64,
            load_rss_mib: report::mib(load_rss_connected),
        },
        cpu: Cpu {
            server_s,
            server_pct: pct(server_s),
            server_system_pct: pct(server_system_s),
            server_us_per_delivery: 1e6 * server_s / window.messages.max(1) as f64,
            server_ms_per_update: 1e3 * server_s / updates.len().max(1) as f64,
            feeders_s: feeders.iter().zip(&spent[k..]).map(|(&(name, _), s)| (name, s.0)).collect(),
            feeders_pct: feeders.iter().zip(&spent[k..]).map(|(&(name, _), s)| (name, pct(s.0))).collect(),
            load_s,
            load_pct: pct(load_s),
            load_system_pct: pct(load_system_s),
            others_pct: pct(cpu.others()),
        },
        targets: Targets {
            no_errors: totals.errors == 0,
            rss_per_conn_le_6_kib: rss_per_conn_kib <= TARGET_RSS_PER_CONN_KIB,
            p99_lt_50_ms: latency_ms(0.99).map(|ms| ms < TARGET_P99_MS),
            one_poll_per_event_per_interval: polls_per.map(|p| (p - 1.0).abs() <= 0.1),
        },
        server: noun,
        server_cmd,
    })
}

/// Accept-queue overflows, the SYNs they dropped, and SYN-queue overflows
/// (the whole network namespace: other programs' connections count too).
const LISTEN_COUNTERS: &[&str] = &["ListenOverflows", "ListenDrops", "SyncookiesSent"];

/// The servers' upstream readings summed (`None` if they have none).
async fn upstream(servers: &[impl Server]) -> anyhow::Result<Option<EdgeUpstream>> {
    let mut total: Option<EdgeUpstream> = None;
    for s in servers {
        if let Some(u) = s.upstream().await? {
            total = Some(total.unwrap_or_default().add(u));
        }
    }
    Ok(total)
}

/// CPU seconds so far of all the servers' processes.
fn servers_cpu(servers: &[impl Server]) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for s in servers {
        for pid in s.pids()? {
            total += procstat::sample(pid)?.cpu_seconds;
        }
    }
    Ok(total)
}

/// A server's memory: its processes' figures summed, and how many there are.
fn memory(server: &impl Server) -> anyhow::Result<(usize, Sample, MemoryDetail)> {
    let pids = server.pids()?;
    let mut sample = Sample::default();
    let mut detail = MemoryDetail::default();
    for &pid in &pids {
        sample.add(&procstat::sample(pid)?);
        detail.add(&procstat::memory_detail(pid)?);
    }
    Ok((pids.len(), sample, detail))
}

pub fn quantile_of(values: &mut [f64], q: f64) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let i = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len().max(1)) - 1;
    values.get(i).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_small_sets() {
        assert_eq!(quantile_of(&mut [3.0, 1.0, 2.0], 0.5), Some(2.0));
        assert_eq!(quantile_of(&mut [3.0, 1.0, 2.0], 1.0), Some(3.0));
        assert_eq!(quantile_of(&mut [5.0], 0.99), Some(5.0));
        assert_eq!(quantile_of(&mut [], 0.5), None);
    }
}
