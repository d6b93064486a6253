//! The push path measured by one [`measure`]: media-sim → poller → edge(s) →
//! SSE browsers (`fanout`, `breadth`), or nginx with nchan ([`crate::nchan`]).
//! BENCHMARKS.md ("Scenario `fanout`") describes the phases, chosen so each
//! figure means one thing: fresh servers per size so memory does not carry
//! over, a warm-up before the idle RSS, a settle before the connected RSS.
//! Every failure and reconnect of the run is counted and listed by message.

use crate::{
    child,
    procstat::{self, MemoryDetail, Sample},
    report::{self, Report},
    sse_load::{self, Counters, Load, Plan},
    stack::{self, BinArgs, Proc},
};
use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;
use std::{collections::BTreeMap, path::PathBuf, time::Duration};
use tokio::time::Instant;
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
    /// "livepush" or "nchan".
    pub system: &'static str,
    /// nchan's publisher, stopped before nginx, and nginx's directory, removed after.
    pub publisher: Option<AbortOnDropHandle<()>>,
    pub _dir: Option<tempfile::TempDir>,
}

impl Server {
    fn name(&self) -> &'static str {
        if self.system == "nchan" { "nginx" } else { "edge" }
    }

    fn stream_path(&self, event: u32) -> String {
        if self.system == "nchan" { "/sub".to_owned() } else { format!("/live/{}/stream", event_id(event)) }
    }

    /// Its processes, measured together: the edge; nginx's master and workers.
    fn pids(&self) -> anyhow::Result<Vec<u32>> {
        Ok([vec![self.proc.pid()], procstat::children(self.proc.pid())?].concat())
    }

    async fn stop(self) -> anyhow::Result<()> {
        drop(self.publisher);
        let workers = procstat::children(self.proc.pid())?;
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
            let proc = stack::edge(&self.bins, &[self.poller.addr]).await?;
            edges.push(Server { proc, system: "livepush", publisher: None, _dir: None });
        }
        Ok(edges)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.poller.stop().await?;
        self.media.stop().await
    }
}

/// Everything measured in one run: one column of the report.
#[derive(Serialize)]
pub struct Outcome {
    pub column: String,
    pub system: &'static str,
    pub connections: u64,
    pub servers: u32,
    pub events: u32,
    pub per_event: u32,
    pub connecting: Connecting,
    /// In the window: the update produced (media-sim serving it, or the
    /// harness publishing it to nchan) to a browser reading it.
    pub delivery: Delivery,
    /// Updates served in the window and all their deliveries.
    pub per_update: PerUpdate,
    /// The load generator's counters: the window (`open`, `ready`: at its end), the whole run.
    pub window: Counters,
    pub totals: Counters,
    /// Errors of the whole run by message; load generator tasks not stopped within 5 s.
    pub error_kinds: BTreeMap<String, u64>,
    pub stuck: usize,
    /// media-sim's `GET /live` count in the window (`None`: not polled).
    pub upstream: Option<Polls>,
    /// The edges' upstream at the end of the window, summed.
    pub edge_upstream: Option<EdgeUpstream>,
    /// Mean per server (nginx: master and workers summed).
    pub memory: Memory,
    /// CPU in the window; `_pct` in % of one core.
    pub cpu: Cpu,
}

#[derive(Serialize)]
pub struct Connecting {
    /// Every browser had its first event after (`None`: not within the limit).
    pub all_ready_s: Option<f64>,
    pub connect_p50_ms: Option<f64>,
    pub connect_p99_ms: Option<f64>,
    pub connect_max_ms: Option<f64>,
    /// TcpExt ListenOverflows, ListenDrops, SyncookiesSent (whole network namespace).
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
    pub latency_p50_ms: Option<f64>,
    pub latency_p90_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub latency_mean_ms: Option<f64>,
}

