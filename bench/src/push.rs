//! One measured run of the push path, media-sim → poller → edge(s) → SSE
//! browsers, shared by the `fanout` and `breadth` scenarios: they differ only
//! in the shape (edges × events × browsers per event). The `nchan` scenario
//! runs the same phases against Nginx with the nchan module instead of the
//! edges ([`System`] is what serves the browsers; [`crate::nchan`]).
//!
//! The phases are chosen so each figure means one thing:
//!
//! 1. **Start** the edges (fresh processes: memory of an earlier size does
//!    not carry over) and wait until `/readyz` answers 200.
//! 2. **Warm up**: one SSE stream per edge until its first event, then closed,
//!    so the gRPC channel, the feed machinery and the allocator have been
//!    exercised. One second later: **idle RSS** (of a server made of several
//!    processes, nginx's master and worker, the sum over them).
//! 3. **Connect** all browsers at `--connect-rate`, wait until every one has
//!    its first event, then `--settle`: **connected RSS**. RSS per connection
//!    is (connected − idle) / connections on that edge.
//! 4. **Window** of `--duration`: latency histograms restarted, CPU of every
//!    process, media-sim's request count and the generator's counters taken at
//!    both ends. Updates served in the window are then given two seconds to
//!    reach everyone before deliveries per update are read.
//! 5. Stop the browsers, then the edges.
//!
//! Errors are never hidden: every failure, close and reconnect of the whole
//! run (ramp included) is counted and listed by message.

use crate::{
    histogram::Snapshot,
    procstat::{self, MemoryDetail, Sample},
    report::{Label, Report, Value},
    sse_load::{self, Counters, Gaps, Load, Plan, Update},
    stack::{self, BinArgs, Proc},
};
use anyhow::Context;
use std::{net::SocketAddr, time::Duration};
use tokio::time::Instant;

/// Targets from the issue, shown next to the figures.
pub const TARGET_RSS_PER_CONN_KIB: f64 = 6.0;
pub const TARGET_P99_MS: f64 = 50.0;

/// How the browsers are generated; shared with the `polling` scenario.
#[derive(Debug, Clone, clap::Args)]
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
        }
    }

    /// Time to start `n` connections at the connect rate.
    pub fn ramp(&self, n: u64) -> Duration {
        Duration::from_secs_f64(n as f64 / f64::from(self.connect_rate.max(1)))
    }
}

/// Events x browsers over edges: the shape of the multi-event scenarios
/// (`breadth`, `failover`).
#[derive(Debug, Clone, clap::Args)]
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
#[derive(Debug, Clone, clap::Args)]
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

