//! Scenario `churn`: browsers come and go in batches on one edge while the
//! browsers of one stable event keep watching.
//!
//! Default: 10,000 browsers, each on an event of its own, connect in batches
//! of 500; a batch stays until every browser has its first value, `--hold`
//! longer, then resets (RST, as a tab or network that vanishes), and the
//! next batch connects. Meanwhile `--stable-browsers` browsers watch one
//! unrelated event and `/readyz` is probed every `--probe-every`.
//!
//! Phases:
//!
//! 1. Start media-sim (`--stamp`), the poller (`--linger`) and one edge;
//!    connect the stable browsers, wait until each has its first value, then
//!    `--settle`: **before** (edge RSS, open files, `/metrics` of edge and
//!    poller).
//! 2. **Churn**, with the probes running (they run until the after-sample).
//! 3. **Drain**: wait until the edge holds only the stable browsers' streams
//!    and upstream stream, and the poller watches only the stable event
//!    (the edge keeps an upstream stream 5-7.5 s after its last browser
//!    leaves, the poller polls `--linger` longer), then `--settle`, during
//!    which media-sim's requests/s tells whether polling stopped: **after**.
//! 4. The stable browsers leave: `livepush_edge_streams_open` must reach 0.

use crate::{
    histogram::Snapshot,
    httpc, procstat,
    push::{EdgeUpstream, LoadArgs, at_least_1s, event_id},
    report::{Report, Value},
    sse_load::{self, Counters, Gaps, Load, Plan},
    stack::{self, BinArgs, Proc},
};
use anyhow::Context;
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// The stable event's id (the churned events are ev-000000, ...).
const STABLE: &str = "stable";
/// The edge keeps an upstream stream this long at most after its last
/// browser left (5 s, times up to 1.5).
const EDGE_GRACE_MAX: Duration = Duration::from_millis(7_500);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Browsers that connect and reset, each on an event of its own.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    browsers: u32,

    /// Browsers per batch: they connect together and reset together.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,

    /// How long a batch stays after its last browser has its first value.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    hold: Duration,

    /// Browsers of the stable event, connected throughout.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=5_000))]
    stable_browsers: u32,

    /// Time between two `/readyz` probes (each also reads the edge's and
    /// the poller's `/metrics` and the edge's open files, for the peaks).
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    probe_every: Duration,

    /// The poller's --interval (media-sim's --change-every too).
    #[arg(long, default_value = "2s", value_parser = at_least_1s)]
    interval: Duration,

    /// The poller's --linger.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    linger: Duration,

    /// Wait before the before-sample, and after the drain before the
    /// after-sample.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    settle: Duration,

    #[command(flatten)]
    load: LoadArgs,

    #[command(flatten)]
    bins: BinArgs,
}

/// One reading of the edge (process and `/metrics`) and the poller.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    rss_bytes: u64,
    peak_rss_bytes: u64,
    open_files: u64,
    streams_open: u64,
    upstream: EdgeUpstream,
    poller_events: u64,
}

impl Reading {
    async fn take(edge: SocketAddr, pid: u32, poller: SocketAddr) -> anyhow::Result<Self> {
        use livepush::metrics::{EDGE_STREAMS_OPEN, POLLER_EVENTS_WATCHED};
        let sample = procstat::sample(pid)?;
        let text = stack::scrape(edge).await?;
        let poller_text = stack::scrape(poller).await?;
        Ok(Self {
            rss_bytes: sample.rss_bytes,
            peak_rss_bytes: sample.peak_rss_bytes,
            open_files: procstat::open_files(pid)?,
            streams_open: stack::metric(&text, EDGE_STREAMS_OPEN)
                .context("no streams_open in edge metrics")?,
            upstream: EdgeUpstream::parse(&text),
            poller_events: stack::metric(&poller_text, POLLER_EVENTS_WATCHED)
                .context("no events_watched in poller metrics")?,
        })
    }