#[derive(Serialize)]
pub struct PerUpdate {
    pub updates: usize,
    /// Updates that reached every browser of their event.
    pub reached_all_pct: Option<f64>,
    /// The slowest browser of an update; first to last browser.
    pub last_p50_ms: Option<f64>,
    pub spread_p50_ms: Option<f64>,
    /// Events whose updates lay over 1.5 intervals apart (`None`: not polled).
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
pub struct Memory {
    pub conns_per_server: f64,
    pub rss_idle_mib: f64,
    pub rss_connected_mib: f64,
    pub rss_end_mib: f64,
    /// (connected - idle) / connections, then its RssAnon, RssFile, RssShmem parts.
    pub rss_per_conn_kib: f64,
    pub anon_per_conn_kib: f64,
    pub file_per_conn_kib: f64,
    pub shmem_per_conn_kib: f64,
    /// (end of the window - idle) / connections.
    pub end_per_conn_kib: f64,
    /// smaps_rollup Private_Dirty, connected.
    pub private_dirty_mib: f64,
    pub threads: f64,
    pub load_rss_per_conn_kib: f64,
}

#[derive(Serialize)]
pub struct Cpu {
    pub server_s: f64,
    pub server_pct: f64,
    pub server_system_pct: f64,
    pub server_us_per_delivery: f64,
    pub server_ms_per_update: f64,
    /// The system's other processes (poller, media-sim).
    pub feeders_pct: BTreeMap<&'static str, f64>,
    pub load_s: f64,
    pub load_pct: f64,
    /// Other programs on the host, competing.
    pub others_pct: f64,
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

/// Accept-queue overflows, the SYNs they dropped, SYN-queue overflows.
const LISTEN: &[&str] = &["ListenOverflows", "ListenDrops", "SyncookiesSent"];

/// Runs one shape on fresh `servers` (the phases: see the module doc); `up`
/// feeds them if they are edges.
async fn measure(
    args: &PushArgs,
    shape: &ShapeArgs,
    mut servers: Vec<Server>,
    up: Option<&mut Upstream>,
) -> anyhow::Result<Outcome> {
    let (system, noun) = (servers[0].system, servers[0].name());

    // Warm-up: one stream per server until its first event.
    let mut plan = Plan::default();
    servers.iter().for_each(|s| plan.push(s.proc.addr, &s.stream_path(0), 0));
    let warm = Load::start(plan, args.load.config(Instant::now() + Duration::from_secs(30)));
    let warmed = warm.wait_ready(servers.len() as u64, Duration::from_secs(20)).await;
    let warm_errors = warm.stats().error_kinds();
    warm.stop(Duration::from_secs(2)).await;
    warmed.with_context(|| format!("warm-up streams got no first event within 20 s: {warm_errors:?}"))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let me = std::process::id();
    let (idle, load_idle) = (memory(&servers)?, procstat::sample(me)?.rss_bytes);

    // Connection i watches event i % events on server (i / events) % servers:
    // every event has browsers on every server.
    let n = u64::from(shape.events) * u64::from(shape.browsers);
    let (mut plan, mut conns) = (Plan::default(), vec![0u64; servers.len()]);
    for i in 0..n {
        let (event, s) = ((i % u64::from(shape.events)) as u32, (i / u64::from(shape.events)) as usize);
        let s = s % servers.len();
        plan.push(servers[s].proc.addr, &servers[s].stream_path(event), event);
        conns[s] += 1;
    }
    let ramp_limit = args.load.ramp(n) + Duration::from_secs(30);
    let deadline = Instant::now() + ramp_limit + args.settle + args.duration + Duration::from_secs(60);
    let (listen0, server_pids) = (procstat::tcp_ext(LISTEN)?, pids(&servers)?);
    let (ramp_cpu0, ramp_start) = (procstat::Cpu::read(&server_pids)?, Instant::now());
    let load = Load::start(plan, args.load.config(deadline));
    let (sources, rate) = (load.sources().len(), args.load.connect_rate);
    eprintln!(
        "connecting {n} browsers to {} {noun}(s) from {sources} source address(es) at {rate}/s",
        conns.len()
    );
    let ready_after = load.wait_ready(n, ramp_limit).await;
    let ramp_cpu: f64 = procstat::Cpu::read(&server_pids)?.since(&ramp_cpu0).procs.iter().map(|p| p.0).sum();
    let ramp = ramp_start.elapsed().as_secs_f64();
    if ready_after.is_none() {
        let ready = load.stats().counters().ready;
        eprintln!("only {ready} of {n} browsers had a first event after {ramp_limit:?}; measuring anyway");
    }
    tokio::time::sleep(args.settle).await;
    servers.iter_mut().try_for_each(|s| s.proc.child.ensure_running())?;
    let (connected, load_connected) = (memory(&servers)?, procstat::sample(me)?.rss_bytes);

    // The window: CPU of the servers' processes, the system's others, this process.
    let stats = load.stats().clone();
    eprintln!("measuring for {}", humantime::format_duration(args.duration));
    stats.latency.reset();
    let (c0, r0) = (stats.counters(), requests(up.as_deref()).await?);
    let mut pids = pids(&servers)?;
    let k = pids.len();
    let feeders =
        up.as_deref().map_or(vec![], |u| vec![("poller", u.poller.pid()), ("media-sim", u.media.pid())]);
    pids.extend(feeders.iter().map(|f| f.1).chain([me]));
    let (cpu0, t0_ms, start) = (procstat::Cpu::read(&pids)?, sse_load::unix_micros() / 1000, Instant::now());
    tokio::time::sleep(args.duration).await;
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
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (updates, dropped) = stats.updates_served(t0_ms, t1_ms);
    let max_gap_ms = u64::try_from(args.interval.as_millis() * 3 / 2).unwrap_or(u64::MAX);
    let gaps = r0.is_some().then(|| stats.gaps(0..shape.events, t0_ms, t1_ms, max_gap_ms));
    let (connect, first_event) = (stats.connect.snapshot(), stats.first_event.snapshot());
    let (listen1, stuck) = (procstat::tcp_ext(LISTEN)?, load.stop(Duration::from_secs(5)).await);
    let totals = stats.counters();
    for s in servers {
        s.stop().await?;
    }

    let (server_s, server_system_s) = cpu.procs[..k].iter().fold((0.0, 0.0), |a, s| (a.0 + s.0, a.1 + s.1));
    let load_s = cpu.procs[cpu.procs.len() - 1].0;
    let pct = |s: f64| 100.0 * s / secs;
    let ms = |h: &crate::histogram::Snapshot, q| sse_load::ms(h, q);
    let mean = |f: &dyn Fn(usize) -> f64| (0..conns.len()).map(f).sum::<f64>() / conns.len() as f64;
    let rss = |m: &Mem| m.0.rss_bytes as f64 / 1024.0;
    let mib = |m: &[Mem], f: &dyn Fn(&Mem) -> f64| mean(&|i| f(&m[i]) / 1024.0);
    let per_conn = |a: &[Mem], b: &[Mem], f: &dyn Fn(&Mem) -> f64| {
        mean(&|i| (f(&b[i]) - f(&a[i])) / conns[i].max(1) as f64)
    };
    let requests = r1.zip(r0).map(|(r1, r0)| r1.saturating_sub(r0));
    let interval = args.interval.as_secs_f64();
    let quantile =
        |f: fn(&sse_load::Update) -> u64| report::quantile_ms(&report::sorted(updates.iter().map(f)), 0.5);
    let reached_all = updates.iter().filter(|u| u.reached >= shape.browsers).count();
    Ok(Outcome {
        column: String::new(),
        system,
        connections: n,
        servers: shape.edges,
        events: shape.events,
        per_event: shape.browsers,
        connecting: Connecting {
            all_ready_s: ready_after.map(|d| d.as_secs_f64()),
            connect_p50_ms: ms(&connect, 0.5),
            connect_p99_ms: ms(&connect, 0.99),
            connect_max_ms: ms(&connect, 1.0),
            listen_overflows: listen1[0].saturating_sub(listen0[0]),
            listen_drops: listen1[1].saturating_sub(listen0[1]),
            syncookies: listen1[2].saturating_sub(listen0[2]),
            server_cpu_pct: 100.0 * ramp_cpu / ramp.max(1e-3),
            server_us_per_conn: 1e6 * ramp_cpu / n.max(1) as f64,
            first_event_p50_ms: ms(&first_event, 0.5),
            first_event_p99_ms: ms(&first_event, 0.99),
        },
        delivery: Delivery {
            messages_per_s: window.messages as f64 / secs,
            kib_per_s: window.bytes as f64 / 1024.0 / secs,
            latency_p50_ms: ms(&latency, 0.5),
            latency_p90_ms: ms(&latency, 0.9),
            latency_p99_ms: ms(&latency, 0.99),
            latency_max_ms: ms(&latency, 1.0),
            latency_mean_ms: latency.mean().map(|us| us / 1000.0),
        },
        per_update: PerUpdate {
            updates: updates.len(),
            reached_all_pct: (!updates.is_empty()).then(|| 100.0 * reached_all as f64 / updates.len() as f64),
            last_p50_ms: quantile(|u| u.last_us),
            spread_p50_ms: quantile(|u| u.last_us - u.first_us),
            events_missing_a_change: gaps.map(|g| g.with_gap),
            longest_gap_s: gaps.map(|g| g.longest_ms as f64 / 1000.0),
            dropped,
        },
        window,
        totals,
        error_kinds: stats.error_kinds().into_iter().collect(),
        stuck,
        upstream: requests.map(|requests| Polls {
            requests,
            requests_per_s: requests as f64 / secs,
            expected_per_s: f64::from(shape.events) / interval,
            polls_per_event_per_interval: requests as f64 / f64::from(shape.events) / (secs / interval),
        }),
        edge_upstream,
        memory: Memory {
            conns_per_server: mean(&|i| conns[i] as f64),
            rss_idle_mib: mib(&idle, &rss),
            rss_connected_mib: mib(&connected, &rss),
            rss_end_mib: mib(&end, &rss),
            rss_per_conn_kib: per_conn(&idle, &connected, &rss),
            anon_per_conn_kib: per_conn(&idle, &connected, &|m| m.1.rss_anon_kib as f64),
            file_per_conn_kib: per_conn(&idle, &connected, &|m| m.1.rss_file_kib as f64),
            shmem_per_conn_kib: per_conn(&idle, &connected, &|m| m.1.rss_shmem_kib as f64),
            end_per_conn_kib: per_conn(&idle, &end, &rss),
            private_dirty_mib: mib(&connected, &|m| m.1.private_dirty_kib as f64),
            threads: mean(&|i| connected[i].1.threads as f64),
            load_rss_per_conn_kib: load_connected.saturating_sub(load_idle) as f64 / 1024.0 / n.max(1) as f64,
        },
        cpu: Cpu {
            server_s,
            server_pct: pct(server_s),
            server_system_pct: pct(server_system_s),
            server_us_per_delivery: 1e6 * server_s / window.messages.max(1) as f64,
            server_ms_per_update: 1e3 * server_s / updates.len().max(1) as f64,
            feeders_pct: feeders.iter().zip(&cpu.procs[k..]).map(|(f, s)| (f.0, pct(s.0))).collect(),
            load_s,
            load_pct: pct(load_s),
            others_pct: pct(cpu.others()),
        },
    })
}

/// media-sim's `GET /live` count so far, if the system has one.
async fn requests(up: Option<&Upstream>) -> anyhow::Result<Option<u64>> {
    match up {
        Some(up) => Ok(Some(stack::media_requests(up.media.addr).await?)),
        None => Ok(None),
    }
}

/// The columns of a report, the command line of each kind of process (ports
/// vary), and the runs that failed: the others' figures still stand.
#[derive(Default)]
pub struct Runs {
    done: Vec<Outcome>,
    commands: BTreeMap<&'static str, String>,
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
        if let Some(u) = &up {
            self.commands.insert("media-sim", u.media.cmd.clone());
            self.commands.insert("poller", u.poller.cmd.clone());
        }
        if let Ok(s) = &servers {
            self.commands.insert(s[0].name(), s[0].proc.cmd.clone());
        }
        match async { measure(args, &shape, servers?, up).await }.await {
            Ok(o) => self.done.push(Outcome { column, ..o }),
            Err(e) => self.failed.push(format!("{column}: the run failed: {e:#}")),
        }
    }

