//! Scenario `failover`: a poller killed with SIGKILL under load; phases and
//! figures in BENCHMARKS.md, read from the browsers' traces after the run.

use crate::child::{self, Signal};
use crate::push::{LoadArgs, ShapeArgs, at_least_1s, event_id};
use crate::report::{Report, quantile_ms, quantiles_ms, sorted};
use crate::sse_load::{self, Counters, Load, Plan, Rec, Trace, unix_micros};
use crate::stack::{self, BinArgs, Proc, metric, scrape};
use crate::{procstat, wire::Id, wire::Kind};
use anyhow::{Context, ensure};
use livepush::metrics::*;
use serde::Serialize;
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};
use tokio::time::{Instant, sleep};

/// The pollers' `--linger`: the wait before the last window depends on it.
const LINGER: Duration = Duration::from_secs(10);
/// An id step larger than this is a new feed (a new owner).
const FEED_JUMP: u64 = 1_000_000;
/// Longest wait for the restarted poller to get its streams back.
const RETURN_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Poller processes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=8))]
    pollers: u32,
    /// The pollers' --interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Wait between "every browser has its first event" and the first window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Each window of counted polls (before the kill, after, after the return).
    #[arg(long, default_value = "10s", value_parser = at_least_1s)]
    window: Duration,
    /// Time browsers have after the kill to receive a value served after it.
    #[arg(long, default_value = "15s", value_parser = at_least_1s)]
    observe: Duration,
    /// Do not restart the killed poller.
    #[arg(long)]
    no_return: bool,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    bins: BinArgs,
}

/// Per-poller lists are in poller order (`None`: not running).
#[derive(Default, Serialize)]
struct Figures {
    victim: String,
    /// The victim's events_watched before; events whose browsers saw a new feed's id.
    victim_events: u64,
    moved_events: usize,
    edge_failovers: Vec<u64>,
    /// Other programs, % of one core: the window before, from the kill on.
    others_cpu_pct_before: f64,
    others_cpu_pct: f64,
    before: Window,
    /// Browsers of the events that moved, and the others (control).
    affected: Group,
    unaffected: Group,
    after: Window,
    r#return: Option<Return>,
    /// Every browser, whole run: counters; ids repeated, lower, passed over.
    counters: Counters,
    duplicates: u64,
    out_of_order: u64,
    skipped: u64,
}

#[derive(Default, Serialize)]
struct Window {
    events_per_poller: Vec<Option<u64>>,
    polls_per_event_per_interval: f64,
}

/// Resume: kill to a value served after it; gap: the data event before it to it.
#[derive(Default, Serialize)]
struct Group {
    browsers: usize,
    resumed: usize,
    resume_min_p50_p90_p99_max_ms: Vec<Option<f64>>,
    gap_p50_max_ms: Vec<Option<f64>>,
}

#[derive(Default, Serialize)]
struct Return {
    accepting_s: f64,
    edges_up_s: Vec<Option<f64>>,
    streams_back_s: Option<f64>,
    switched: usize,
    others_switched: usize,
    /// Restart to the returned poller's first value; the interim owner's last to it.
    switch_p50_ms: Option<f64>,
    switch_gap_p50_max_ms: Vec<Option<f64>>,
    /// Per browser, the longest wait for data after the restart.
    gap_max_affected_others_ms: [Option<f64>; 2],
    stale: usize,
    polls: Window,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let (events, edges) = (args.shape.events, args.shape.edges as usize);
    let n = events * args.shape.browsers;
    ensure!(n <= 18_000, "{n} connections: the harness holds one file per connection, at most 18,000");
    ensure!(args.interval >= Duration::from_millis(100), "--interval must be at least 100ms");
    // On an error the guards stop the processes. `--stamp`: every answer is new.
    let media = stack::media_sim(&args.bins, Duration::from_millis(250), true).await?;
    let linger = ["--linger", &humantime::format_duration(LINGER).to_string()];
    let start_poller = |addr| stack::poller(&args.bins, addr, media.addr, args.interval, &linger);
    let (mut pollers, mut es) = (Vec::new(), Vec::new());
    for _ in 0..args.pollers {
        pollers.push(Some(start_poller(stack::free_addr()?).await?));
    }
    let addrs: Vec<SocketAddr> = pollers.iter().flatten().map(|p| p.addr).collect();
    for _ in 0..edges {
        es.push(Some(stack::edge(&args.bins, &addrs).await?));
    }
    let edge_addrs: Vec<SocketAddr> = es.iter().flatten().map(|e| e.addr).collect();
    let mut f = Figures::default();

