//! The push path measured by one [`measure`]: media-sim → poller → edge(s) →
//! SSE browsers (`fanout`, `breadth`), or nginx with nchan ([`crate::nchan`]).
//! BENCHMARKS.md ("Scenario `fanout`") describes the phases and each figure.

use crate::{
    child,
    procstat::{self, MemoryDetail, Sample},
    report::{self, Report},
    sse_load::{self, Load, Plan},
    stack::{self, BinArgs, Proc},
};
use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;
use std::{collections::BTreeMap, path::PathBuf, time::Duration};
use tokio::time::{Instant, sleep};
use tokio_util::task::AbortOnDropHandle;

/// How the browsers are generated; shared with other scenarios.
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

/// Events x browsers over edges (`breadth`, `failover`; `fanout` is 1 x N over 1).
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

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct PushArgs {
    /// Length of the measurement window.
    #[arg(long, default_value = "30s", value_parser = at_least_1s)]
    #[serde(rename = "duration_s", serialize_with = "report::secs")]
    pub duration: Duration,

    /// Wait from "every browser has its first event" to the connected RSS and the window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    #[serde(rename = "settle_s", serialize_with = "report::secs")]
    pub settle: Duration,

    /// The poller's --interval.
    #[arg(long, default_value = "1s", value_parser = at_least_1s)]
    #[serde(rename = "interval_s", serialize_with = "report::secs")]
    pub interval: Duration,

    /// media-sim's --change-every (it runs with --stamp: every answer is new).
    #[arg(long, default_value = "1s", value_parser = at_least_1s)]
    #[serde(rename = "change_every_s", serialize_with = "report::secs")]
    pub change_every: Duration,

    #[command(flatten)]
    pub load: LoadArgs,

    #[command(flatten)]
    pub bins: BinArgs,
}

pub fn at_least_1s(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) { Err("must be at least 1s".into()) } else { Ok(d) }
}

pub fn event_id(index: u32) -> String {
    format!("ev-{index:06}")
}

/// One server holding browsers: an edge, or nginx's master (its workers are its children).
pub struct Server {
    pub proc: Proc,
    /// nginx's publisher (stopped first) and directory (removed last); `None`: an edge.
    pub nginx: Option<(AbortOnDropHandle<()>, tempfile::TempDir)>,
}

impl Server {
    fn system(&self) -> &'static str {
        if self.nginx.is_some() { "nchan" } else { "livepush" }
    }

    fn stream_path(&self, event: u32) -> String {
        if self.nginx.is_some() { "/sub".into() } else { format!("/live/{}/stream", event_id(event)) }
    }

    /// Its processes, measured together: the edge; nginx's master and workers.
    fn pids(&self) -> anyhow::Result<Vec<u32>> {
        Ok([vec![self.proc.pid()], procstat::children(self.proc.pid())?].concat())
    }

    async fn stop(self) -> anyhow::Result<()> {
        let workers = procstat::children(self.proc.pid())?;
        let _dir = self.nginx.map(|(_publisher, dir)| dir);
        self.proc.stop().await?;
        for pid in workers {
            // A worker that outlived its master (still nginx: the pid not reused).
            if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"nginx: ")) {
                let _ = child::signal(pid, child::Signal::KILL);
            }
        }
        Ok(())
    }
}

/// An edge's upstream to the pollers, from its `/metrics` (a metric missing counts 0).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EdgeUpstream {
    /// HTTP/2 connections carrying `Subscribe` streams, all pollers.
    pub channels: u64,
    pub streams: u64,
    /// All reasons.
    pub subscribe_failures: u64,
}

impl EdgeUpstream {
    pub fn parse(text: &str) -> Self {
        use livepush::metrics::*;
        let get = |name| stack::metric(text, name).unwrap_or(0);
        Self {
            channels: get(EDGE_UPSTREAM_CHANNELS),
            streams: get(EDGE_UPSTREAM_STREAMS),
            subscribe_failures: get(EDGE_UPSTREAM_SUBSCRIBE_FAILURES),
        }
    }
}

/// media-sim (`--stamp`) and the poller, for the whole invocation.
pub struct Upstream {
    media: Proc,
    poller: Proc,
    bins: BinArgs,
}

impl Upstream {
    pub async fn start(args: &PushArgs) -> anyhow::Result<Self> {
        let media = stack::media_sim(&args.bins, args.change_every, true).await?;
        let poller = stack::poller(&args.bins, media.addr, args.interval).await?;
        Ok(Self { media, poller, bins: args.bins.clone() })
    }

