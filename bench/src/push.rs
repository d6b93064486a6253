//! The push path measured by [`Runs`]: media-sim → poller → edge(s) → SSE browsers (`fanout`,
//! `breadth`), or nginx with nchan ([`crate::nchan`]). Phases, figures: BENCHMARKS.md, `fanout`.

use crate::{
    child,
    procstat::{self, Cpu},
    report::{self, Report},
    sse_load::{self, Load, Plan, Update},
    stack::{self, BinArgs, Proc},
};
use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, process, time::Duration};
use tokio::time::{Instant, sleep};
use tokio_util::task::AbortOnDropHandle;

/// How the browsers are generated; shared with other scenarios.
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
            trace: false,
        }
    }

    /// Time to start `n` connections at the connect rate.
    pub fn ramp(&self, n: u64) -> Duration {
        Duration::from_secs_f64(n as f64 / f64::from(self.connect_rate.max(1)))
    }
}

/// Events x browsers over edges (`breadth`, `failover`; `fanout` is 1 x N over 1).
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

#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    /// Length of the measurement window.
    #[arg(long, default_value = "30s", value_parser = at_least_1s)]
    pub duration: Duration,
    /// Wait from "every browser has its first event" to the connected RSS and the window.
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
    if d < Duration::from_secs(1) { Err("must be at least 1s".into()) } else { Ok(d) }
}

pub fn event_id(index: u32) -> String {
    format!("ev-{index:06}")
}

/// One server holding browsers: an edge, or nginx's master (its workers are its children).
pub struct Server {
    pub addr: SocketAddr,
    pub pid: u32,
    /// The process if the harness started it (`None`: an edge started by hand, `sse-load`).
    pub proc: Option<Proc>,
    /// nginx's publisher (stopped first) and directory (removed last); `None`: an edge.
    pub nginx: Option<(AbortOnDropHandle<()>, tempfile::TempDir)>,
}

impl Server {
    /// A server the harness started (and stops after its run).
    pub fn started(proc: Proc, nginx: Option<(AbortOnDropHandle<()>, tempfile::TempDir)>) -> Self {
        Self { addr: proc.addr, pid: proc.pid(), proc: Some(proc), nginx }
    }

    /// Fails if the server has exited (one started by hand: if its pid is gone).
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        match &mut self.proc {
            Some(proc) => proc.child.ensure_running(),
            None => procstat::sample(self.pid).map(drop),
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        let (workers, _dir) = (procstat::children(self.pid)?, self.nginx.map(|(_, dir)| dir));
        if let Some(proc) = self.proc {
            proc.stop().await?;
        }
        // A worker that outlived its master (still nginx: the pid not reused).
        let nginx =
            |p: &u32| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"nginx: "));
        workers.into_iter().filter(nginx).for_each(|pid| _ = child::signal(pid, child::Signal::KILL));
        Ok(())
    }
}

/// An edge's upstream to the pollers, from its `/metrics` (a metric missing counts 0).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EdgeUpstream {
    /// HTTP/2 connections carrying `Subscribe` streams, all pollers; failures: all reasons.
    pub channels: u64,
    pub streams: u64,
    pub subscribe_failures: u64,
}

impl EdgeUpstream {
    pub fn parse(text: &str) -> Self {
        use livepush::metrics::*;
        let get = |name| stack::metric(text, name).unwrap_or(0);
        let (channels, streams) = (get(EDGE_UPSTREAM_CHANNELS), get(EDGE_UPSTREAM_STREAMS));
        Self { channels, streams, subscribe_failures: get(EDGE_UPSTREAM_SUBSCRIBE_FAILURES) }
    }
}