    // Steady state: browser i watches event i mod events on edge (i div events) mod edges.
    let mut plan = Plan::default();
    for i in 0..n {
        let path = format!("/live/{}/stream", event_id(i % events));
        plan.push(edge_addrs[(i / events) as usize % edges], &path, i % events);
    }
    let (n, runs) = (u64::from(n), args.settle + 3 * args.window + args.observe + RETURN_LIMIT + LINGER);
    let limit = args.load.ramp(n) + Duration::from_secs(30);
    let config = args.load.config(Instant::now() + limit + runs + Duration::from_secs(120));
    // Traced; reconnecting after the edge's `retry: 3000`, as a browser does.
    let config = sse_load::Config { trace: true, reconnect_delay: Duration::from_secs(3), ..config };
    let browsers = Load::start(plan, config);
    let (ready, c) = (browsers.wait_ready(n, limit).await, browsers.stats().counters());
    ensure!(ready.is_some(), "{} of {n} browsers ready after {limit:?}, {} errors", c.ready, c.errors);
    sleep(args.settle).await;
    let cpu0 = cpu(&media, &pollers, &es)?;
    f.before = window(&args, media.addr, &pollers).await?;
    f.others_cpu_pct_before =
        100.0 * cpu(&media, &pollers, &es)?.since(&cpu0).others() / args.window.as_secs_f64();

    // SIGKILL to the poller polling the most events.
    let victim = (0..pollers.len()).rev().max_by_key(|&i| f.before.events_per_poller[i]).unwrap_or(0);
    let addr = addrs[victim];
    f.victim = format!("poller {} of {} ({addr})", victim + 1, pollers.len());
    f.victim_events = f.before.events_per_poller[victim].unwrap_or(0);
    let streams = metrics(&pollers[victim..=victim], POLLER_SUBSCRIBERS).await?[0];
    let failovers0 = metrics(&es, EDGE_UPSTREAM_FAILOVERS).await?;
    let killed = pollers[victim].take().context("victim already stopped")?;
    let cpu0 = cpu(&media, &pollers, &es)?;
    child::signal(killed.pid(), Signal::KILL).with_context(|| format!("SIGKILL to {}", killed.pid()))?;
    let k_us = unix_micros();
    let _ = killed.child.stop().await; // reaps it (killed: not a success)
    sleep(args.observe).await;
    let (observed_us, spent) = (unix_micros(), cpu(&media, &pollers, &es)?.since(&cpu0));
    f.others_cpu_pct = 100.0 * spent.others() / ((observed_us - k_us) as f64 / 1e6);
    let failovers = metrics(&es, EDGE_UPSTREAM_FAILOVERS).await?.into_iter().zip(failovers0);
    f.edge_failovers = failovers.map(|(a, b)| a.unwrap_or(0).saturating_sub(b.unwrap_or(0))).collect();
    f.after = window(&args, media.addr, &pollers).await?;

    // The return: until its streams are back and the edges count it up, then the survivors' linger.
    let (t, r_us) = (Instant::now(), unix_micros());
    if !args.no_return {
        let mut ret = Return { edges_up_s: vec![None; edges], ..Return::default() };
        pollers[victim] = Some(start_poller(addr).await?);
        ret.accepting_s = t.elapsed().as_secs_f64();
        while t.elapsed() < RETURN_LIMIT && (ret.streams_back_s.is_none() || ret.edges_up_s.contains(&None)) {
            let up = metrics(&es, EDGE_POLLERS_UP).await?;
            let back = metrics(&pollers[victim..=victim], POLLER_SUBSCRIBERS).await?[0] >= streams;
            let at = Some(t.elapsed().as_secs_f64());
            for (s, up) in ret.edges_up_s.iter_mut().zip(up) {
                *s = s.or(at.filter(|_| up >= Some(u64::from(args.pollers))));
            }
            ret.streams_back_s = ret.streams_back_s.or(at.filter(|_| back));
            sleep(Duration::from_millis(50)).await;
        }
        sleep(LINGER + Duration::from_secs(2)).await;
        ret.polls = window(&args, media.addr, &pollers).await?;
        f.r#return = Some(ret);
    }