    /// `k` fresh edges.
    pub async fn edges(&self, k: u32) -> anyhow::Result<Vec<Server>> {
        let mut edges = Vec::new();
        for _ in 0..k {
            edges.push(Server { proc: stack::edge(&self.bins, &[self.poller.addr]).await?, nginx: None });
        }
        Ok(edges)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.poller.stop().await?;
        self.media.stop().await
    }
}

/// One run, one column of the report. Whole run: the connecting (ramp) figures,
/// errors, TcpExt ListenOverflows / ListenDrops / SyncookiesSent. Window: the
/// rest; latency from the update produced (media-sim serving it, or the harness
/// publishing it to nchan) to a browser reading it; per update: the slowest
/// browser and first to last browser (p50 over updates); memory: mean per server
/// (nginx's processes summed), per connection = (connected or end - idle) / N;
/// `_pct`: % of one core.
#[derive(Serialize)]
pub struct Outcome {
    column: String,
    system: &'static str,
    connections: u64,
    servers: u32,
    events: u32,
    per_event: u32,
    conns_per_server: f64,
    /// Every browser had its first event after (`None`: not within the limit).
    all_ready_s: Option<f64>,
    connect_p50_p99_max_ms: Vec<Option<f64>>,
    first_event_p50_p99_ms: Vec<Option<f64>>,
    ramp_server_pct: f64,
    ramp_server_us_per_conn: f64,
    listen_overflows_drops_syncookies: Vec<u64>,
    errors: u64,
    reconnects: u64,
    stale: u64,
    error_kinds: BTreeMap<String, u64>,
    messages: u64,
    messages_per_s: f64,
    kib_per_s: f64,
    latency_p50_p90_p99_max_ms: Vec<Option<f64>>,
    latency_mean_ms: Option<f64>,
    updates: usize,
    /// Updates that reached every browser of their event.
    reached_all_pct: Option<f64>,
    last_p50_ms: Option<f64>,
    spread_p50_ms: Option<f64>,
    /// Deliveries not grouped per update (cap): the per-update figures miss them.
    updates_dropped: u64,
    /// Events whose updates lay over 1.5 intervals apart; `None`: not polled.
    events_missing_a_change: Option<u64>,
    longest_gap_s: Option<f64>,
    /// media-sim's `GET /live` count; the expected rate is events / interval.
    polls: Option<u64>,
    polls_per_s: Option<f64>,
    expected_polls_per_s: Option<f64>,
    polls_per_event_per_interval: Option<f64>,
    /// The edges' `/metrics` at the end of the window, summed.
    edge_upstream: Option<EdgeUpstream>,
    rss_idle_connected_end_mib: Vec<f64>,
    rss_per_conn_kib: f64,
    /// The RssAnon, RssFile, RssShmem parts of `rss_per_conn_kib`.
    anon_file_shmem_per_conn_kib: Vec<f64>,
    end_per_conn_kib: f64,
    /// smaps_rollup Private_Dirty, connected.
    private_dirty_mib: f64,
    threads: f64,
    server_s: f64,
    server_pct: f64,
    server_system_pct: f64,
    server_us_per_delivery: f64,
    server_ms_per_update: f64,
    poller_media_sim_pct: Option<Vec<f64>>,
    load_s: f64,
    load_pct: f64,
    /// Other programs on the host, competing.
    others_pct: f64,
}

/// One reading of a server: its processes' figures summed.
type Mem = (Sample, MemoryDetail);

fn memory(servers: &[Server]) -> anyhow::Result<Vec<Mem>> {
    let read = |s: &Server| -> anyhow::Result<Mem> {
        let mut m = Mem::default();
        for pid in s.pids()? {
            m.0.add(&procstat::sample(pid)?);
            m.1.add(&procstat::memory_detail(pid)?);
        }
        Ok(m)
    };
    servers.iter().map(read).collect()
}

fn pids(servers: &[Server]) -> anyhow::Result<Vec<u32>> {
    Ok(servers.iter().map(Server::pids).collect::<anyhow::Result<Vec<_>>>()?.concat())
}

/// media-sim's `GET /live` count so far, if the system has one.
async fn requests(up: Option<&Upstream>) -> anyhow::Result<Option<u64>> {
    Ok(match up {
        Some(up) => Some(stack::media_requests(up.media.addr).await?),
        None => None,
    })
}

/// Accept-queue overflows, the SYNs they dropped, SYN-queue overflows.
const LISTEN: &[&str] = &["ListenOverflows", "ListenDrops", "SyncookiesSent"];