/// One run, one column. Connecting and errors: the whole run; the rest: the window. Latency:
/// update produced (media-sim serving it, the harness POSTing it to nchan) to browser read;
/// memory: mean per server (nginx: its processes summed); `_pct`: of one core.
#[derive(Serialize, Default)]
pub struct Outcome {
    column: String,
    system: &'static str,
    connections: u64,
    /// Every browser had its first event after (`None`: not within the limit).
    all_ready_s: Option<f64>,
    connect_p50_p99_max_ms: Vec<Option<f64>>,
    first_event_p50_p99_ms: Vec<Option<f64>>,
    ramp_server_pct: f64,
    ramp_server_us_per_conn: f64,
    listen_overflows_drops_syncookies: Vec<u64>,
    errors_reconnects_stale: Vec<u64>,
    error_kinds: BTreeMap<String, u64>,
    messages: u64,
    messages_per_s: f64,
    kib_per_s: f64,
    latency_p50_p90_p99_max_ms: Vec<Option<f64>>,
    latency_mean_ms: Option<f64>,
    updates: usize,
    /// Of the updates, % that reached every browser of their event; p50 over updates.
    reached_all_pct: Option<f64>,
    last_p50_ms: Option<f64>,
    spread_p50_ms: Option<f64>,
    /// Deliveries not grouped per update (a cap): the per-update figures miss them.
    updates_dropped: u64,
    /// Events with updates over 1.5 intervals apart; polls: media-sim's `GET /live` (vs events/interval).
    events_missing_a_change: Option<u64>,
    longest_gap_s: Option<f64>,
    polls: Option<u64>,
    polls_per_s: Option<f64>,
    expected_polls_per_s: Option<f64>,
    polls_per_event_per_interval: Option<f64>,
    /// At the end of the window, the edges' summed.
    edge_upstream: Option<EdgeUpstream>,
    rss_idle_connected_end_mib: Vec<f64>,
    /// (connected - idle) / N, its RssAnon, RssFile, RssShmem parts; (end - idle) / N.
    rss_per_conn_kib: f64,
    anon_file_shmem_per_conn_kib: Vec<f64>,
    end_per_conn_kib: f64,
    /// smaps_rollup Private_Dirty and threads, connected.
    private_dirty_mib: f64,
    threads: f64,
    /// This process's (connected - idle) / N: the browsers must cost far less than the server.
    load_rss_per_conn_kib: f64,
    server_s: f64,
    server_pct: f64,
    server_system_pct: f64,
    server_us_per_delivery: f64,
    server_ms_per_update: f64,
    poller_media_sim_pct: Option<Vec<f64>>,
    load_s: f64,
    load_pct: f64,
    others_pct: f64,
    /// nchan / livepush at the same size (< 1: nchan lower): RSS per connection,
    /// latency p50, p99, server CPU per delivery.
    vs_livepush_rss_p50_p99_cpu: Option<Vec<Option<f64>>>,
}

/// The servers' processes, measured together: an edge; nginx's master and workers.
fn pids(servers: &[Server]) -> anyhow::Result<Vec<u32>> {
    let each = servers.iter().map(|s| Ok([vec![s.pid], procstat::children(s.pid)?].concat()));
    Ok(each.collect::<anyhow::Result<Vec<_>>>()?.concat())
}

/// A server's [`procstat::memory_kib`], its processes' summed.
type Mem = [u64; 6];

/// Per server, its processes' figures summed.
fn memory(servers: &[Server]) -> anyhow::Result<Vec<Mem>> {
    let read = |s| -> anyhow::Result<Mem> {
        let mut m = Mem::default();
        for pid in pids(std::slice::from_ref(s))? {
            m.iter_mut().zip(procstat::memory_kib(pid)?).for_each(|(sum, x)| *sum += x);
        }
        Ok(m)
    };
    servers.iter().map(read).collect()
}

const LISTEN: &[&str] = &["ListenOverflows", "ListenDrops", "SyncookiesSent"];

/// The runs of one report and those that failed (the others' figures stand).
pub struct Runs<'a> {
    args: &'a PushArgs,
    /// The poller and media-sim (`--stamp`), for the whole invocation if livepush is measured.
    up: Option<(Proc, Proc)>,
    done: Vec<Outcome>,
    failed: Vec<String>,
}

