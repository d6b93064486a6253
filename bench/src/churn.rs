//! Scenario `churn`: browsers come and go in batches on one edge, each on an
//! event of its own, resetting (RST, as a vanished tab) once served, while
//! the browsers of one stable event keep watching and `/readyz` is probed.
//! Whether the edge and the poller return to their level before is what it
//! measures; BENCHMARKS.md describes the phases.

use crate::{
    httpc, procstat,
    push::{EdgeUpstream, LoadArgs, at_least_1s, event_id},
    report::{self, Report},
    sse_load::{self, Counters, Load, Plan},
    stack::{self, BinArgs, Proc},
};
use anyhow::Context;
use serde::Serialize;
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

#[derive(Debug, clap::Args, serde::Serialize)]
pub struct Args {
    /// Browsers that connect and reset, each on an event of its own.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    browsers: u32,

    /// Browsers per batch: they connect together and reset together.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,

    /// How long a batch stays after its last browser has its first value.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    #[serde(rename = "hold_s", serialize_with = "crate::report::secs")]
    hold: Duration,

    /// Browsers of the stable event, connected throughout.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=5_000))]
    stable_browsers: u32,

    /// Time between two `/readyz` probes (each also reads the edge's and
    /// the poller's `/metrics` and the edge's open files, for the peaks).
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    #[serde(rename = "probe_every_s", serialize_with = "crate::report::secs")]
    probe_every: Duration,

    /// The poller's --interval (media-sim's --change-every too).
    #[arg(long, default_value = "2s", value_parser = at_least_1s)]
    #[serde(rename = "interval_s", serialize_with = "crate::report::secs")]
    interval: Duration,

    /// The poller's --linger.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(rename = "linger_s", serialize_with = "crate::report::secs")]
    linger: Duration,

    /// Wait before the before-sample, and after the drain before the
    /// after-sample.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    #[serde(rename = "settle_s", serialize_with = "crate::report::secs")]
    settle: Duration,

    #[command(flatten)]
    load: LoadArgs,

    #[command(flatten)]
    bins: BinArgs,
}

/// One reading of the edge (process and `/metrics`) and the poller.
#[derive(Debug, Clone, Copy, Default, Serialize)]
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
    let report = match stack::edge(&args.bins, &[poller.addr]).await {
        Ok(edge) => {
            let report = measure(&args, &media, &poller, &edge).await;
            edge.stop().await?;
            report
        }
        Err(e) => Err(e),
    };
    poller.stop().await?;
    media.stop().await?;
    report
}