/// Runs one shape on fresh `servers`; `up` feeds them if they are edges.
async fn measure(
    args: &PushArgs,
    shape: &ShapeArgs,
    mut servers: Vec<Server>,
    up: Option<&mut Upstream>,
) -> anyhow::Result<Outcome> {
    // Warm-up: one stream per server until its first event; then the idle RSS.
    let mut plan = Plan::default();
    servers.iter().for_each(|s| plan.push(s.proc.addr, &s.stream_path(0), 0));
    let warm = Load::start(plan, args.load.config(Instant::now() + Duration::from_secs(30)));
    let warmed = warm.wait_ready(servers.len() as u64, Duration::from_secs(20)).await;
    let warm_errors = warm.stats().error_kinds();
    warm.stop(Duration::from_secs(2)).await;
    warmed.with_context(|| format!("warm-up streams got no first event within 20 s: {warm_errors:?}"))?;
    sleep(Duration::from_secs(1)).await;
    let idle = memory(&servers)?;

    // Connection i watches event i % events on server (i / events) % servers:
    // every event has browsers on every server.
    let (events, n) = (u64::from(shape.events), u64::from(shape.events) * u64::from(shape.browsers));
    let (mut plan, mut conns) = (Plan::default(), vec![0u64; servers.len()]);
    for i in 0..n {
        let (event, s) = ((i % events) as u32, (i / events) as usize % servers.len());
        plan.push(servers[s].proc.addr, &servers[s].stream_path(event), event);
        conns[s] += 1;
    }
    let ramp_limit = args.load.ramp(n) + Duration::from_secs(30);
    let deadline = Instant::now() + ramp_limit + args.settle + args.duration + Duration::from_secs(60);
    let (listen0, server_pids) = (procstat::tcp_ext(LISTEN)?, pids(&servers)?);
    let (ramp_cpu0, ramp_start) = (procstat::Cpu::read(&server_pids)?, Instant::now());
    let load = Load::start(plan, args.load.config(deadline));
    let (system, sources) = (servers[0].system(), load.sources().len());
    eprintln!("connecting {n} browsers to {} {system} server(s) from {sources} address(es)", conns.len());
    let ready_after = load.wait_ready(n, ramp_limit).await;
    let ramp_cpu: f64 = procstat::Cpu::read(&server_pids)?.since(&ramp_cpu0).procs.iter().map(|p| p.0).sum();
    let ramp = ramp_start.elapsed().as_secs_f64();
    if ready_after.is_none() {
        let ready = load.stats().counters().ready;
        eprintln!("only {ready} of {n} browsers had a first event after {ramp_limit:?}; measuring anyway");
    }
    sleep(args.settle).await;
    servers.iter_mut().try_for_each(|s| s.proc.child.ensure_running())?;
    let connected = memory(&servers)?;

    // The window: CPU of the servers' processes, the feeders, this process.
    let stats = load.stats().clone();
    eprintln!("measuring for {}", humantime::format_duration(args.duration));
    stats.latency.reset();
    let (c0, r0) = (stats.counters(), requests(up.as_deref()).await?);
    let mut pids = pids(&servers)?;
    let k = pids.len();
    let feeders = up.as_deref().map(|u| [u.poller.pid(), u.media.pid()]);
    pids.extend(feeders.iter().flatten().chain(&[std::process::id()]));
    let (cpu0, t0_ms, start) = (procstat::Cpu::read(&pids)?, sse_load::unix_micros() / 1000, Instant::now());
    sleep(args.duration).await;
    let cpu = procstat::Cpu::read(&pids)?.since(&cpu0);
    let (t1_ms, secs) = (sse_load::unix_micros() / 1000, start.elapsed().as_secs_f64());
    let (latency, window) = (stats.latency.snapshot(), stats.counters().since(&c0));
    let (r1, end) = (requests(up.as_deref()).await?, memory(&servers)?);
    let mut edge_upstream = None;
    if let Some(up) = up {
        // Every edge's metrics in one text: each figure is their sum.
        let mut text = String::new();
        for s in &servers {
            text += &stack::scrape(s.proc.addr).await?;
        }
        edge_upstream = Some(EdgeUpstream::parse(&text));
        up.poller.child.ensure_running()?;
        up.media.child.ensure_running()?;
    }
    servers.iter_mut().try_for_each(|s| s.proc.child.ensure_running())?;

    // Let the updates served in the window reach everyone. A poll every
    // interval (5 % jitter; the settle lets each event's second poll, up to
    // 1.5 intervals after its first, pass): a longer gap is a change missed.
    sleep(Duration::from_secs(2)).await;
    let (updates, updates_dropped) = stats.updates_served(t0_ms, t1_ms);
    let max_gap_ms = u64::try_from(args.interval.as_millis() * 3 / 2).unwrap_or(u64::MAX);
    let gaps = r0.is_some().then(|| stats.gaps(0..shape.events, t0_ms, t1_ms, max_gap_ms));
    let listen = procstat::tcp_ext(LISTEN)?.iter().zip(listen0).map(|(b, a)| b.saturating_sub(a)).collect();
    load.stop(Duration::from_secs(5)).await;
    let totals = stats.counters();
    for s in servers {
        s.stop().await?;
    }

    let (server_s, server_system_s) = cpu.procs[..k].iter().fold((0.0, 0.0), |a, s| (a.0 + s.0, a.1 + s.1));
    let (load_s, pct) = (cpu.of(pids.len() - 1), |s: f64| 100.0 * s / secs);
    let qs = |h: &crate::histogram::Histogram, q: &[f64]| {
        q.iter().map(|&q| sse_load::ms(&h.snapshot(), q)).collect()
    };
    let mean = |f: &dyn Fn(usize) -> f64| (0..conns.len()).map(f).sum::<f64>() / conns.len() as f64;
    let kib = |m: &Mem| {
        let d = &m.1;
        [m.0.rss_bytes as f64 / 1024.0, d.rss_anon_kib as f64, d.rss_file_kib as f64, d.rss_shmem_kib as f64]
    };
    let mib = |m: &[Mem], j: usize| mean(&|i| kib(&m[i])[j] / 1024.0);
    let per_conn =
        |b: &[Mem], j: usize| mean(&|i| (kib(&b[i])[j] - kib(&idle[i])[j]) / conns[i].max(1) as f64);
    let polls = r1.zip(r0).map(|(r1, r0)| r1.saturating_sub(r0));
    let (interval, m) = (args.interval.as_secs_f64(), f64::from(shape.events));
    let p50 =
        |f: fn(&sse_load::Update) -> u64| report::quantile_ms(&report::sorted(updates.iter().map(f)), 0.5);
    let reached_all = updates.iter().filter(|u| u.reached >= shape.browsers).count() as f64;
    Ok(Outcome {
        column: String::new(),
        system,
        connections: n,
        servers: shape.edges,
        events: shape.events,
        per_event: shape.browsers,
        conns_per_server: mean(&|i| conns[i] as f64),
        all_ready_s: ready_after.map(|d| d.as_secs_f64()),
        connect_p50_p99_max_ms: qs(&stats.connect, &[0.5, 0.99, 1.0]),
        first_event_p50_p99_ms: qs(&stats.first_event, &[0.5, 0.99]),
        ramp_server_pct: 100.0 * ramp_cpu / ramp.max(1e-3),
        ramp_server_us_per_conn: 1e6 * ramp_cpu / n.max(1) as f64,
        listen_overflows_drops_syncookies: listen,
        errors: totals.errors,
        reconnects: totals.reconnects,
        stale: totals.stale,
        error_kinds: stats.error_kinds().into_iter().collect(),
        messages: window.messages,
        messages_per_s: window.messages as f64 / secs,
        kib_per_s: window.bytes as f64 / 1024.0 / secs,
        latency_p50_p90_p99_max_ms: [0.5, 0.9, 0.99, 1.0]
            .iter()
            .map(|&q| sse_load::ms(&latency, q))
            .collect(),
        latency_mean_ms: latency.mean().map(|us| us / 1000.0),
        updates: updates.len(),
        reached_all_pct: (!updates.is_empty()).then(|| 100.0 * reached_all / updates.len() as f64),
        last_p50_ms: p50(|u| u.last_us),
        spread_p50_ms: p50(|u| u.last_us - u.first_us),
        updates_dropped,
        events_missing_a_change: gaps.map(|g| g.with_gap),
        longest_gap_s: gaps.map(|g| g.longest_ms as f64 / 1000.0),
        polls,
        polls_per_s: polls.map(|p| p as f64 / secs),
        expected_polls_per_s: polls.map(|_| m / interval),
        polls_per_event_per_interval: polls.map(|p| p as f64 / m / (secs / interval)),
        edge_upstream,
        rss_idle_connected_end_mib: vec![mib(&idle, 0), mib(&connected, 0), mib(&end, 0)],
        rss_per_conn_kib: per_conn(&connected, 0),
        anon_file_shmem_per_conn_kib: vec![
            per_conn(&connected, 1),
            per_conn(&connected, 2),
            per_conn(&connected, 3),
        ],
        end_per_conn_kib: per_conn(&end, 0),
        private_dirty_mib: mean(&|i| connected[i].1.private_dirty_kib as f64 / 1024.0),
        threads: mean(&|i| connected[i].1.threads as f64),
        server_s,
        server_pct: pct(server_s),
        server_system_pct: pct(server_system_s),
        server_us_per_delivery: 1e6 * server_s / window.messages.max(1) as f64,
        server_ms_per_update: 1e3 * server_s / updates.len().max(1) as f64,
        poller_media_sim_pct: feeders.map(|_| vec![pct(cpu.of(k)), pct(cpu.of(k + 1))]),
        load_s,
        load_pct: pct(load_s),
        others_pct: pct(cpu.others()),
    })
}