#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    /// Length of the measurement window.
    #[arg(long, default_value = "30s", value_parser = at_least_1s)]
    pub duration: Duration,

    /// Wait between "every browser has its first event" and the connected
    /// RSS sample / the window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub settle: Duration,

    /// The poller's --interval.
    #[arg(long, default_value = "1s", value_parser = at_least_1s)]
    pub interval: Duration,

    /// media-sim's --change-every (it runs with --stamp: every answer is new).
    #[arg(long, default_value = "1s", value_parser = at_least_1s)]
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
#[derive(Debug, Clone, Copy, Default)]
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

    /// The parameters of the livepush runs, for [`report`].
    pub fn params(&self, args: &PushArgs) -> Vec<Param> {
        vec![
            ("interval_s", "poll interval".into(), Value::Float(args.interval.as_secs_f64(), 1), "s"),
            (
                "change_every_s",
                "media-sim data changes every".into(),
                Value::Float(args.change_every.as_secs_f64(), 1),
                "s",
            ),
            ("media_cmd", "media-sim".into(), self.media.cmd.as_str().into(), ""),
            ("poller_cmd", "poller".into(), self.poller.cmd.as_str().into(), ""),
        ]
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
        stack::edge(&self.bins, self.poller.addr).await
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

/// A parameter row of [`report`]: key, label, value, unit.
pub type Param = (&'static str, Label, Value, &'static str);

struct EdgeMemory {
    /// Processes summed (1 for an edge).
    procs: usize,
    conns: u64,
    idle: Sample,
    connected: Sample,
    end: Sample,
    idle_detail: MemoryDetail,
    connected_detail: MemoryDetail,
}

/// Everything measured in one run.
pub struct Outcome {
    pub shape: Shape,
    /// [`System::name`] and [`System::server_name`].
    pub system: &'static str,
    server: &'static str,
    edge_cmd: String,
    ready_after: Option<Duration>,
    ready_at_wait_end: u64,
    connect: Snapshot,
    first_event: Snapshot,
    /// Server CPU seconds and wall time from starting to connect until every
    /// browser had its first event (or the wait gave up).
    cpu_ramp: f64,
    ramp: Duration,
    window: Duration,
    counters: Counters,
    latency: Snapshot,
    updates: Vec<Update>,
    updates_dropped: u64,
    /// Changes missed in the window (`None`: the system does not poll).
    gaps: Option<Gaps>,
    /// The edges' upstream, summed: all connected (settled), and at the end
    /// of the window (`None`: not an edge).
    upstream_connected: Option<EdgeUpstream>,
    upstream_end: Option<EdgeUpstream>,
    /// Upstream requests in the window (`None`: the system does not poll).
    requests: Option<u64>,
    edges: Vec<EdgeMemory>,
    cpu_edges: f64,
    cpu_edges_system: f64,
    /// CPU seconds of each of the system's other processes, by name.
    cpu_feeders: Vec<(&'static str, f64)>,
    cpu_load: f64,
    cpu_load_system: f64,
    /// Host CPU used by other programs during the window.
    cpu_others: f64,
    load_rss_idle: u64,
    load_rss_connected: u64,
    totals: Counters,
    error_kinds: Vec<(String, u64)>,
    stuck: usize,
    listen_overflows: u64,
    listen_drops: u64,
    syncookies: u64,
}

impl Outcome {
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        sse_load::ms(&self.latency, q)
    }

    /// Mean over the edges of (connected − idle RSS) / connections, in KiB.
    pub fn rss_per_conn_kib(&self) -> f64 {
        self.per_conn(|e| e.connected.rss_bytes.saturating_sub(e.idle.rss_bytes) as f64 / 1024.0)
    }

    fn per_conn(&self, delta_kib: impl Fn(&EdgeMemory) -> f64) -> f64 {
        let per: Vec<f64> = self.edges.iter().map(|e| delta_kib(e) / e.conns.max(1) as f64).collect();
        per.iter().sum::<f64>() / per.len().max(1) as f64
    }

    pub fn errors(&self) -> u64 {
        self.totals.errors
    }

    /// Upstream polls per event per interval during the window.
    fn polls_per_interval(&self, interval: Duration) -> Option<f64> {
        Some(
            self.requests? as f64
                / f64::from(self.shape.events)
                / (self.window.as_secs_f64() / interval.as_secs_f64()),
        )
    }

    /// Server CPU per data event delivered, in µs.
    pub fn server_us_per_delivery(&self) -> f64 {
        1e6 * self.cpu_edges / self.counters.messages.max(1) as f64
    }
}

/// Runs one shape against `sys` (see the module doc for the phases).
pub async fn measure<S: System>(args: &PushArgs, shape: Shape, sys: &mut S) -> anyhow::Result<Outcome> {
    let noun = sys.server_name();
    let mut edges = Vec::with_capacity(shape.edges);
    for _ in 0..shape.edges {
        edges.push(sys.start_server().await?);
    }
    let edge_cmd = edges.first().map(|e| e.cmd().to_owned()).unwrap_or_default();

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
    let cpu =
        |pids: &[u32]| -> anyhow::Result<Vec<Sample>> { pids.iter().map(|&p| procstat::sample(p)).collect() };
    // The servers' processes, then the system's others, then this process.
    let mut pids: Vec<u32> = Vec::new();
    for e in &edges {
        pids.extend(e.pids()?);
    }
    let k = pids.len();
    let feeders = sys.feeders();
    pids.extend(feeders.iter().map(|&(_, pid)| pid));
    pids.push(me);
    let cpu0 = cpu(&pids)?;
    let host0 = procstat::host_busy_seconds()?;
    let t0_ms = sse_load::unix_micros() / 1000;
    let start = Instant::now();
    tokio::time::sleep(args.duration).await;
    let cpu1 = cpu(&pids)?;
    let host1 = procstat::host_busy_seconds()?;
    let window = start.elapsed();
    let t1_ms = sse_load::unix_micros() / 1000;
    let latency = stats.latency.snapshot();
    let counters = stats.counters().since(&c0);
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
    let error_kinds = stats.error_kinds();
    for e in edges {
        e.stop().await?;
    }

    // (CPU, of which system) per process.
    let spent: Vec<(f64, f64)> = cpu1
        .iter()
        .zip(&cpu0)
        .map(|(b, a)| (b.cpu_seconds - a.cpu_seconds, b.system_seconds - a.system_seconds))
        .collect();
    let f = feeders.len();
    let edges =
        idle.into_iter()
            .zip(connected)
            .zip(end)
            .zip(conns)
            .map(|((((procs, idle, idle_detail), (_, connected, connected_detail)), end), conns)| {
                EdgeMemory { procs, conns, idle, connected, end, idle_detail, connected_detail }
            })
            .collect();
    Ok(Outcome {
        shape,
        system: sys.name(),
        server: noun,
        edge_cmd,
        ready_after,
        ready_at_wait_end,
        connect,
        first_event,
        cpu_ramp,
        ramp,
        window,
        counters,
        latency,
        updates,
        updates_dropped,
        gaps,
        upstream_connected,
        upstream_end,
        requests: r1.zip(r0).map(|(r1, r0)| r1.saturating_sub(r0)),
        edges,
        cpu_edges: spent[..k].iter().map(|s| s.0).sum(),
        cpu_edges_system: spent[..k].iter().map(|s| s.1).sum(),
        cpu_feeders: feeders.iter().zip(&spent[k..k + f]).map(|(&(name, _), s)| (name, s.0)).collect(),
        cpu_load: spent[k + f].0,
        cpu_load_system: spent[k + f].1,
        cpu_others: (host1 - host0) - spent.iter().map(|s| s.0).sum::<f64>(),
        load_rss_idle,
        load_rss_connected,
        totals,
        error_kinds,
        stuck,
        listen_overflows: listen1[0].saturating_sub(listen0[0]),
        listen_drops: listen1[1].saturating_sub(listen0[1]),
        syncookies: listen1[2].saturating_sub(listen0[2]),
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

fn f(x: f64, decimals: usize) -> Value {
    if x.is_finite() { Value::Float(x, decimals) } else { Value::Missing }
}

fn opt(x: Option<f64>, decimals: usize) -> Value {
    x.map_or(Value::Missing, |x| f(x, decimals))
}

fn mib(bytes: u64) -> Value {
    Value::Float(bytes as f64 / (1024.0 * 1024.0), 1)
}

fn quantile_of(values: &mut [f64], q: f64) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let i = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len().max(1)) - 1;
    values.get(i).copied()
}

/// The table of one or more outcomes (one column each).
pub fn report(
    scenario: &'static str,
    title: String,
    columns: Vec<String>,
    outcomes: &[Outcome],
    args: &PushArgs,
    params: Vec<Param>,
) -> Report {
    let mut r = Report::new(scenario, title);
    r.columns(columns);
    let each = |g: &dyn Fn(&Outcome) -> Value| outcomes.iter().map(g).collect::<Vec<_>>();
    let secs = |o: &Outcome| o.window.as_secs_f64();
    // Labels name the server measured: "edge" in livepush-only reports (as
    // they always did), "nginx" in nchan-only ones, "server" in a mix.
    let srv = match outcomes.first().map(|o| o.server) {
        Some(first) if outcomes.iter().all(|o| o.server == first) => first,
        _ => "server",
    };
    let livepush_only = outcomes.iter().all(|o| o.system == "livepush");
    let polls = outcomes.iter().any(|o| o.requests.is_some());
    let feeders: Vec<&'static str> = {
        let mut names: Vec<&'static str> = Vec::new();
        for (name, _) in outcomes.iter().flat_map(|o| &o.cpu_feeders) {
            if !names.contains(name) {
                names.push(name);
            }
        }
        names
    };
    let feeder_cpu =
        |o: &Outcome, name: &str| o.cpu_feeders.iter().find(|(n, _)| *n == name).map(|&(_, s)| s);

    r.section("params", "parameters")
        .row_each("connections", "SSE connections", each(&|o| o.shape.connections().into()), "")
        .row_each(
            "edges",
            match srv {
                "edge" => "edges",
                "nginx" => "nginx instances",
                _ => "servers (edges or nginx instances)",
            },
            each(&|o| o.shape.edges.into()),
            "",
        );
    if !livepush_only {
        r.row_each("system", "system", each(&|o| o.system.into()), "");
    }
    r.row_each("events", "events", each(&|o| o.shape.events.into()), "").row_each(
        "per_event",
        "browsers per event",
        each(&|o| o.shape.per_event.into()),
        "",
    );
    let (before, after): (Vec<Param>, Vec<Param>) =
        params.into_iter().partition(|p| matches!(p.0, "interval_s" | "change_every_s"));
    for (key, label, value, unit) in before {
        r.row(key, label, value, unit);
    }
    r.row("duration_s", "measurement window", Value::Float(args.duration.as_secs_f64(), 1), "s")
        .row("settle_s", "settle before the window", Value::Float(args.settle.as_secs_f64(), 1), "s")
        .row("connect_rate", "connect rate", args.load.connect_rate, "conn/s")
        .row("per_source", "connections per source address", args.load.per_source, "")
        .row("cores", "host cores (shared by all processes)", cores(), "");
    for (key, label, value, unit) in after {
        r.row(key, label, value, unit);
    }
    let mut shown: Vec<&'static str> = Vec::new();
    for o in outcomes.iter().filter(|o| !o.edge_cmd.is_empty()) {
        if !shown.contains(&o.server) {
            shown.push(o.server);
            let key = match o.server {
                "edge" => "edge_cmd",
                "nginx" => "nginx_cmd",
                _ => "server_cmd",
            };
            r.row(key, format!("{} (port varies)", o.server), o.edge_cmd.as_str(), "");
        }
    }

    r.section("connecting", "connecting (whole ramp)")
        .row_each(
            "all_ready_s",
            "every browser had its first event after",
            each(&|o| opt(o.ready_after.map(|d| d.as_secs_f64()), 2)),
            "s",
        )
        .row_each("ready", "browsers with a first event then", each(&|o| o.ready_at_wait_end.into()), "")
        .row_each("connect_p50_ms", "TCP connect p50", each(&|o| opt(sse_load::ms(&o.connect, 0.5), 2)), "ms")
        .row_each(
            "connect_p99_ms",
            "TCP connect p99",
            each(&|o| opt(sse_load::ms(&o.connect, 0.99), 2)),
            "ms",
        )
        .row_each("connect_max_ms", "TCP connect max", each(&|o| opt(sse_load::ms(&o.connect, 1.0), 2)), "ms")
        .row_each(
            "listen_overflows",
            "kernel accept-queue overflows (TcpExt ListenOverflows)",
            each(&|o| o.listen_overflows.into()),
            "",
        )
        .row_each(
            "listen_drops",
            "kernel listen drops (TcpExt ListenDrops)",
            each(&|o| o.listen_drops.into()),
            "",
        )
        .row_each("syncookies", "SYN cookies sent (SYN queue full)", each(&|o| o.syncookies.into()), "")
        .row_each(
            "ramp_cpu_pct",
            format!("{srv} CPU while connecting, % of one core"),
            each(&|o| f(100.0 * o.cpu_ramp / o.ramp.as_secs_f64().max(1e-3), 1)),
            "%",
        )
        .row_each(
            "ramp_us_per_conn",
            format!("{srv} CPU while connecting, per connection"),
            each(&|o| f(1e6 * o.cpu_ramp / o.shape.connections().max(1) as f64, 1)),
            "µs",
        )
        .row_each(
            "first_event_p50_ms",
            "connect start to first event p50",
            each(&|o| opt(sse_load::ms(&o.first_event, 0.5), 2)),
            "ms",
        )
        .row_each(
            "first_event_p99_ms",
            "connect start to first event p99",
            each(&|o| opt(sse_load::ms(&o.first_event, 0.99), 2)),
            "ms",
        );

    let delivery = if livepush_only {
        "delivery during the window (media-sim served -> browser read)"
    } else {
        "delivery during the window (update produced -> browser read)"
    };
    r.section("delivery", delivery)
        .row_each("messages", "data events received", each(&|o| o.counters.messages.into()), "")
        .row_each(
            "messages_per_s",
            "data events/s",
            each(&|o| f(o.counters.messages as f64 / secs(o), 1)),
            "/s",
        )
        .row_each(
            "kib_per_s",
            "bytes received/s",
            each(&|o| f(o.counters.bytes as f64 / 1024.0 / secs(o), 1)),
            "KiB/s",
        )
        .row_each("latency_n", "latencies recorded", each(&|o| o.latency.count.into()), "")
        .row_each("latency_p50_ms", "latency p50", each(&|o| opt(o.latency_ms(0.5), 2)), "ms")
        .row_each("latency_p90_ms", "latency p90", each(&|o| opt(o.latency_ms(0.9), 2)), "ms")
        .row_each("latency_p99_ms", "latency p99", each(&|o| opt(o.latency_ms(0.99), 2)), "ms")
        .row_each("latency_max_ms", "latency max", each(&|o| opt(o.latency_ms(1.0), 2)), "ms")
        .row_each(
            "latency_mean_ms",
            "latency mean",
            each(&|o| opt(o.latency.mean().map(|us| us / 1000.0), 2)),
            "ms",
        );

    r.section("per_update", "per update served in the window (all its deliveries)")
        .row_each("updates", "updates served", each(&|o| o.updates.len().into()), "")
        .row_each(
            "reached_min",
            "browsers reached, least-reached update",
            each(&|o| o.updates.iter().map(|u| u.reached).min().map_or(Value::Missing, Value::from)),
            "",
        )
        .row_each(
            "reached_mean",
            "browsers reached, mean",
            each(&|o| {
                let n = o.updates.len().max(1) as f64;
                opt(
                    (!o.updates.is_empty())
                        .then(|| o.updates.iter().map(|u| f64::from(u.reached)).sum::<f64>() / n),
                    2,
                )
            }),
            "",
        )
        .row_each(
            "reached_all_pct",
            "updates that reached every browser of the event",
            each(&|o| {
                let all = o.updates.iter().filter(|u| u.reached >= o.shape.per_event).count();
                opt((!o.updates.is_empty()).then(|| 100.0 * all as f64 / o.updates.len() as f64), 1)
            }),
            "%",
        )
        .row_each(
            "last_p50_ms",
            "slowest browser of an update, p50",
            each(&|o| {
                opt(
                    quantile_of(
                        &mut o.updates.iter().map(|u| u.last_us as f64 / 1000.0).collect::<Vec<_>>(),
                        0.5,
                    ),
                    2,
                )
            }),
            "ms",
        )
        .row_each(
            "last_p99_ms",
            "slowest browser of an update, p99",
            each(&|o| {
                opt(
                    quantile_of(
                        &mut o.updates.iter().map(|u| u.last_us as f64 / 1000.0).collect::<Vec<_>>(),
                        0.99,
                    ),
                    2,
                )
            }),
            "ms",
        )
        .row_each(
            "spread_p50_ms",
            "first to last browser of an update, p50",
            each(&|o| {
                let mut s: Vec<f64> =
                    o.updates.iter().map(|u| (u.last_us - u.first_us) as f64 / 1000.0).collect();
                opt(quantile_of(&mut s, 0.5), 2)
            }),
            "ms",
        )
        .row_each(
            "spread_max_ms",
            "first to last browser of an update, max",
            each(&|o| {
                let mut s: Vec<f64> =
                    o.updates.iter().map(|u| (u.last_us - u.first_us) as f64 / 1000.0).collect();
                opt(quantile_of(&mut s, 1.0), 2)
            }),
            "ms",
        );

    if polls {
        r.row_each(
            "events_missing_a_change",
            "events that missed a change (updates > 1.5 intervals apart)",
            each(&|o| o.gaps.map(|g| g.with_gap).into()),
            "",
        )
        .row_each(
            "longest_gap_s",
            "longest time between an event's updates",
            each(&|o| opt(o.gaps.map(|g| g.longest_ms as f64 / 1000.0), 2)),
            "s",
        );
    }

    r.section("errors", "errors and reconnects (whole run, ramp included)")
        .row_each("attempts", "connection attempts", each(&|o| o.totals.attempts.into()), "")
        .row_each("errors", "errors", each(&|o| o.totals.errors.into()), "")
        .row_each("reconnects", "reconnects", each(&|o| o.totals.reconnects.into()), "")
        .row_each(
            "open_end",
            "connections open at the end of the window",
            each(&|o| o.counters.open.into()),
            "",
        )
        .row_each("stale", "'stale' events", each(&|o| o.totals.stale.into()), "")
        .row_each("live", "'live' events", each(&|o| o.totals.live.into()), "")
        .row_each("presence", "'presence' events", each(&|o| o.totals.presence.into()), "")
        .row_each("end", "'end' events", each(&|o| o.totals.end.into()), "")
        .row_each("comments", "keep-alive comments", each(&|o| o.totals.comments.into()), "")
        .row_each("unstamped", "data events without served_at_ms", each(&|o| o.totals.unstamped.into()), "")
        .row_each("stuck", "tasks not stopped within 5 s", each(&|o| o.stuck.into()), "");

    if polls {
        r.section("upstream", "upstream (media-sim GET /live count, window)")
            .row_each("requests", "requests", each(&|o| o.requests.into()), "")
            .row_each(
                "requests_per_s",
                "requests/s",
                each(&|o| opt(o.requests.map(|n| n as f64 / secs(o)), 2)),
                "req/s",
            )
            .row_each(
                "expected_per_s",
                "expected (events / interval)",
                each(&|o| {
                    opt(o.requests.map(|_| f64::from(o.shape.events) / args.interval.as_secs_f64()), 2)
                }),
                "req/s",
            )
            .row_each(
                "polls_per_event_per_interval",
                "polls per event per interval",
                each(&|o| opt(o.polls_per_interval(args.interval), 3)),
                "",
            );
    }

    if outcomes.iter().any(|o| o.upstream_connected.is_some()) {
        let up = |g: fn(&EdgeUpstream) -> u64, at: fn(&Outcome) -> Option<EdgeUpstream>| {
            each(&|o| at(o).map(|u| g(&u)).into())
        };
        r.section("edge_upstream", "edge upstream to the poller (edges' /metrics, all edges)")
            .row_each(
                "channels",
                "HTTP/2 channels (livepush_edge_upstream_channels), connected",
                up(|u| u.channels, |o| o.upstream_connected),
                "",
            )
            .row_each(
                "streams",
                "Subscribe streams (livepush_edge_upstream_streams), connected",
                up(|u| u.streams, |o| o.upstream_connected),
                "",
            )
            .row_each(
                "channels_end",
                "HTTP/2 channels at the end of the window",
                up(|u| u.channels, |o| o.upstream_end),
                "",
            )
            .row_each(
                "subscribe_failures",
                "subscribe failures (whole run, to the end of the window)",
                up(|u| u.subscribe_failures, |o| o.upstream_end),
                "",
            );
    }

    let mean_edges = |o: &Outcome, g: &dyn Fn(&EdgeMemory) -> f64| {
        o.edges.iter().map(g).sum::<f64>() / o.edges.len().max(1) as f64
    };
    let memory_title = match srv {
        "edge" => "edge memory (mean per edge)",
        "nginx" => "nginx memory (master and worker processes summed)",
        _ => "server memory (mean per edge; nginx: master and worker processes summed)",
    };
    r.section("memory", memory_title).row_each(
        "conns_per_edge",
        format!("connections per {srv}"),
        each(&|o| f(mean_edges(o, &|e| e.conns as f64), 0)),
        "",
    );
    if srv != "edge" {
        r.row_each(
            "processes",
            "processes measured (summed)",
            each(&|o| f(mean_edges(o, &|e| e.procs as f64), 0)),
            "",
        );
    }
    r.row_each(
        "rss_idle_mib",
        "RSS idle (after warm-up)",
        each(&|o| f(mean_edges(o, &|e| e.idle.rss_bytes as f64) / 1048576.0, 1)),
        "MiB",
    )
    .row_each(
        "rss_connected_mib",
        "RSS all connected, settled",
        each(&|o| f(mean_edges(o, &|e| e.connected.rss_bytes as f64) / 1048576.0, 1)),
        "MiB",
    )
    .row_each(
        "rss_end_mib",
        "RSS at the end of the window",
        each(&|o| f(mean_edges(o, &|e| e.end.rss_bytes as f64) / 1048576.0, 1)),
        "MiB",
    )
    .row_each(
        "rss_peak_mib",
        "peak RSS (VmHWM)",
        each(&|o| f(mean_edges(o, &|e| e.end.peak_rss_bytes as f64) / 1048576.0, 1)),
        "MiB",
    )
    .row_each("rss_per_conn_kib", "RSS per connection", each(&|o| f(o.rss_per_conn_kib(), 2)), "KiB")
    .row_each(
        "anon_per_conn_kib",
        "  of which anonymous (RssAnon)",
        each(&|o| {
            f(o.per_conn(|e| e.connected_detail.rss_anon_kib as f64 - e.idle_detail.rss_anon_kib as f64), 2)
        }),
        "KiB",
    )
    .row_each(
        "file_per_conn_kib",
        "  of which file-backed (RssFile)",
        each(&|o| {
            f(o.per_conn(|e| e.connected_detail.rss_file_kib as f64 - e.idle_detail.rss_file_kib as f64), 3)
        }),
        "KiB",
    );
    if srv != "edge" {
        r.row_each(
            "shmem_per_conn_kib",
            "  of which shared memory (RssShmem)",
            each(&|o| {
                f(
                    o.per_conn(|e| {
                        e.connected_detail.rss_shmem_kib as f64 - e.idle_detail.rss_shmem_kib as f64
                    }),
                    3,
                )
            }),
            "KiB",
        );
    }
    r.row_each(
        "end_per_conn_kib",
        "RSS per connection at the end of the window",
        each(&|o| f(o.per_conn(|e| e.end.rss_bytes.saturating_sub(e.idle.rss_bytes) as f64 / 1024.0), 2)),
        "KiB",
    )
    .row_each(
        "private_dirty_mib",
        "smaps_rollup Private_Dirty, connected",
        each(&|o| f(mean_edges(o, &|e| e.connected_detail.private_dirty_kib as f64) / 1024.0, 1)),
        "MiB",
    )
    .row_each(
        "threads",
        "threads, connected",
        each(&|o| f(mean_edges(o, &|e| e.connected_detail.threads as f64), 0)),
        "",
    )
    .row_each(
        "load_rss_per_conn_kib",
        "load generator RSS per connection",
        each(&|o| {
            f(
                o.load_rss_connected.saturating_sub(o.load_rss_idle) as f64
                    / 1024.0
                    / o.shape.connections().max(1) as f64,
                2,
            )
        }),
        "KiB",
    )
    .row_each(
        "load_rss_mib",
        "load generator RSS, connected",
        each(&|o| mib(o.load_rss_connected)),
        "MiB",
    );

    let pct = |cpu: f64, o: &Outcome| f(100.0 * cpu / secs(o), 1);
    let cpu_s = |x: f64| f(x, 2);
    let feeder_key = |name: &str, pct: bool| match (name, pct) {
        ("poller", false) => "poller_s",
        ("poller", true) => "poller_pct",
        ("media-sim", false) => "media_s",
        ("media-sim", true) => "media_pct",
        (_, false) => "other_s",
        (_, true) => "other_pct",
    };
    r.section("cpu_seconds", "CPU seconds during the window").row_each(
        "edges_s",
        format!("{srv}(s)"),
        each(&|o| cpu_s(o.cpu_edges)),
        "s",
    );
    for &name in &feeders {
        r.row_each(feeder_key(name, false), name, each(&|o| opt(feeder_cpu(o, name), 2)), "s");
    }
    r.row_each("load_s", "load generator", each(&|o| cpu_s(o.cpu_load)), "s");
    r.section("cpu", "CPU during the window (% of one core)")
        .row_each("edges_pct", format!("{srv}(s), all together"), each(&|o| pct(o.cpu_edges, o)), "%")
        .row_each("edges_system_pct", "  of which in the kernel", each(&|o| pct(o.cpu_edges_system, o)), "%")
        .row_each(
            "edge_us_per_delivery",
            format!("{srv} CPU per data event delivered"),
            each(&|o| f(1e6 * o.cpu_edges / o.counters.messages.max(1) as f64, 1)),
            "µs",
        )
        .row_each(
            "edge_ms_per_update",
            format!("{srv} CPU per update served (all its deliveries)"),
            each(&|o| f(1e3 * o.cpu_edges / o.updates.len().max(1) as f64, 2)),
            "ms",
        );
    for &name in &feeders {
        r.row_each(
            feeder_key(name, true),
            name,
            each(&|o| feeder_cpu(o, name).map_or(Value::Missing, |s| pct(s, o))),
            "%",
        );
    }
    r.row_each("load_pct", "load generator (this process)", each(&|o| pct(o.cpu_load, o)), "%")
        .row_each("load_system_pct", "  of which in the kernel", each(&|o| pct(o.cpu_load_system, o)), "%")
        .row_each(
            "others_pct",
            "other programs on the host (competing)",
            each(&|o| pct(o.cpu_others.max(0.0), o)),
            "%",
        );

    r.section("targets", "targets from the issue")
        .row_each(
            "zero_errors",
            "no errors",
            each(&|o| verdict(o.errors() == 0, format!("{} errors", o.errors()))),
            "",
        )
        .row_each(
            "rss_target",
            "RSS per connection <= 6 KiB",
            each(&|o| {
                let kib = o.rss_per_conn_kib();
                verdict(kib <= TARGET_RSS_PER_CONN_KIB, format!("{kib:.1} KiB"))
            }),
            "",
        )
        .row_each(
            "p99_target",
            "latency p99 < 50 ms",
            each(&|o| match o.latency_ms(0.99) {
                Some(ms) => verdict(ms < TARGET_P99_MS, format!("{ms:.1} ms")),
                None => Value::Missing,
            }),
            "",
        );
    if polls {
        r.row_each(
            "one_poll_target",
            "one poll per event per interval",
            each(&|o| match o.polls_per_interval(args.interval) {
                Some(p) => verdict((p - 1.0).abs() <= 0.1, format!("{p:.3}")),
                None => Value::Missing,
            }),
            "",
        );
    }

    for o in outcomes {
        let n = o.shape.connections();
        let n = if livepush_only { n.to_string() } else { format!("{} {n}", o.system) };
        for (kind, count) in &o.error_kinds {
            r.note(format!("{n} connections: {count} x {kind}"));
        }
        if o.updates_dropped > 0 {
            r.note(format!("{n} connections: {} deliveries not grouped per update (cap)", o.updates_dropped));
        }
    }
    let clock = if livepush_only {
        "media-sim's clock"
    } else if outcomes.iter().all(|o| o.system == "nchan") {
        "stamped by the harness just before it POSTs the update to nchan"
    } else {
        "stamped by media-sim serving it (livepush) or by the harness just before it POSTs the update (nchan)"
    };
    r.note(format!(
        "latency = browser read time - served_at_ms ({clock}, ms precision: up to 1 ms too high); \
         each connection's first event (the replayed latest value) is not counted"
    ));
    r
}

/// "met (x)" or "MISSED (x)".
fn verdict(met: bool, figure: String) -> Value {
    Value::Text(if met { format!("met ({figure})") } else { format!("MISSED ({figure})") })
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
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