    let end_us = unix_micros();
    f.counters = browsers.stats().counters();
    let (traces, _) = browsers.stop_traced(Duration::from_secs(5)).await;
    let logs: Vec<(u32, Trace)> =
        traces.into_iter().enumerate().filter_map(|(i, t)| Some((i as u32 % events, t?))).collect();
    analyse(&logs, [k_us, observed_us, r_us, end_us], &mut f);
    let title = format!(
        "livepush-bench failover: {events} events x {} browsers over {edges} edges, {} pollers, one killed",
        args.shape.browsers, args.pollers
    );
    let r = Report::new("failover", title, &f)?;
    for p in es.into_iter().chain(pollers).flatten().chain([media]) {
        p.stop().await?;
    }
    Ok(r)
}

/// media-sim's requests over `--window`, and the events each poller watches.
async fn window(args: &Args, media: SocketAddr, pollers: &[Option<Proc>]) -> anyhow::Result<Window> {
    let (r0, t) = (stack::media_requests(media).await?, Instant::now());
    sleep(args.window).await;
    let requests = stack::media_requests(media).await?.saturating_sub(r0);
    let intervals = t.elapsed().as_secs_f64() / args.interval.as_secs_f64();
    let events_per_poller = metrics(pollers, POLLER_EVENTS_WATCHED).await?;
    let polls_per_event_per_interval = requests as f64 / f64::from(args.shape.events) / intervals;
    Ok(Window { events_per_poller, polls_per_event_per_interval })
}

/// Metric `name` of each process (`None`: not running, or no such metric).
async fn metrics(procs: &[Option<Proc>], name: &str) -> anyhow::Result<Vec<Option<u64>>> {
    let mut out = Vec::new();
    for p in procs {
        out.push(if let Some(p) = p { metric(&scrape(p.addr).await?, name) } else { None });
    }
    Ok(out)
}

/// CPU of the running processes and this one, and the host's busy time.
fn cpu(media: &Proc, pollers: &[Option<Proc>], edges: &[Option<Proc>]) -> anyhow::Result<procstat::Cpu> {
    let procs = pollers.iter().chain(edges).flatten().chain([media]);
    procstat::Cpu::read(&procs.map(Proc::pid).chain([std::process::id()]).collect::<Vec<_>>())
}

/// Whether `b` is from a newer feed than `a`: a feed's ids start at its start time in µs.
fn jump(a: &Rec, b: &Rec) -> bool {
    matches!((a.id, b.id), (Id::Value(a), Id::Value(b)) if b > a.saturating_add(FEED_JUMP))
}