/// The columns of a report and the runs that failed: the others' figures still stand.
#[derive(Default)]
pub struct Runs {
    done: Vec<Outcome>,
    failed: Vec<String>,
}

impl Runs {
    pub async fn measure(
        &mut self,
        args: &PushArgs,
        shape: ShapeArgs,
        servers: anyhow::Result<Vec<Server>>,
        up: Option<&mut Upstream>,
        column: String,
    ) {
        eprintln!("{column}: {} event(s) x {} browsers", shape.events, shape.browsers);
        match async { measure(args, &shape, servers?, up).await }.await {
            Ok(o) => self.done.push(Outcome { column, ..o }),
            Err(e) => self.failed.push(format!("{column}: the run failed: {e:#}")),
        }
    }

    /// The flags, host cores, one column per run, and nchan / livepush at
    /// the same size (< 1: nchan lower) if both ran.
    pub fn report(&self, scenario: &str, title: &str, args: &impl Serialize) -> anyhow::Result<Report> {
        anyhow::ensure!(!self.done.is_empty(), "no run succeeded: {}", self.failed.join("; "));
        let versus: Vec<_> = self
            .done
            .iter()
            .filter(|o| o.system == "nchan")
            .filter_map(|o| {
                let l =
                    self.done.iter().find(|l| l.system == "livepush" && l.connections == o.connections)?;
                let r = |n: Option<f64>, l: Option<f64>| n.zip(l.filter(|&l| l > 0.0)).map(|(n, l)| n / l);
                let (nl, ll) = (&o.latency_p50_p90_p99_max_ms, &l.latency_p50_p90_p99_max_ms);
                Some(Versus {
                    column: o.column.clone(),
                    rss_per_conn: r(Some(o.rss_per_conn_kib), Some(l.rss_per_conn_kib)),
                    latency_p50: r(nl[0], ll[0]),
                    latency_p99: r(nl[2], ll[2]),
                    cpu_per_delivery: r(Some(o.server_us_per_delivery), Some(l.server_us_per_delivery)),
                })
            })
            .collect();
        let figures = Figures { args, cores: report::cores(), runs: &self.done, versus: &versus };
        let mut report = Report::new(scenario, format!("livepush-bench {scenario}: {title}"), &figures)?;
        let clock = match self.done.iter().any(|o| o.system == "nchan") {
            false => "media-sim's clock",
            true => {
                "stamped by media-sim serving it (livepush) or by the harness just before it POSTs it (nchan)"
            }
        };
        report.note(format!(
            "latency = browser read time - served_at_ms ({clock}, ms precision: up to 1 ms too high); \
             each connection's first event (the replayed latest value) is not counted"
        ));
        self.failed.iter().for_each(|f| _ = report.note(f.clone()));
        Ok(report)
    }
}