impl<'a> Runs<'a> {
    pub async fn new(args: &'a PushArgs, livepush: bool) -> anyhow::Result<Self> {
        let mut up = None;
        if livepush {
            let media = stack::media_sim(&args.bins, args.change_every, true).await?;
            up = Some((
                stack::poller(&args.bins, stack::free_addr()?, media.addr, args.interval, &[]).await?,
                media,
            ));
        }
        Ok(Self { args, up, done: Vec::new(), failed: Vec::new() })
    }

    /// Measures `shape` on the `given` servers (nginx, or edges started by hand), then on
    /// fresh edges up to `shape.edges`: a column, or a failure noted.
    pub async fn measure(&mut self, shape: ShapeArgs, given: anyhow::Result<Vec<Server>>, column: String) {
        eprintln!("{column}: {} event(s) x {} browsers", shape.events, shape.browsers);
        let run = async {
            let mut servers = given?;
            while servers.len() < shape.edges as usize {
                let poller = self.up.as_ref().map(|u| u.0.addr).expect("started for livepush");
                servers.push(Server::started(stack::edge(&self.args.bins, &[poller]).await?, None));
            }
            self.run(&shape, servers).await
        };
        match run.await {
            Ok(o) => self.done.push(Outcome { column, ..o }),
            Err(e) => self.failed.push(format!("{column}: the run failed: {e:#}")),
        }
    }