    /// The report: `args` (the scenario's flags) and what every column shares,
    /// one column per run, and nchan / livepush at the same size if both ran.
    pub fn report(&self, scenario: &str, title: &str, args: &impl Serialize) -> anyhow::Result<Report> {
        anyhow::ensure!(!self.done.is_empty(), "no run succeeded: {}", self.failed.join("; "));
        let nchan = self.done.iter().filter(|o| o.system == "nchan");
        let versus: Vec<Versus> = nchan.filter_map(|o| versus(o, &self.done)).collect();
        let params = Params { args, cores: report::cores(), commands: &self.commands };
        let figures = Figures { params, runs: &self.done, versus: &versus };
        let mut report = Report::new(scenario, format!("livepush-bench {scenario}: {title}"), &figures)?;
        let clock = match (self.done.iter().any(|o| o.system == "livepush"), versus.is_empty()) {
            (true, true) => "media-sim's clock",
            (true, false) => {
                "stamped by media-sim serving it (livepush) or by the harness just before it POSTs the update (nchan)"
            }
            (false, _) => "stamped by the harness just before it POSTs the update to nchan",
        };
        report.note(format!(
            "latency = browser read time - served_at_ms ({clock}, ms precision: up to 1 ms too high); \
             each connection's first event (the replayed latest value) is not counted"
        ));
        for f in &self.failed {
            report.note(f.clone());
        }
        Ok(report)
    }
}

#[derive(Serialize)]
struct Figures<'a, A> {
    params: Params<'a, A>,
    runs: &'a [Outcome],
    /// nchan / livepush at the same size (< 1: nchan lower).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    versus: &'a [Versus],
}