#[derive(Serialize)]
struct Figures<'a, A> {
    args: &'a A,
    cores: usize,
    runs: &'a [Outcome],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    versus: &'a [Versus],
}

#[derive(Serialize)]
struct Versus {
    column: String,
    rss_per_conn: Option<f64>,
    latency_p50: Option<f64>,
    latency_p99: Option<f64>,
    cpu_per_delivery: Option<f64>,
}

/// The sizes of the one-channel scenarios (`fanout`, `nchan`).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct Sizes {
    /// SSE connections; a list (1000,5000,15000) runs each size on a fresh server.
    #[arg(long, value_delimiter = ',', default_value = "1000", value_parser = clap::value_parser!(u32).range(1..=18_000))]
    pub connections: Vec<u32>,
}

/// "1000 / 5000 / 15000", for titles.
impl std::fmt::Display for Sizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.connections.iter().map(u32::to_string).collect::<Vec<_>>().join(" / "))
    }
}

#[derive(Debug, clap::Args, serde::Serialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    #[serde(flatten)]
    sizes: Sizes,

    /// Also draw latency and RSS per connection against connections as SVG.
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    push: PushArgs,
}

#[derive(Debug, clap::Args, serde::Serialize)]
pub struct BreadthArgs {
    #[command(flatten)]
    #[serde(flatten)]
    shape: ShapeArgs,