    /// The phases of BENCHMARKS.md ("Scenario `fanout`"), each figure where measured.
    async fn run(&mut self, shape: &ShapeArgs, mut servers: Vec<Server>) -> anyhow::Result<Outcome> {
        let (args, edges) = (self.args, servers[0].nginx.is_none());
        let mut up = self.up.as_mut().filter(|_| edges);
        let path = |e| if edges { format!("/live/{}/stream", event_id(e)) } else { "/sub".into() };
        // Warm-up: one stream per server until its first event; then the idle RSS.
        let mut plan = Plan::default();
        servers.iter().for_each(|s| plan.push(s.addr, &path(0), 0));
        let warm = Load::start(plan, args.load.config(Instant::now() + Duration::from_secs(30)));
        let warmed = warm.wait_ready(servers.len() as u64, Duration::from_secs(20)).await;
        let warm_errors = warm.stats().error_kinds();
        warm.stop(Duration::from_secs(2)).await;
        warmed.with_context(|| format!("warm-up streams got no first event within 20 s: {warm_errors:?}"))?;
        sleep(Duration::from_secs(1)).await;
        let (idle, load_idle) = (memory(&servers)?, procstat::sample(process::id())?.rss_bytes);
        // Connection i watches event i % events on server (i / events) % servers:
        // every event has browsers on every server.
        let (events, n) = (u64::from(shape.events), u64::from(shape.events) * u64::from(shape.browsers));
        let (mut plan, mut conns) = (Plan::default(), vec![0u64; servers.len()]);
        for i in 0..n {
            let (event, s) = ((i % events) as u32, (i / events) as usize % servers.len());
            plan.push(servers[s].addr, &path(event), event);
            conns[s] += 1;
        }
        let system = if edges { "livepush" } else { "nchan" };
        let mut o = Outcome { system, connections: n, ..Outcome::default() };
        let ramp_limit = args.load.ramp(n) + Duration::from_secs(30);
        let deadline = Instant::now() + ramp_limit + args.settle + args.duration + Duration::from_secs(60);
        let (listen0, server_pids) = (procstat::tcp_ext(LISTEN)?, pids(&servers)?);
        let (ramp_cpu0, ramp_start) = (Cpu::read(&server_pids)?, Instant::now());
        let load = Load::start(plan, args.load.config(deadline));
        eprintln!("connecting {n} browsers to {system} from {} source address(es)", load.sources().len());
        o.all_ready_s = load.wait_ready(n, ramp_limit).await.map(|d| d.as_secs_f64());
        let ramp_cpu: f64 = Cpu::read(&server_pids)?.since(&ramp_cpu0).procs.iter().map(|p| p.0).sum();
        o.ramp_server_pct = 100.0 * ramp_cpu / ramp_start.elapsed().as_secs_f64().max(1e-3);
        o.ramp_server_us_per_conn = 1e6 * ramp_cpu / n.max(1) as f64;
        sleep(args.settle).await;
        servers.iter_mut().try_for_each(|s| s.ensure_running())?;
        let (connected, load_connected) = (memory(&servers)?, procstat::sample(process::id())?.rss_bytes);
        // The window: CPU of the servers' processes, the feeders, this process.
        let (stats, media) = (load.stats().clone(), up.as_ref().map(|u| u.1.addr));
        stats.latency.reset();
        let c0 = stats.counters();
        let r0 = if let Some(m) = media { Some(stack::media_requests(m).await?) } else { None };
        let mut pids = pids(&servers)?;
        let k = pids.len();
        pids.extend(up.iter().flat_map(|(poller, media)| [poller.pid(), media.pid()]).chain([process::id()]));
        let (cpu0, t0_ms, start) = (Cpu::read(&pids)?, sse_load::unix_micros() / 1000, Instant::now());
        sleep(args.duration).await;
        let cpu = Cpu::read(&pids)?.since(&cpu0);
        let (t1_ms, secs) = (sse_load::unix_micros() / 1000, start.elapsed().as_secs_f64());
        let (latency, window) = (stats.latency.snapshot(), stats.counters().since(&c0));
        let r1 = if let Some(m) = media { Some(stack::media_requests(m).await?) } else { None };
        let end = memory(&servers)?;
        if let Some((poller, media)) = up.as_mut() {
            // Every edge's metrics in one text: each figure is their sum.
            let mut text = String::new();
            for s in &servers {
                text += &stack::scrape(s.addr).await?;
            }
            o.edge_upstream = Some(EdgeUpstream::parse(&text));
            poller.child.ensure_running()?;
            media.child.ensure_running()?;
        }
        servers.iter_mut().try_for_each(|s| s.ensure_running())?;
        // Let the updates served in the window reach everyone. A poll every
        // interval (5 % jitter; the settle lets each event's second poll, up to
        // 1.5 intervals after its first, pass): a longer gap is a change missed.
        sleep(Duration::from_secs(2)).await;
        let updates;
        (updates, o.updates_dropped) = stats.updates_served(t0_ms, t1_ms);
        let max_gap_ms = u64::try_from(args.interval.as_millis() * 3 / 2).unwrap_or(u64::MAX);
        let gaps = media.map(|_| stats.gaps(0..shape.events, t0_ms, t1_ms, max_gap_ms));
        let listen = procstat::tcp_ext(LISTEN)?.into_iter().zip(listen0);
        o.listen_overflows_drops_syncookies = listen.map(|(b, a)| b.saturating_sub(a)).collect();
        load.stop(Duration::from_secs(5)).await;
        for s in servers {
            s.stop().await?;
        }
        let totals = stats.counters();
        o.errors_reconnects_stale = vec![totals.errors, totals.reconnects, totals.stale];
        o.error_kinds = stats.error_kinds().into_iter().collect();
        o.connect_p50_p99_max_ms = sse_load::ms(&stats.connect.snapshot(), &[0.5, 0.99, 1.0]);
        o.first_event_p50_p99_ms = sse_load::ms(&stats.first_event.snapshot(), &[0.5, 0.99]);
        o.latency_p50_p90_p99_max_ms = sse_load::ms(&latency, &[0.5, 0.9, 0.99, 1.0]);
        o.latency_mean_ms = latency.mean().map(|us| us / 1000.0);
        (o.messages, o.messages_per_s) = (window.messages, window.messages as f64 / secs);
        o.kib_per_s = window.bytes as f64 / 1024.0 / secs;
        let reached_all = updates.iter().filter(|u| u.reached >= shape.browsers).count() as f64;
        o.reached_all_pct = (!updates.is_empty()).then(|| 100.0 * reached_all / updates.len() as f64);
        let p50 = |f: fn(&Update) -> u64| report::quantile_ms(&report::sorted(updates.iter().map(f)), 0.5);
        (o.last_p50_ms, o.spread_p50_ms) = (p50(|u| u.last_us), p50(|u| u.last_us - u.first_us));
        o.updates = updates.len();
        o.events_missing_a_change = gaps.map(|g| g.with_gap);
        o.longest_gap_s = gaps.map(|g| g.longest_ms as f64 / 1e3);
        o.polls = r1.zip(r0).map(|(r1, r0)| r1.saturating_sub(r0));
        o.polls_per_s = o.polls.map(|p| p as f64 / secs);
        o.expected_polls_per_s = o.polls.map(|_| f64::from(shape.events) / args.interval.as_secs_f64());
        let intervals = f64::from(shape.events) * secs / args.interval.as_secs_f64();
        o.polls_per_event_per_interval = o.polls.map(|p| p as f64 / intervals);
        let mean = |f: &dyn Fn(usize) -> f64| (0..conns.len()).map(f).sum::<f64>() / conns.len() as f64;
        let per_conn =
            |b: &[Mem], j: usize| mean(&|i| (b[i][j] as f64 - idle[i][j] as f64) / conns[i].max(1) as f64);
        o.rss_idle_connected_end_mib =
            [&idle, &connected, &end].map(|m| mean(&|i| m[i][0] as f64 / 1024.0)).into();
        (o.rss_per_conn_kib, o.end_per_conn_kib) = (per_conn(&connected, 0), per_conn(&end, 0));
        o.anon_file_shmem_per_conn_kib = (1..4).map(|j| per_conn(&connected, j)).collect();
        o.private_dirty_mib = mean(&|i| connected[i][4] as f64 / 1024.0);
        o.threads = mean(&|i| connected[i][5] as f64);
        o.load_rss_per_conn_kib = load_connected.saturating_sub(load_idle) as f64 / 1024.0 / n.max(1) as f64;
        let pct = |s: f64| 100.0 * s / secs;
        let (server_s, system_s) = cpu.procs[..k].iter().fold((0.0, 0.0), |a, s| (a.0 + s.0, a.1 + s.1));
        (o.server_s, o.server_pct, o.server_system_pct) = (server_s, pct(server_s), pct(system_s));
        o.server_us_per_delivery = 1e6 * server_s / window.messages.max(1) as f64;
        o.server_ms_per_update = 1e3 * server_s / updates.len().max(1) as f64;
        o.poller_media_sim_pct = media.map(|_| vec![pct(cpu.of(k)), pct(cpu.of(k + 1))]);
        (o.load_s, o.others_pct) = (cpu.of(pids.len() - 1), pct(cpu.others()));
        o.load_pct = pct(o.load_s);
        // nchan against the livepush run of its size, if any.
        let key = |o: &Outcome| {
            let q = &o.latency_p50_p90_p99_max_ms;
            [Some(o.rss_per_conn_kib), q[0], q[2], Some(o.server_us_per_delivery)]
        };
        let same = self.done.iter().find(|l| !edges && l.system == "livepush" && l.connections == n);
        let ratio = |(n, l): (Option<f64>, Option<f64>)| Some(n? / l.filter(|&l| l > 0.0)?);
        o.vs_livepush_rss_p50_p99_cpu = same.map(|l| key(&o).into_iter().zip(key(l)).map(ratio).collect());
        Ok(o)
    }

