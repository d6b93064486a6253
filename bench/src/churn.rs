//! Scenario `churn` (phases and targets: BENCHMARKS.md): browsers come and go on one
//! edge while one event is watched; do the edge and the poller return to their level?

use crate::push::{EdgeUpstream, LoadArgs, at_least_1s, event_id};
use crate::sse_load::{self, Counters, Load, Plan, unix_micros};
use crate::stack::{self, BinArgs, metric, scrape};
use crate::{httpc, procstat, report::Report, report::sorted};
use anyhow::Context;
use livepush::metrics::{EDGE_STREAMS_OPEN, POLLER_EVENTS_WATCHED};
use serde::Serialize;
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};
use tokio::time::{Instant, MissedTickBehavior, sleep};
use tokio_util::sync::CancellationToken;

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
    /// Time between two `/readyz` probes (each followed by a reading for the peaks).
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    probe_every: Duration,
    /// The poller's --interval (media-sim's --change-every too).
    #[arg(long, default_value = "2s", value_parser = at_least_1s)]
    interval: Duration,
    /// The poller's --linger.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    linger: Duration,
    /// Wait before the before-sample, and after the drain before the after-sample.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    settle: Duration,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    bins: BinArgs,
}

/// Readings: before the churn, peak (highest at a probe; RSS: VmHWM), after the drain.
#[derive(Default, Serialize)]
struct Figures {
    batches: u32,
    churn_s: f64,
    /// Browsers holding a value when reset; a batch all served after (median, slowest).
    with_value: u64,
    batch_ready_p50_max_s: [Option<f64>; 2],
    first_value_max_ms: Option<f64>,
    churn_errors: u64,
    churn_reconnects: u64,
    /// The stable event's browsers and `/readyz`, churn start to after-sample.
    stable: Stable,
    readyz: Readyz,
    before: Reading,
    peak: Reading,
    after: Reading,
    /// Edge subscribe failures; media-sim requests/s after the linger, and for the stable event alone.
    subscribe_failures: u64,
    after_requests_per_s: f64,
    expected_after_per_s: f64,
    /// From the churn's end until the edge's streams, its upstream and the poller were back.
    back_s: BTreeMap<&'static str, f64>,
    streams_open_end: Option<u64>,
    /// Churn start to after-sample, % of one core.
    cpu_pct: BTreeMap<&'static str, f64>,
    targets: BTreeMap<&'static str, bool>,
}

/// Updates served and those that reached every browser; missed: gaps over 1.5 intervals.
#[derive(Default, Serialize)]
struct Stable {
    updates: usize,
    reached_all: usize,
    missed: u64,
    longest_gap_s: f64,
    latency_p50_p99_ms: Vec<Option<f64>>,
    counters: Counters,
}

#[derive(Default, Serialize)]
struct Readyz {
    sent: u64,
    ok: u64,
    slowest_ms: f64,
}

/// The edge's (process, `/metrics`) and the poller's figures: a map, so a peak is each one's maximum.
type Reading = BTreeMap<&'static str, u64>;