    #[command(flatten)]
    #[serde(flatten)]
    push: PushArgs,
}

/// Scenario `fanout`: one event, one edge, N browsers, a fresh edge per size.
pub async fn fanout(args: FanoutArgs) -> anyhow::Result<Report> {
    let (mut up, mut runs) = (Upstream::start(&args.push).await?, Runs::default());
    for &n in &args.sizes.connections {
        let shape = ShapeArgs { events: 1, browsers: n, edges: 1 };
        runs.measure(&args.push, shape, up.edges(1).await, Some(&mut up), n.to_string()).await;
    }
    up.stop().await?;
    let title = format!("one event, one edge, {} SSE connections", args.sizes);
    let mut report = runs.report("fanout", &title, &args)?;
    if let Some(path) = &args.plot {
        stack::ensure_parent(path)?;
        plot(path, &runs.done).map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
        report.note(format!("plot written to {}", path.display()));
    }
    Ok(report)
}

/// Scenario `breadth`: many events x few browsers over several edges, so
/// also whether the poller polls each event once per interval.
pub async fn breadth(args: BreadthArgs) -> anyhow::Result<Report> {
    let ShapeArgs { events, browsers, edges } = args.shape;
    let n = u64::from(events) * u64::from(browsers);
    anyhow::ensure!(n <= 18_000, "{n} connections: the load generator holds one file each, at most 18,000");
    let (mut up, mut runs) = (Upstream::start(&args.push).await?, Runs::default());
    let servers = up.edges(edges).await;
    runs.measure(&args.push, args.shape.clone(), servers, Some(&mut up), format!("{events}x{browsers}"))
        .await;
    up.stop().await?;
    runs.report("breadth", &format!("{events} events x {browsers} browsers over {edges} edges"), &args)
}

/// Latency p50/p99 and RSS per connection against connections, as SVG (no
/// fonts needed), each with its target from the issue.
fn plot(path: &std::path::Path, runs: &[Outcome]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled("livepush fan-out: one edge, one event, N SSE connections", ("sans-serif", 22))?;
    let (left, right) = root.split_horizontally(550);
    let x_max = runs.iter().map(|o| o.connections).max().unwrap_or(1) as f64 * 1.1;
    let xy = |f: fn(&Outcome) -> Option<f64>| -> Vec<(f64, f64)> {
        runs.iter().filter_map(|o| Some((o.connections as f64, f(o)?))).collect()
    };
    let panels = [
        (
            left,
            "delivery latency (ms), media-sim served -> browser read",
            50.0,
            "target p99 < 50 ms",
            vec![
                ("p50", xy(|o| o.latency_p50_p90_p99_max_ms[0]), BLUE),
                ("p99", xy(|o| o.latency_p50_p90_p99_max_ms[2]), RED),
            ],
        ),
        (
            right,
            "edge RSS per connection (KiB), (connected - idle) / N",
            6.0,
            "target <= 6 KiB",
            vec![("measured", xy(|o| Some(o.rss_per_conn_kib)), GREEN)],
        ),
    ];
    for (area, caption, target, label, series) in panels {
        let y_max = series.iter().flat_map(|s| &s.1).map(|p| p.1).fold(target, f64::max) * 1.2;
        let mut chart = ChartBuilder::on(&area)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart.configure_mesh().x_desc("SSE connections on the edge").light_line_style(WHITE).draw()?;
        let dashes = DashedLineSeries::new([(0.0, target), (x_max, target)], 8, 5, BLACK.stroke_width(1));
        let key = |c: RGBColor| move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2));
        chart.draw_series(dashes)?.label(label).legend(key(BLACK));
        for (name, points, color) in series {
            let line = LineSeries::new(points, color.stroke_width(2)).point_size(4);
            chart.draw_series(line)?.label(name).legend(key(color));
        }
        chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}