/// The browsers' `(event, trace)` around the kill, their ids, and after the restart, into `f`.
fn analyse(logs: &[(u32, Trace)], [k_us, observed_us, r_us, end_us]: [u64; 4], f: &mut Figures) {
    // Per browser, its first value served from the kill on: µs to it, µs since the read before.
    let (mut seen, mut moved) = (Vec::new(), BTreeMap::new());
    for (e, t) in logs {
        let i = t.data.iter().position(|r| r.stamp.is_some_and(|s| s > 0 && s * 1000 >= k_us));
        let first = i.map(|i| (&t.data[i], i.checked_sub(1).map(|j| &t.data[j])));
        let first = first.filter(|(r, _)| r.at_us <= observed_us);
        if let Some((r, prev)) = first {
            *moved.entry(*e).or_insert(false) |= prev.is_some_and(|p| jump(p, r));
        }
        seen.push(first.map(|(r, prev)| (r.at_us.saturating_sub(k_us), prev.map(|p| r.at_us - p.at_us))));
        // Ids strictly increase, by one within a feed (a larger step passes values over).
        let mut last = None;
        for id in t.data.iter().filter_map(|r| if let Id::Value(id) = r.id { Some(id) } else { None }) {
            match last {
                Some(l) if id == l => f.duplicates += 1,
                Some(l) if id < l => f.out_of_order += 1,
                _ => {
                    let step = last.map_or(1, |l| id - l);
                    f.skipped += if (2..=FEED_JUMP).contains(&step) { step - 1 } else { 0 };
                    last = Some(id);
                }
            }
        }
    }
    let group = |affected| {
        let mine = || logs.iter().zip(&seen).filter(|((e, _), _)| moved.get(e) == Some(&affected));
        let resume = sorted(mine().filter_map(|(_, s)| s.map(|s| s.0)));
        let gap = sorted(mine().filter_map(|(_, s)| s.and_then(|s| s.1)));
        Group {
            browsers: mine().count(),
            resumed: resume.len(),
            resume_min_p50_p90_p99_max_ms: quantiles_ms(&resume, &[0.0, 0.5, 0.9, 0.99, 1.0]),
            gap_p50_max_ms: quantiles_ms(&gap, &[0.5, 1.0]),
        }
    };
    (f.affected, f.unaffected) = (group(true), group(false));
    f.moved_events = moved.values().filter(|m| **m).count();
    let Some(ret) = &mut f.r#return else { return };
    let (mut switches, mut gap_max) = (Vec::new(), [None, None]);
    for (e, t) in logs {
        let affected = moved.get(e) == Some(&true);
        match (t.data.windows(2).find(|w| w[1].at_us >= r_us && jump(&w[0], &w[1])), affected) {
            (Some(w), true) => switches.push((w[1].at_us - r_us, w[1].at_us - w[0].at_us)),
            (Some(_), false) => ret.others_switched += 1,
            (None, _) => {}
        }
        // The longest wait for data from the restart on (the end counts as a read).
        let last = t.data.iter().rev().find(|r| r.at_us < r_us).map_or(r_us, |r| r.at_us);
        let reads = t.data.iter().map(|r| r.at_us).filter(|at| (r_us..=end_us).contains(at));
        // Each read (and the end) minus the one before it.
        let gap = reads.chain([end_us]).scan(last, |prev, at| Some(at - std::mem::replace(prev, at))).max();
        gap_max[usize::from(!affected)] = gap_max[usize::from(!affected)].max(gap);
        ret.stale += t.named.iter().filter(|&&(at, k)| at >= r_us && k == Kind::Stale).count();
    }
    let (switch, gaps) = (sorted(switches.iter().map(|s| s.0)), sorted(switches.iter().map(|s| s.1)));
    (ret.switched, ret.switch_p50_ms) = (switch.len(), quantile_ms(&switch, 0.5));
    ret.switch_gap_p50_max_ms = quantiles_ms(&gaps, &[0.5, 1.0]);
    ret.gap_max_affected_others_ms = gap_max.map(|us| us.map(|us| us as f64 / 1000.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_browsers_by_the_feed_of_their_first_value_after_the_kill() {
        // Kill at 10 s: event 0 moves (a new feed's id); event 1 stays (a value
        // served before the kill is no resumption). Reads: (ms, id, served_at_ms).
        let logs = [
            (0, vec![(9_500, 1_000_005, 9_499), (10_050, 10_000_000, 10_040)]),
            (1, vec![(9_900, 2_000_009, 9_899), (10_001, 2_000_010, 9_999), (10_700, 2_000_011, 10_690)]),
        ]
        .map(|(event, reads)| {
            let rec =
                |&(ms, id, at): &(u64, _, _)| Rec { at_us: ms * 1000, id: Id::Value(id), stamp: Some(at) };
            let mut t = Trace::default();
            t.data = reads.iter().map(rec).collect();
            (event, t)
        });
        let mut f = Figures::default();
        analyse(&logs, [10_000_000, 20_000_000, 0, 0], &mut f);
        let (a, u) = (&f.affected, &f.unaffected);
        let max = |g: &Group| (g.resume_min_p50_p90_p99_max_ms[4], g.gap_p50_max_ms[1]);
        assert_eq!((f.moved_events, max(a)), (1, (Some(50.0), Some(550.0))));
        assert_eq!((u.browsers, max(u)), (1, (Some(700.0), Some(699.0))));
    }
}