    /// Each figure's maximum of the two.
    fn max(self, o: Self) -> Self {
        Self {
            rss_bytes: self.rss_bytes.max(o.rss_bytes),
            peak_rss_bytes: self.peak_rss_bytes.max(o.peak_rss_bytes),
            open_files: self.open_files.max(o.open_files),
            streams_open: self.streams_open.max(o.streams_open),
            upstream: EdgeUpstream {
                channels: self.upstream.channels.max(o.upstream.channels),
                streams: self.upstream.streams.max(o.upstream.streams),
                subscribe_failures: self.upstream.subscribe_failures.max(o.upstream.subscribe_failures),
            },
            poller_events: self.poller_events.max(o.poller_events),
        }
    }
}

/// What the `/readyz` probes saw, and the highest readings taken alongside.
#[derive(Debug, Clone, Default)]
struct Probes {
    sent: u64,
    ok: u64,
    /// Answers other than 200, by status.
    other: BTreeMap<u16, u64>,
    /// No answer within a second, or the request failed; the first reason.
    failed: u64,
    first_failure: Option<String>,
    slowest: Duration,
    peak: Reading,
    readings_failed: u64,
}

/// The churned browsers, all batches together.
#[derive(Debug, Default)]
struct Churn {
    time: Duration,
    batches: u64,
    /// Per batch: time until every browser had its first value.
    ready: Vec<Option<Duration>>,
    attempts: u64,
    /// Browsers holding a value when their batch reset.
    with_value: u64,
    first_value_max_us: Option<u64>,
    errors: u64,
    reconnects: u64,
    error_kinds: BTreeMap<String, u64>,
}

/// The stable event's browsers, from the start of the churn to the
/// after-sample.
struct Stable {
    ready_after: Option<Duration>,
    counters: Counters,
    latency: Snapshot,
    updates: usize,
    reached_all: usize,
    gaps: Gaps,
    error_kinds: Vec<(String, u64)>,
}

/// Everything measured.
struct Outcome {
    cmds: [String; 3],
    before: Reading,
    churn: Churn,
    /// From the end of the churn until the edge held only the stable
    /// streams, its upstream only the stable event, and the poller only
    /// polled that event (`None`: not within `drain_limit`).
    streams_back: Option<Duration>,
    upstream_back: Option<Duration>,
    poller_back: Option<Duration>,
    drain_limit: Duration,
    after_requests_per_s: f64,
    after: Reading,
    probes: Probes,
    stable: Stable,
    streams_open_at_end: Option<u64>,
    stuck: usize,
    /// CPU seconds from the churn to the after-sample: edge, poller,
    /// media-sim, this process, other programs on the host.
    cpu: [f64; 5],
    observed: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    anyhow::ensure!(
        u64::from(args.batch) + u64::from(args.stable_browsers) <= 18_000,
        "a batch and the stable browsers must fit the edge's 18,000 connections"
    );
    let media = stack::media_sim(&args.bins, args.interval, true).await?;
    let poller_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, stack::free_port()?));
    let linger = humantime::format_duration(args.linger).to_string();
    let poller =
        stack::poller_at(&args.bins, poller_addr, media.addr, args.interval, &["--linger", &linger]).await?;
    let outcome = match stack::edge(&args.bins, poller.addr).await {
        Ok(edge) => {
            let outcome = measure(&args, &media, &poller, &edge).await;
            edge.stop().await?;
            outcome
        }
        Err(e) => Err(e),
    };
    poller.stop().await?;
    media.stop().await?;
    Ok(report(&args, &outcome?))
}