async fn measure(args: &Args, media: &Proc, poller: &Proc, edge: &Proc) -> anyhow::Result<Report> {
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
    let cpu0 = procstat::Cpu::read(&pids)?;
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
    let spent = procstat::Cpu::read(&pids)?.since(&cpu0);
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
    let gaps = stable_stats.gaps([0], start_ms, end_ms, max_gap_ms);
    let stable_figures = StableFigures {
        ready_s: ready_after.map(|d| d.as_secs_f64()),
        observed_s: observed.as_secs_f64(),
        updates: updates.len(),
        reached_all: updates.iter().filter(|u| u.reached >= args.stable_browsers).count(),
        missed: gaps.with_gap,
        longest_gap_s: gaps.longest_ms as f64 / 1e3,
        latency_p50_ms: sse_load::ms(&latency, 0.5),
        latency_p99_ms: sse_load::ms(&latency, 0.99),
        latency_max_ms: sse_load::ms(&latency, 1.0),
        counters,
    };
    let stable_errors = stable_stats.error_kinds();
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

    let title = format!(
        "livepush-bench churn: {} browsers in batches of {} on distinct events, {} stable browsers, one edge",
        args.browsers, args.batch, args.stable_browsers
    );
    let secs = |d: Duration| d.as_secs_f64();
    let (c, st, p) = (&churn, &stable_figures, &probes);
    let (b, a) = (&before, &after);
    let ready = report::sorted(c.ready.iter().flatten().copied());
    let other: u64 = p.other.values().sum();
    let span = observed.as_secs_f64().max(1e-3);
    let cpu = ["edge", "poller", "media-sim", "load", "others"];
    let cpu_s = [spent.of(0), spent.of(1), spent.of(2), spent.of(3), spent.others()];
    let targets = [
        ("churn_served", c.with_value == u64::from(args.browsers) && c.errors == 0),
        ("rss_back", a.rss_bytes as f64 <= b.rss_bytes as f64 * 1.1 + 2.0 * MIB),
        ("files_back", a.open_files as f64 <= b.open_files as f64 * 1.1),
        ("streams_back", a.streams_open == b.streams_open && streams_open_at_end == Some(0)),
        ("poller_stops", a.poller_events == b.poller_events),
        ("stable_no_stale", st.counters.stale == 0),
        ("stable_every_change", st.missed == 0 && st.reached_all == st.updates && st.counters.errors == 0),
        ("readyz_always_200", other + p.failed == 0),
    ];
    let figures = Figures {
        args,
        batches: c.batches,
        cores: report::cores(),
        media_cmd: &media.cmd,
        poller_cmd: &poller.cmd,
        edge_cmd: &edge.cmd,
        churn: ChurnFigures {
            time_s: secs(c.time),
            attempts: c.attempts,
            with_value: c.with_value,
            batches_incomplete: c.ready.iter().filter(|r| r.is_none()).count(),
            batch_ready_p50_s: ready.get(ready.len() / 2).map(|d| secs(*d)),
            batch_ready_max_s: ready.last().map(|d| secs(*d)),
            first_value_max_ms: c.first_value_max_us.map(|us| us as f64 / 1000.0),
            errors: c.errors,
            reconnects: c.reconnects,
        },
        stable: stable_figures,
        readyz: ReadyzFigures {
            sent: p.sent,
            ok: p.ok,
            other,
            failed: p.failed,
            slowest_ms: p.slowest.as_secs_f64() * 1e3,
            readings_failed: p.readings_failed,
            first_failure: p.first_failure.as_deref(),
        },
        before,
        peak: p.peak,
        after,
        subscribe_failures: a.upstream.subscribe_failures.saturating_sub(b.upstream.subscribe_failures),
        after_requests_per_s,
        expected_after_per_s: 1.0 / args.interval.as_secs_f64(),
        streams_back_s: streams_back.map(secs),
        upstream_back_s: upstream_back.map(secs),
        poller_back_s: poller_back.map(secs),
        drain_limit_s: secs(drain_limit),
        streams_open_end: streams_open_at_end,
        cpu_pct: cpu.iter().zip(cpu_s).map(|(&k, x)| (k, 100.0 * x / span)).collect(),
        targets: targets.into_iter().collect(),
    };
    let mut r = Report::new("churn", title, &figures)?;
    for (kind, count) in &c.error_kinds {
        r.note(format!("churned browsers: {count} x {kind}"));
    }
    for (kind, count) in &stable_errors {
        r.note(format!("stable browsers: {count} x {kind}"));
    }
    for (status, count) in &p.other {
        r.note(format!("/readyz answered {status} {count} time(s)"));
    }
    if stuck > 0 {
        r.note(format!("{stuck} stable browser task(s) did not stop within 5 s"));
    }
    r.note(format!(
        "after = {} after the drain (streams, upstream and poller back to the stable event)",
        humantime::format_duration(args.settle)
    ));
    Ok(r)
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

const MIB: f64 = 1024.0 * 1024.0;

/// The figures; readings are of the edge (process and `/metrics`) and the
/// poller: before the churn, peak (the highest probe-time reading; RSS peak
/// is VmHWM) and after the drain.
#[derive(Serialize)]
struct Figures<'a> {
    args: &'a Args,
    batches: u64,
    cores: usize,
    media_cmd: &'a str,
    poller_cmd: &'a str,
    edge_cmd: &'a str,
    churn: ChurnFigures,
    /// The stable event's browsers, churn start to after-sample.
    stable: StableFigures,
    /// `/readyz` probes, churn start to after-sample.
    readyz: ReadyzFigures<'a>,
    before: Reading,
    peak: Reading,
    after: Reading,
    /// Edge subscribe failures during the run.
    subscribe_failures: u64,
    /// media-sim requests/s after the linger; expected: the stable event alone.
    after_requests_per_s: f64,
    expected_after_per_s: f64,
    /// After the churn: until the edge's streams, its upstream and the
    /// poller were back to the stable event (given up after `drain_limit_s`).
    streams_back_s: Option<f64>,
    upstream_back_s: Option<f64>,
    poller_back_s: Option<f64>,
    drain_limit_s: f64,
    /// livepush_edge_streams_open once every browser left.
    streams_open_end: Option<u64>,
    /// CPU, churn start to after-sample, % of one core.
    cpu_pct: BTreeMap<&'static str, f64>,
    targets: BTreeMap<&'static str, bool>,
}

#[derive(Serialize)]
struct ChurnFigures {
    time_s: f64,
    attempts: u64,
    /// Browsers holding a value when reset.
    with_value: u64,
    batches_incomplete: usize,
    /// A batch: all served after, median and slowest.
    batch_ready_p50_s: Option<f64>,
    batch_ready_max_s: Option<f64>,
    first_value_max_ms: Option<f64>,
    errors: u64,
    reconnects: u64,
}

#[derive(Serialize)]
struct StableFigures {
    ready_s: Option<f64>,
    observed_s: f64,
    /// Updates served (stamped in the period) and those that reached every
    /// stable browser.
    updates: usize,
    reached_all: usize,
    /// Changes missed: updates more than 1.5 intervals apart.
    missed: u64,
    longest_gap_s: f64,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    latency_max_ms: Option<f64>,
    /// `open`: at the after-sample.
    counters: Counters,
}

#[derive(Serialize)]
struct ReadyzFigures<'a> {
    sent: u64,
    ok: u64,
    other: u64,
    /// No answer within 1 s.
    failed: u64,
    slowest_ms: f64,
    /// Probe-time readings that failed.
    readings_failed: u64,
    first_failure: Option<&'a str>,
}