    /// Stops media-sim and the poller; the report: the flags, the host's cores, a column per run.
    pub async fn report(&mut self, name: &str, title: &str) -> anyhow::Result<Report> {
        if let Some((poller, media)) = self.up.take() {
            poller.stop().await?;
            media.stop().await?;
        }
        anyhow::ensure!(!self.done.is_empty(), "no run succeeded: {}", self.failed.join("; "));
        let figures = serde_json::json!({ "cores": report::cores(), "runs": self.done });
        let mut report = Report::new(name, format!("livepush-bench {name}: {title}"), &figures)?;
        let note = "latency = browser read time - served_at_ms (stamped by media-sim serving it, or by the \
            harness just before its POST to nchan; ms precision: up to 1 ms too high); each connection's \
            first event (the replayed latest value) is not counted";
        report.note(note.into());
        self.failed.iter().for_each(|f| _ = report.note(f.clone()));
        Ok(report)
    }
}

#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// SSE connections; a list (1000,5000,15000) runs each size on a fresh edge.
    #[arg(long, value_delimiter = ',', default_value = "1000", value_parser = clap::value_parser!(u32).range(1..=18_000))]
    connections: Vec<u32>,
    /// Also draw latency and RSS per connection against connections as SVG.
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,
    #[command(flatten)]
    push: PushArgs,
}