async fn take(edge: SocketAddr, pid: u32, poller: SocketAddr) -> anyhow::Result<Reading> {
    let (sample, text, poller) = (procstat::sample(pid)?, scrape(edge).await?, scrape(poller).await?);
    let get = |text, name| metric(text, name).with_context(|| format!("no {name} in /metrics"));
    let up = EdgeUpstream::parse(&text);
    Ok(BTreeMap::from([
        ("rss_bytes", sample.rss_bytes),
        ("peak_rss_bytes", sample.peak_rss_bytes),
        ("open_files", procstat::open_files(pid)?),
        ("streams_open", get(&text, EDGE_STREAMS_OPEN)?),
        ("upstream_channels", up.channels),
        ("upstream_streams", up.streams),
        ("subscribe_failures", up.subscribe_failures),
        ("poller_events", get(&poller, POLLER_EVENTS_WATCHED)?),
    ]))
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let media = stack::media_sim(&args.bins, args.interval, true).await?;
    let linger = ["--linger", &humantime::format_duration(args.linger).to_string()];
    let poller = stack::poller(&args.bins, stack::free_addr()?, media.addr, args.interval, &linger).await?;
    let edge = stack::edge(&args.bins, &[poller.addr]).await?;
    let mut f = Figures::default();
    (f.batches, f.expected_after_per_s) =
        (args.browsers.div_ceil(args.batch), 1.0 / args.interval.as_secs_f64());
    let read = || take(edge.addr, edge.pid(), poller.addr);
    let far = Instant::now() + Duration::from_secs(3_600);

    // The stable browsers, then the before-sample.
    let n_stable = u64::from(args.stable_browsers);
    let mut plan = Plan::default();
    (0..n_stable).for_each(|_| plan.push(edge.addr, "/live/stable/stream", 0));
    let stable = Load::start(plan, args.load.config(far));
    // Not all of them ready is no reason to stop: `stable.counters.ready` tells.
    stable.wait_ready(n_stable, args.load.ramp(n_stable) + Duration::from_secs(20)).await;
    sleep(args.settle).await;
    let b = read().await?;

    // Probes of /readyz, each followed by a reading for the peaks.
    let stop_probes = CancellationToken::new();
    let (stop, pid) = (stop_probes.clone(), edge.pid());
    let probing = tokio::spawn(async move {
        let (mut r, mut peak) = (Readyz::default(), Reading::new());
        let mut tick = tokio::time::interval(args.probe_every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        while tokio::select! { _ = stop.cancelled() => false, _ = tick.tick() => true } {
            let sent = Instant::now();
            r.sent += 1;
            let answer = httpc::get(edge.addr, "/readyz", Duration::from_secs(1)).await;
            r.ok += u64::from(matches!(answer, Ok((200, _))));
            r.slowest_ms = r.slowest_ms.max(sent.elapsed().as_secs_f64() * 1e3);
            for (k, x) in take(edge.addr, pid, poller.addr).await.into_iter().flatten() {
                peak.entry(k).and_modify(|p| *p = x.max(*p)).or_insert(x);
            }
        }
        (r, peak)
    });
    let pids = [edge.pid(), poller.pid(), media.pid(), std::process::id()];
    let (cpu0, start, start_ms) = (procstat::Cpu::read(&pids)?, Instant::now(), unix_micros() / 1000);
    let (stable_stats, stable0) = (stable.stats().clone(), stable.stats().counters());
    stable_stats.latency.reset();

    // The churn: batch after batch of fresh events, reset once served.
    let (mut ready, mut first_value_max) = (Vec::new(), None);
    for first in (0..args.browsers).step_by(args.batch as usize) {
        let n = args.batch.min(args.browsers - first);
        let mut plan = Plan::default();
        (first..first + n).for_each(|i| plan.push(edge.addr, &format!("/live/{}/stream", event_id(i)), i));
        let load = Load::start(plan, sse_load::Config { reset: true, ..args.load.config(far) });
        ready.extend(load.wait_ready(n.into(), args.load.ramp(n.into()) + Duration::from_secs(15)).await);
        sleep(args.hold).await;
        let stats = load.stats().clone();
        f.with_value += stats.counters().ready;
        let stuck = load.stop(Duration::from_secs(2)).await;
        anyhow::ensure!(stuck == 0, "{stuck} browsers of a batch did not stop");
        let (c, first_value) = (stats.counters(), stats.first_event.snapshot());
        (f.churn_errors, f.churn_reconnects) = (f.churn_errors + c.errors, f.churn_reconnects + c.reconnects);
        first_value_max = first_value_max.max((first_value.count > 0).then_some(first_value.max));
    }
    let ready = sorted(ready);
    f.churn_s = start.elapsed().as_secs_f64();
    f.batch_ready_p50_max_s =
        [ready.get(ready.len() / 2), ready.last()].map(|d| d.map(Duration::as_secs_f64));
    f.first_value_max_ms = first_value_max.map(|us| us as f64 / 1e3);

    // The drain to the stable event alone: the edge's grace (5 s x 1.5 at most), then the linger.
    let drain = Instant::now();
    while drain.elapsed() < Duration::from_millis(7_500) + args.linger + Duration::from_secs(30) {
        let (r, at) = (read().await?, drain.elapsed().as_secs_f64());
        for k in ["streams_open", "upstream_streams", "poller_events"].into_iter().filter(|&k| r[k] <= b[k]) {
            f.back_s.entry(k).or_insert(at);
        }
        if f.back_s.len() == 3 {
            break;
        }
        sleep(Duration::from_millis(250)).await;
    }
    let (requests0, settle) = (stack::media_requests(media.addr).await?, Instant::now());
    sleep(args.settle).await;
    let requests = stack::media_requests(media.addr).await?.saturating_sub(requests0);
    f.after_requests_per_s = requests as f64 / settle.elapsed().as_secs_f64();
    let a = read().await?;
    let (spent, span) = (procstat::Cpu::read(&pids)?.since(&cpu0), start.elapsed().as_secs_f64());
    let end_ms = unix_micros() / 1000;
    stop_probes.cancel();
    (f.readyz, f.peak) = probing.await.context("the probe task")?;

    // The stable browsers; updates served up to the after-sample get a second to arrive.
    let latency = stable_stats.latency.snapshot();
    let s = &mut f.stable;
    s.counters = stable_stats.counters().since(&stable0);
    sleep(Duration::from_secs(1)).await;
    let (updates, _) = stable_stats.updates_served(start_ms, end_ms);
    let gaps = stable_stats.gaps([0], start_ms, end_ms, args.interval.as_millis() as u64 * 3 / 2);
    s.updates = updates.len();
    s.reached_all = updates.iter().filter(|u| u.reached >= args.stable_browsers).count();
    (s.missed, s.longest_gap_s) = (gaps.with_gap, gaps.longest_ms as f64 / 1e3);
    s.latency_p50_p99_ms = sse_load::ms(&latency, &[0.5, 0.99]);
    stable.stop(Duration::from_secs(5)).await;

    // Everyone has left: no stream may stay open.
    let left = Instant::now();
    while left.elapsed() < Duration::from_secs(5) && f.streams_open_end != Some(0) {
        f.streams_open_end = metric(&scrape(edge.addr).await?, EDGE_STREAMS_OPEN);
        sleep(Duration::from_millis(100)).await;
    }

    let st = &f.stable;
    f.subscribe_failures = a["subscribe_failures"].saturating_sub(b["subscribe_failures"]);
    // In the order of `pids`, then the host beyond them.
    let cpu = ["edge", "poller", "media-sim", "load"].into_iter().enumerate().map(|(i, k)| (k, spent.of(i)));
    f.cpu_pct = cpu.chain([("others", spent.others())]).map(|(k, x)| (k, 100.0 * x / span)).collect();
    f.targets = BTreeMap::from([
        ("churn_served", f.with_value == u64::from(args.browsers) && f.churn_errors == 0),
        ("rss_back", a["rss_bytes"] as f64 <= b["rss_bytes"] as f64 * 1.1 + 2.0 * 1_048_576.0),
        ("files_back", a["open_files"] as f64 <= b["open_files"] as f64 * 1.1),
        ("streams_back", a["streams_open"] == b["streams_open"] && f.streams_open_end == Some(0)),
        ("poller_stops", a["poller_events"] == b["poller_events"]),
        ("stable_no_stale", st.counters.stale == 0),
        ("stable_every_change", st.missed == 0 && st.reached_all == st.updates && st.counters.errors == 0),
        ("readyz_always_200", f.readyz.ok == f.readyz.sent),
    ]);
    (f.before, f.after) = (b, a);
    let title = format!(
        "livepush-bench churn: {} browsers in batches of {} on distinct events, {} stable browsers, one edge",
        args.browsers, args.batch, args.stable_browsers
    );
    let report = Report::new("churn", title, &f)?;
    for p in [edge, poller, media] {
        p.stop().await?;
    }
    Ok(report)
}