async fn measure(args: &Args, media: &Proc, poller: &Proc, edge: &Proc) -> anyhow::Result<Outcome> {
    let path = |id: &str| format!("/live/{id}/stream");
    let read = || Reading::take(edge.addr, edge.pid(), poller.addr);
    let far = Instant::now() + Duration::from_secs(3_600);

    // The stable browsers, then the before-sample.
    let n_stable = u64::from(args.stable_browsers);
    let mut plan = Plan::default();
    for _ in 0..n_stable {
        plan.push(edge.addr, &path(STABLE), 0);
    }
    let stable = Load::start(plan, args.load.config(far));
    let ready_after = stable.wait_ready(n_stable, args.load.ramp(n_stable) + Duration::from_secs(20)).await;
    if ready_after.is_none() {
        eprintln!(
            "only {} of {n_stable} stable browsers have a value; going on",
            stable.stats().counters().ready
        );
    }
    tokio::time::sleep(args.settle).await;
    let before = read().await?;
    eprintln!(
        "before: edge RSS {:.1} MiB, {} open files, {} streams; poller watches {} event(s)",
        before.rss_bytes as f64 / MIB,
        before.open_files,
        before.streams_open,
        before.poller_events
    );

    let stop_probes = CancellationToken::new();
    let probing =
        tokio::spawn(probe(edge.addr, edge.pid(), poller.addr, args.probe_every, stop_probes.clone()));
    let pids = [edge.pid(), poller.pid(), media.pid(), std::process::id()];
    let (cpu0, host0) = (cpu(&pids)?, procstat::host_busy_seconds()?);
    let start = Instant::now();
    let start_ms = sse_load::unix_micros() / 1000;
    let stable_stats = stable.stats().clone();
    stable_stats.latency.reset();
    let stable0 = stable_stats.counters();

    // The churn: batch after batch of fresh events, reset once served.
    let mut churn = Churn { batches: u64::from(args.browsers.div_ceil(args.batch)), ..Churn::default() };
    eprintln!("churn: {} browsers in {} batches of {}", args.browsers, churn.batches, args.batch);
    let mut first = 0;
    while first < args.browsers {
        let n = args.batch.min(args.browsers - first);
        let mut plan = Plan::default();
        for i in first..first + n {
            plan.push(edge.addr, &path(&event_id(i)), i);
        }
        first += n;
        let load = Load::start(plan, sse_load::Config { reset: true, ..args.load.config(far) });
        let limit = args.load.ramp(n.into()) + Duration::from_secs(15);
        churn.ready.push(load.wait_ready(n.into(), limit).await);
        tokio::time::sleep(args.hold).await;
        let stats = load.stats().clone();
        churn.with_value += stats.counters().ready;
        let stuck = load.stop(Duration::from_secs(2)).await;
        anyhow::ensure!(stuck == 0, "{stuck} browsers of a batch did not stop");
        let c = stats.counters();
        churn.attempts += c.attempts;
        churn.errors += c.errors;
        churn.reconnects += c.reconnects;
        let first_value = stats.first_event.snapshot();
        if first_value.count > 0 {
            churn.first_value_max_us = Some(churn.first_value_max_us.unwrap_or(0).max(first_value.max));
        }
        for (kind, count) in stats.error_kinds() {
            *churn.error_kinds.entry(kind).or_default() += count;
        }
    }
    churn.time = start.elapsed();
    eprintln!("churn done in {:.1} s; draining", churn.time.as_secs_f64());

    // The drain: back to the stable event alone.
    let drain = Instant::now();
    let drain_limit = EDGE_GRACE_MAX + args.linger + Duration::from_secs(30);
    let (mut streams_back, mut upstream_back, mut poller_back) = (None, None, None);
    while drain.elapsed() < drain_limit {
        let r = read().await?;
        let at = drain.elapsed();
        if r.streams_open <= before.streams_open {
            streams_back.get_or_insert(at);
        }
        if r.upstream.streams <= before.upstream.streams {
            upstream_back.get_or_insert(at);
        }
        if r.poller_events <= before.poller_events {
            poller_back.get_or_insert(at);
        }
        if streams_back.is_some() && upstream_back.is_some() && poller_back.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("drain over after {:.1} s; settling", drain.elapsed().as_secs_f64());
    let (requests0, settle) = (stack::media_requests(media.addr).await?, Instant::now());
    tokio::time::sleep(args.settle).await;
    let requests = stack::media_requests(media.addr).await?.saturating_sub(requests0);
    let after_requests_per_s = requests as f64 / settle.elapsed().as_secs_f64();
    let after = read().await?;
    let (cpu1, host1) = (cpu(&pids)?, procstat::host_busy_seconds()?);
    let observed = start.elapsed();
    let end_ms = sse_load::unix_micros() / 1000;
    stop_probes.cancel();
    let probes = probing.await.context("the probe task")?;

    // The stable browsers over the churn and the drain; updates served up
    // to the after-sample are given a second to arrive.
    let counters = stable_stats.counters().since(&stable0);
    let latency = stable_stats.latency.snapshot();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (updates, _) = stable_stats.updates_served(start_ms, end_ms);
    let max_gap_ms = u64::try_from(args.interval.as_millis() * 3 / 2).unwrap_or(u64::MAX);
    let stable_figures = Stable {
        ready_after,
        counters,
        latency,
        updates: updates.len(),
        reached_all: updates.iter().filter(|u| u.reached >= args.stable_browsers).count(),
        gaps: stable_stats.gaps([0], start_ms, end_ms, max_gap_ms),
        error_kinds: stable_stats.error_kinds(),
    };
    let stuck = stable.stop(Duration::from_secs(5)).await;

    // Everyone has left: no stream may stay open.
    let mut streams_open_at_end = None;
    let left = Instant::now();
    while left.elapsed() < Duration::from_secs(5) {
        let text = stack::scrape(edge.addr).await?;
        streams_open_at_end = stack::metric(&text, livepush::metrics::EDGE_STREAMS_OPEN);
        if streams_open_at_end == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let spent: Vec<f64> = cpu1.iter().zip(&cpu0).map(|(b, a)| b - a).collect();
    let others = (host1 - host0) - spent.iter().sum::<f64>();
    Ok(Outcome {
        cmds: [media.cmd.clone(), poller.cmd.clone(), edge.cmd.clone()],
        before,
        churn,
        streams_back,
        upstream_back,
        poller_back,
        drain_limit,
        after_requests_per_s,
        after,
        probes,
        stable: stable_figures,
        streams_open_at_end,
        stuck,
        cpu: [spent[0], spent[1], spent[2], spent[3], others.max(0.0)],
        observed,
    })
}

/// Probes `/readyz` every `every` until stopped, reading the edge and the
/// poller after each probe for the peaks.
async fn probe(
    edge: SocketAddr,
    pid: u32,
    poller: SocketAddr,
    every: Duration,
    stop: CancellationToken,
) -> Probes {
    let mut p = Probes::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return p,
            _ = tick.tick() => {}
        }
        let sent = Instant::now();
        p.sent += 1;
        match httpc::get(edge, "/readyz", Duration::from_secs(1)).await {
            Ok((200, _)) => p.ok += 1,
            Ok((status, _)) => *p.other.entry(status).or_default() += 1,
            Err(e) => {
                p.failed += 1;
                p.first_failure.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        p.slowest = p.slowest.max(sent.elapsed());
        match Reading::take(edge, pid, poller).await {
            Ok(r) => p.peak = p.peak.max(r),
            Err(_) => p.readings_failed += 1,
        }
    }
}

/// CPU seconds so far of each process.
fn cpu(pids: &[u32]) -> anyhow::Result<Vec<f64>> {
    pids.iter().map(|&p| procstat::sample(p).map(|s| s.cpu_seconds)).collect()
}

const MIB: f64 = 1024.0 * 1024.0;

fn report(args: &Args, o: &Outcome) -> Report {
    let mut r = Report::new(
        "churn",
        format!(
            "livepush-bench churn: {} browsers in batches of {} on distinct events, {} stable browsers, one edge",
            args.browsers, args.batch, args.stable_browsers
        ),
    );
    let secs = |d: Duration| Value::Float(d.as_secs_f64(), 2);
    let opt_secs = |d: Option<Duration>| d.map_or(Value::Missing, secs);
    let mib = |b: u64| Value::Float(b as f64 / MIB, 1);
    let [media_cmd, poller_cmd, edge_cmd] = &o.cmds;
    r.section("params", "parameters")
        .row("browsers", "churned browsers (one event each)", args.browsers, "")
        .row("batch", "browsers per batch", args.batch, "")
        .row("batches", "batches", o.churn.batches, "")
        .row("hold_s", "a batch stays after its last first value", secs(args.hold), "s")
        .row("stable_browsers", "stable event's browsers", args.stable_browsers, "")
        .row("interval_s", "poll interval (and media-sim change period)", secs(args.interval), "s")
        .row("linger_s", "poller --linger", secs(args.linger), "s")
        .row(
            "probe_every_ms",
            "/readyz probe every",
            Value::Float(args.probe_every.as_secs_f64() * 1e3, 0),
            "ms",
        )
        .row("settle_s", "settle before the before- and after-samples", secs(args.settle), "s")
        .row("connect_rate", "connect rate", args.load.connect_rate, "conn/s")
        .row("cores", "host cores (shared by all processes)", cores(), "")
        .row("media_cmd", "media-sim", media_cmd.as_str(), "")
        .row("poller_cmd", "poller", poller_cmd.as_str(), "")
        .row("edge_cmd", "edge", edge_cmd.as_str(), "");

    let c = &o.churn;
    let mut ready: Vec<Duration> = c.ready.iter().flatten().copied().collect();
    ready.sort_unstable();
    r.section("churn", "churn (connect a batch, wait for every first value, hold, reset)")
        .row("time_s", "churn took", secs(c.time), "s")
        .row("attempts", "connection attempts", c.attempts, "")
        .row("with_value", "browsers holding a value when reset", c.with_value, "")
        .row(
            "batches_incomplete",
            "batches not all served within their limit",
            c.ready.iter().filter(|r| r.is_none()).count(),
            "",
        )
        .row(
            "batch_ready_p50_s",
            "batch: all served after, median",
            opt_secs(ready.get(ready.len() / 2).copied()),
            "s",
        )
        .row("batch_ready_max_s", "batch: all served after, slowest", opt_secs(ready.last().copied()), "s")
        .row(
            "first_value_max_ms",
            "slowest browser's first value",
            c.first_value_max_us.map_or(Value::Missing, |us| Value::Float(us as f64 / 1000.0, 1)),
            "ms",
        )
        .row("errors", "errors", c.errors, "")
        .row("reconnects", "reconnects", c.reconnects, "");

    let s = &o.stable;
    r.section("stable", "stable event's browsers (churn start to after-sample)")
        .row("ready_s", "all had a first value after (at start)", opt_secs(s.ready_after), "s")
        .row("observed_s", "observed for", secs(o.observed), "s")
        .row("messages", "data events received", s.counters.messages, "")
        .row("updates", "updates served (stamped in the period)", s.updates, "")
        .row("reached_all", "updates that reached every stable browser", s.reached_all, "")
        .row(
            "missed",
            "changes missed (updates > 1.5 intervals apart)",
            if s.gaps.with_gap == 0 { "none".into() } else { Value::from(s.gaps.with_gap) },
            "",
        )
        .row(
            "longest_gap_s",
            "longest time between updates",
            Value::Float(s.gaps.longest_ms as f64 / 1e3, 2),
            "s",
        )
        .row("latency_p50_ms", "latency p50", opt_ms(&s.latency, 0.5), "ms")
        .row("latency_p99_ms", "latency p99", opt_ms(&s.latency, 0.99), "ms")
        .row("latency_max_ms", "latency max", opt_ms(&s.latency, 1.0), "ms")
        .row("stale", "'stale' events", s.counters.stale, "")
        .row("live", "'live' events", s.counters.live, "")
        .row("end", "'end' events", s.counters.end, "")
        .row("errors", "errors", s.counters.errors, "")
        .row("reconnects", "reconnects", s.counters.reconnects, "")
        .row("open", "connections open at the after-sample", s.counters.open, "");

    let p = &o.probes;
    let other: u64 = p.other.values().sum();
    r.section("readyz", "/readyz probes (churn start to after-sample)")
        .row("sent", "probes", p.sent, "")
        .row("ok", "answered 200", p.ok, "")
        .row("other", "answered another status", other, "")
        .row("failed", "no answer within 1 s", p.failed, "")
        .row("slowest_ms", "slowest answer", Value::Float(p.slowest.as_secs_f64() * 1e3, 1), "ms");

    let (b, pk, a) = (&o.before, &p.peak, &o.after);
    r.section("upstream", "upstream (edge and poller /metrics; peak: highest probe-time reading)")
        .row("channels_before", "edge HTTP/2 channels to the poller, before", b.upstream.channels, "")
        .row("channels_peak", "  peak", pk.upstream.channels, "")
        .row("channels_after", "  after", a.upstream.channels, "")
        .row("streams_before", "edge upstream Subscribe streams, before", b.upstream.streams, "")
        .row("streams_peak", "  peak", pk.upstream.streams, "")
        .row("streams_after", "  after", a.upstream.streams, "")
        .row(
            "subscribe_failures",
            "edge subscribe failures during the run",
            a.upstream.subscribe_failures.saturating_sub(b.upstream.subscribe_failures),
            "",
        )
        .row("poller_events_before", "poller events watched, before", b.poller_events, "")
        .row("poller_events_peak", "  peak", pk.poller_events, "")
        .row("poller_events_after", "  after the linger", a.poller_events, "")
        .row(
            "after_requests_per_s",
            "media-sim requests/s after the linger",
            Value::Float(o.after_requests_per_s, 2),
            "req/s",
        )
        .row(
            "expected_after_per_s",
            "  expected (the stable event alone)",
            Value::Float(1.0 / args.interval.as_secs_f64(), 2),
            "req/s",
        )
        .row(
            "streams_back_s",
            "after the churn: edge streams back to the stable ones",
            opt_secs(o.streams_back),
            "s",
        )
        .row("upstream_back_s", "  edge upstream back to the stable event", opt_secs(o.upstream_back), "s")
        .row("poller_back_s", "  poller back to the stable event", opt_secs(o.poller_back), "s")
        .row("drain_limit_s", "  (given up after)", secs(o.drain_limit), "s")
        .row("readings_failed", "probe-time readings that failed", p.readings_failed, "");

    r.section("edge", "edge process")
        .row("rss_before_mib", "RSS before", mib(b.rss_bytes), "MiB")
        .row("rss_peak_mib", "  peak (VmHWM)", mib(a.peak_rss_bytes), "MiB")
        .row("rss_after_mib", "  after", mib(a.rss_bytes), "MiB")
        .row("files_before", "open files before", b.open_files, "")
        .row("files_peak", "  peak (probe-time readings)", pk.open_files, "")
        .row("files_after", "  after", a.open_files, "")
        .row("streams_open_before", "livepush_edge_streams_open, before", b.streams_open, "")
        .row("streams_open_peak", "  peak (probe-time readings)", pk.streams_open, "")
        .row("streams_open_after", "  after", a.streams_open, "")
        .row("streams_open_end", "  once every browser left", o.streams_open_at_end, "");

    let span = o.observed.as_secs_f64().max(1e-3);
    let pct = |x: f64| Value::Float(100.0 * x / span, 1);
    r.section("cpu", "CPU, churn start to after-sample (% of one core)")
        .row("edge_pct", "edge", pct(o.cpu[0]), "%")
        .row("poller_pct", "poller", pct(o.cpu[1]), "%")
        .row("media_pct", "media-sim", pct(o.cpu[2]), "%")
        .row("load_pct", "load generator (this process)", pct(o.cpu[3]), "%")
        .row("others_pct", "other programs on the host (competing)", pct(o.cpu[4]), "%");

    let verdict =
        |met: bool, figure: String| Value::Text(format!("{} ({figure})", if met { "met" } else { "MISSED" }));
    let rss_limit = b.rss_bytes as f64 * 1.1 + 2.0 * MIB;
    let files_limit = b.open_files as f64 * 1.1;
    let not_ready = other + p.failed;
    r.section("targets", "targets from the issue")
        .row(
            "churn_served",
            "every churned browser got its value",
            verdict(
                c.with_value == u64::from(args.browsers) && c.errors == 0,
                format!("{} of {}, {} errors", c.with_value, args.browsers, c.errors),
            ),
            "",
        )
        .row(
            "rss_back",
            "edge RSS after <= before x 1.1 + 2 MiB",
            verdict(
                a.rss_bytes as f64 <= rss_limit,
                format!("{:.1} MiB, limit {:.1}", a.rss_bytes as f64 / MIB, rss_limit / MIB),
            ),
            "",
        )
        .row(
            "files_back",
            "edge open files after <= before x 1.1",
            verdict(a.open_files as f64 <= files_limit, format!("{}, limit {files_limit:.0}", a.open_files)),
            "",
        )
        .row(
            "streams_back",
            "streams_open back to 0 (beyond the stable browsers; then all)",
            verdict(
                a.streams_open == b.streams_open && o.streams_open_at_end == Some(0),
                format!(
                    "{} beyond; {}",
                    a.streams_open as i64 - b.streams_open as i64,
                    o.streams_open_at_end.map_or("n/a".into(), |n| n.to_string())
                ),
            ),
            "",
        )
        .row(
            "poller_stops",
            "poller stops polling the churned events after its linger",
            verdict(
                a.poller_events == b.poller_events,
                format!("{} event(s) watched, {:.2} req/s", a.poller_events, o.after_requests_per_s),
            ),
            "",
        )
        .row(
            "stable_stale",
            "stable browsers saw no 'stale'",
            verdict(s.counters.stale == 0, format!("{}", s.counters.stale)),
            "",
        )
        .row(
            "stable_every_change",
            "stable browsers got every change, no errors",
            verdict(
                s.gaps.with_gap == 0 && s.reached_all == s.updates && s.counters.errors == 0,
                format!("{} of {} updates to all, {} errors", s.reached_all, s.updates, s.counters.errors),
            ),
            "",
        )
        .row(
            "readyz",
            "/readyz always 200",
            verdict(not_ready == 0, format!("{not_ready} of {} not 200", p.sent)),
            "",
        );

    for (kind, count) in &c.error_kinds {
        r.note(format!("churned browsers: {count} x {kind}"));
    }
    for (kind, count) in &s.error_kinds {
        r.note(format!("stable browsers: {count} x {kind}"));
    }
    for (status, count) in &p.other {
        r.note(format!("/readyz answered {status} {count} time(s)"));
    }
    if let Some(first) = &p.first_failure {
        r.note(format!("first /readyz probe without an answer: {first}"));
    }
    if o.stuck > 0 {
        r.note(format!("{} stable browser task(s) did not stop within 5 s", o.stuck));
    }
    r.note(format!(
        "after = {} after the drain (streams, upstream and poller back to the stable event); \
         peak figures are the highest of the probe-time readings, RSS peak is VmHWM",
        humantime::format_duration(args.settle)
    ));
    r
}

fn opt_ms(s: &Snapshot, q: f64) -> Value {
    sse_load::ms(s, q).map_or(Value::Missing, |ms| Value::Float(ms, 2))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