#[derive(Debug, clap::Args)]
pub struct BreadthArgs {
    #[command(flatten)]
    shape: ShapeArgs,
    #[command(flatten)]
    push: PushArgs,
}

/// Scenario `fanout`: one event, one edge, N browsers, a fresh edge per size.
pub async fn fanout(args: FanoutArgs) -> anyhow::Result<Report> {
    let mut runs = Runs::new(&args.push, true).await?;
    for &n in &args.connections {
        runs.measure(ShapeArgs { events: 1, browsers: n, edges: 1 }, Ok(Vec::new()), n.to_string()).await;
    }
    let mut report = runs.report("fanout", "one event, one edge, N SSE connections").await?;
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
    let mut runs = Runs::new(&args.push, true).await?;
    runs.measure(args.shape.clone(), Ok(Vec::new()), format!("{events}x{browsers}")).await;
    runs.report("breadth", &format!("{events} events x {browsers} browsers over {edges} edges")).await
}

/// Latency and RSS per connection against connections, each with its
/// target from the issue, as SVG (needs no fonts).
fn plot(path: &std::path::Path, runs: &[Outcome]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = runs.iter().map(|o| o.connections).max().unwrap_or(1) as f64 * 1.1;
    let xy = |f: &dyn Fn(&Outcome) -> Option<f64>| -> Vec<(f64, f64)> {
        runs.iter().filter_map(|o| Some((o.connections as f64, f(o)?))).collect()
    };
    let (lat, rss) = (|q: usize| xy(&|o| o.latency_p50_p90_p99_max_ms[q]), xy(&|o| Some(o.rss_per_conn_kib)));
    let panels = [
        ("delivery latency p50 (lower) and p99, ms; target p99 < 50", 50.0, vec![lat(0), lat(2)]),
        ("edge RSS per connection, (connected - idle) / N, KiB; target <= 6", 6.0, vec![rss]),
    ];
    for ((caption, target, series), area) in panels.into_iter().zip(root.split_evenly((1, 2))) {
        let y_max = series.iter().flatten().map(|p| p.1).fold(target, f64::max) * 1.2;
        let mut chart = ChartBuilder::on(&area);
        chart.caption(caption, ("sans-serif", 18)).margin(12).x_label_area_size(40).y_label_area_size(55);
        let mut chart = chart.build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart.configure_mesh().x_desc("SSE connections on the edge").draw()?;
        chart.draw_series(DashedLineSeries::new([(0.0, target), (x_max, target)], 8, 5, BLACK.into()))?;
        for (i, points) in series.into_iter().enumerate() {
            chart.draw_series(LineSeries::new(points, Palette99::pick(i).stroke_width(2)).point_size(4))?;
        }
    }
    Ok(root.present()?)
}