#[derive(Serialize)]
struct Params<'a, A> {
    /// The flags (`interval_s`, `change_every_s`: the livepush side's).
    args: &'a A,
    /// Host cores, shared by all processes.
    cores: usize,
    commands: &'a BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct Versus {
    column: String,
    rss_per_conn: Option<f64>,
    latency_p50: Option<f64>,
    latency_p99: Option<f64>,
    cpu_per_delivery: Option<f64>,
}

/// nchan's column `n` against the livepush column of its size.
fn versus(n: &Outcome, runs: &[Outcome]) -> Option<Versus> {
    let l = runs.iter().find(|l| l.system == "livepush" && l.connections == n.connections)?;
    let ratio = |n: Option<f64>, l: Option<f64>| n.zip(l.filter(|&l| l > 0.0)).map(|(n, l)| n / l);
    let (rss, cpu) =
        (|o: &Outcome| Some(o.memory.rss_per_conn_kib), |o: &Outcome| Some(o.cpu.server_us_per_delivery));
    Some(Versus {
        column: n.column.clone(),
        rss_per_conn: ratio(rss(n), rss(l)),
        latency_p50: ratio(n.delivery.latency_p50_ms, l.delivery.latency_p50_ms),
        latency_p99: ratio(n.delivery.latency_p99_ms, l.delivery.latency_p99_ms),
        cpu_per_delivery: ratio(cpu(n), cpu(l)),
    })
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

/// Targets from the issue, drawn next to the figures.
const TARGET_P99_MS: f64 = 50.0;
const TARGET_RSS_PER_CONN_KIB: f64 = 6.0;

/// The fan-out figures as SVG (plotters' SVG backend needs no fonts): latency
/// p50/p99 and RSS per connection against connections, each by its target.
fn plot(path: &std::path::Path, runs: &[Outcome]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled("livepush fan-out: one edge, one event, N SSE connections", ("sans-serif", 22))?;
    let (left, right) = root.split_horizontally(550);
    let x_max = runs.iter().map(|o| o.connections).max().unwrap_or(1) as f64 * 1.1;
    let xy = |f: &dyn Fn(&Outcome) -> Option<f64>| -> Vec<(f64, f64)> {
        runs.iter().filter_map(|o| Some((o.connections as f64, f(o)?))).collect()
    };
    let latency = [
        ("p50", xy(&|o| o.delivery.latency_p50_ms), RGBColor(31, 119, 180)),
        ("p99", xy(&|o| o.delivery.latency_p99_ms), RGBColor(214, 39, 40)),
    ];
    let rss = [("measured", xy(&|o| Some(o.memory.rss_per_conn_kib)), RGBColor(44, 160, 44))];
    let panels = [
        (left, "delivery latency, media-sim served -> browser read", "ms", &latency[..]),
        (right, "edge RSS per SSE connection, (connected - idle) / N", "KiB per connection", &rss[..]),
    ];
    let orange = RGBColor(255, 127, 14);
    for (area, caption, unit, series) in panels {
        let (target, label, headroom, corner) = match unit {
            "ms" => (TARGET_P99_MS, "target p99 < 50 ms", 1.15, SeriesLabelPosition::UpperLeft),
            _ => (TARGET_RSS_PER_CONN_KIB, "target <= 6 KiB", 1.25, SeriesLabelPosition::LowerRight),
        };
        let y_max = series.iter().flat_map(|s| &s.1).map(|p| p.1).fold(target, f64::max) * headroom;
        let mut chart = ChartBuilder::on(&area);
        let chart = chart.caption(caption, ("sans-serif", 16)).margin(12).x_label_area_size(40);
        let mut chart = chart.y_label_area_size(55).build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc("SSE connections on the edge").y_desc(unit).x_label_formatter(&|x| format!("{x:.0}"));
        mesh.light_line_style(WHITE).draw()?;
        let dashes = DashedLineSeries::new([(0.0, target), (x_max, target)], 8, 5, orange.stroke_width(2));
        let legend =
            |c: RGBColor| move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2));
        chart.draw_series(dashes)?.label(label).legend(legend(orange));
        for &(name, ref points, color) in series {
            let line = LineSeries::new(points.iter().copied(), color.stroke_width(2));
            chart.draw_series(line)?.label(name).legend(legend(color));
            // Each point with its value written above and right of it.
            let font = ("sans-serif", 13).into_font().color(&color);
            chart.draw_series(points.iter().map(|&(x, y)| {
                let value = Text::new(format!("{y:.1}"), (6, -16), font.clone());
                EmptyElement::at((x, y)) + Circle::new((0, 0), 4, color.filled()) + value
            }))?;
        }
        let mut labels = chart.configure_series_labels();
        labels.position(corner).background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}
