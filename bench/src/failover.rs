//! Scenario `failover`: a poller killed with SIGKILL under load (default
//! 1,000 events × 10 browsers over two edges and three pollers), and how long
//! the browsers of its events go without fresh data. BENCHMARKS.md describes
//! the phases.
//!
//! Time to resume is measured from media-sim's stamps, not from the poll
//! schedule: a browser's first data event with `served_at_ms` at or after the
//! kill is a value only a surviving poller can have fetched, so the figure
//! includes everything the system needs and nothing of the harness. Which
//! browsers were affected is observed, not computed: a feed's ids start at
//! its start time in µs, so a new owner's first id jumps by millions
//! ([`FEED_JUMP`]).

use crate::{
    child::{self, Signal},
    procstat,
    push::{LoadArgs, ShapeArgs, at_least_1s, event_id},
    report::{self, Report},
    sse_load::{self, Load, Plan, Trace, unix_micros},
    stack::{self, BinArgs, Proc, metric, scrape},
    wire::{Id, Kind},
};
use anyhow::{Context, bail, ensure};
use serde::Serialize;
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};
use tokio::time::Instant;

/// The pollers' `--linger`, passed explicitly: the wait before the last
/// window depends on it.
const LINGER: Duration = Duration::from_secs(10);
/// An id step larger than this is a new feed (a new owner): within a feed
/// ids count changes (about one per poll), across feeds they jump by the
/// microseconds between the feeds' starts.
const FEED_JUMP: u64 = 1_000_000;
/// Reconnect delay: what the edge's `retry: 3000` tells a browser.
const RECONNECT_DELAY: Duration = Duration::from_secs(3);
/// Violations described in the notes.
const SHOWN_VIOLATIONS: usize = 5;
#[derive(Debug, clap::Args, serde::Serialize)]
pub struct Args {
    #[command(flatten)]
    shape: ShapeArgs,

    /// Poller processes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=8))]
    pollers: u32,

    /// The pollers' --interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    #[serde(rename = "interval_s", serialize_with = "crate::report::secs")]
    interval: Duration,

    /// media-sim's --change-every (it runs with --stamp: every answer is a
    /// new value anyway).
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    #[serde(rename = "change_every_s", serialize_with = "crate::report::secs")]
    change_every: Duration,

    /// Wait between "every browser has its first event" and the first window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    #[serde(rename = "settle_s", serialize_with = "crate::report::secs")]
    settle: Duration,

    /// Length of each window in which upstream polls are counted (before the
    /// kill, after it, after the return).
    #[arg(long, default_value = "10s", value_parser = at_least_1s)]
    #[serde(rename = "window_s", serialize_with = "crate::report::secs")]
    window: Duration,

    /// How long browsers have after the kill to receive a value served after
    /// it; later ones count as not resumed.
    #[arg(long, default_value = "15s", value_parser = at_least_1s)]
    #[serde(rename = "observe_s", serialize_with = "crate::report::secs")]
    observe: Duration,

    /// Longest wait for the restarted poller to get its streams back.
    #[arg(long, default_value = "30s", value_parser = at_least_1s)]
    #[serde(rename = "return_limit_s", serialize_with = "crate::report::secs")]
    return_limit: Duration,

    /// Do not restart the killed poller.
    #[arg(long)]
    no_return: bool,

    #[command(flatten)]
    load: LoadArgs,

    #[command(flatten)]
    bins: BinArgs,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let connections = u64::from(args.shape.events) * u64::from(args.shape.browsers);
    ensure!(
        connections <= 18_000,
        "{connections} connections: the harness holds one file per connection, at most 18,000"
    );
    ensure!(args.interval >= Duration::from_millis(100), "--interval must be at least 100ms");
    let bins = &args.bins;
    let media = stack::media_sim(bins, args.change_every, true).await?;
    let addrs: Vec<SocketAddr> = (0..args.pollers)
        .map(|_| stack::free_port().map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p))))
        .collect::<anyhow::Result<_>>()?;
    let mut pollers: Vec<Option<Proc>> = Vec::new();
    for &addr in &addrs {
        pollers.push(Some(start_poller(bins, addr, media.addr, args.interval).await?));
    }
    let mut edges = Vec::new();
    for _ in 0..args.shape.edges {
        edges.push(stack::edge(bins, &addrs).await?);
    }
    let mut run = Run { args: &args, media, addrs, pollers, edges, browsers: None };
    let report = run.measure().await;
    // Stop everything whatever happened; an error of the run wins.
    let stopped = run.stop().await;
    let report = report?;
    stopped?;
    Ok(report)
}

/// The processes and browsers of a run.
struct Run<'a> {
    args: &'a Args,
    media: Proc,
    addrs: Vec<SocketAddr>,
    /// `None` while killed.
    pollers: Vec<Option<Proc>>,
    edges: Vec<Proc>,
    browsers: Option<Load>,
}

/// Readings of one poller's `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct Gauges {
    events: u64,
    streams: u64,
}

/// Readings of one edge's `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct EdgeGauges {
    failovers: u64,
    pollers_up: u64,
}

/// Upstream polls in a window.
#[derive(Debug, Clone)]
struct Polls {
    requests: u64,
    seconds: f64,
    /// Per poller (`None`: not running).
    gauges: Vec<Option<Gauges>>,
}

struct ReturnOutcome {
    r_us: u64,
    accepting_after: Duration,
    /// Until the returned poller had as many streams as before the kill.
    streams_back_after: Option<Duration>,
    /// Per edge, until it counted every poller up again.
    edges_up_after: Vec<Option<Duration>>,
    edges: Vec<EdgeGauges>,
    polls: Polls,
}

impl Run<'_> {
    async fn measure(&mut self) -> anyhow::Result<Report> {
        let args = self.args;
        let poller_cmd = self.pollers[0].as_ref().map(|p| p.cmd.clone()).unwrap_or_default();

        // 1. Steady state.
        let (plan, who) = self.plan();
        let n = who.len() as u64;
        let started = Instant::now();
        let limit = args.load.ramp(n) + Duration::from_secs(30);
        let runs = args.settle + 3 * args.window + args.observe + args.return_limit + LINGER;
        let config = sse_load::Config {
            trace: true,
            reconnect_delay: RECONNECT_DELAY,
            ..args.load.config(started + limit + runs + Duration::from_secs(120))
        };
        let browsers = self.browsers.insert(Load::start(plan, config));
        let Some(ready_after) = browsers.wait_ready(n, limit).await else {
            let c = browsers.stats().counters();
            bail!(
                "only {} of {n} browsers had their first event after {limit:?} ({} errors)",
                c.ready,
                c.errors
            );
        };
        eprintln!("failover: {n} browsers receiving after {:.1} s", started.elapsed().as_secs_f64());
        tokio::time::sleep(args.settle).await;
        let cpu0 = self.cpu_reading()?;
        let before = self.polls(args.window).await?;
        let cpu_before = self.cpu_reading()?.since(&cpu0);
        self.ensure_running()?;

        // 2. Kill the poller polling the most events.
        let victim = (0..before.gauges.len())
            .max_by_key(|&i| (before.gauges[i].map_or(0, |g| g.events), std::cmp::Reverse(i)))
            .context("no pollers")?;
        let edges_before = self.edge_gauges().await?;
        let killed = self.pollers[victim].take().context("victim already stopped")?;
        let cpu0 = self.cpu_reading()?;
        eprintln!("failover: SIGKILL to poller {} (pid {})", killed.addr, killed.pid());
        let t = Instant::now();
        child::signal(killed.pid(), Signal::KILL).with_context(|| format!("SIGKILL to {}", killed.pid()))?;
        let k_us = unix_micros();
        let kill_cmd = t.elapsed();
        let k_at = std::time::UNIX_EPOCH + Duration::from_micros(k_us);
        eprintln!("failover: SIGKILL sent at {}", humantime::format_rfc3339_micros(k_at));
        // Reap it (it is gone; a non-zero status is expected).
        let _ = killed.child.stop().await;
        tokio::time::sleep(args.observe).await;
        let observed_us = unix_micros();
        let cpu_kill = self.cpu_reading()?.since(&cpu0);
        let edges_after = self.edge_gauges().await?;
        self.ensure_running()?;

        // 4. Polls after the kill.
        let after = self.polls(args.window).await?;

        // 5. Return.
        let ret = if args.no_return { None } else { Some(self.bring_back(victim, &before).await?) };
        self.ensure_running()?;

        let end_us = unix_micros();
        let browsers = self.browsers.take().context("browsers gone")?;
        let stats = browsers.stats().clone();
        let (traces, stuck) = browsers.stop_traced(Duration::from_secs(5)).await;
        let logs: Vec<Log> = traces
            .into_iter()
            .zip(who)
            .filter_map(|(t, (event, edge))| Some(Log::of(event, edge, t?)))
            .collect();
        let totals = stats.counters();
        let error_kinds: BTreeMap<String, u64> = stats.error_kinds().into_iter().collect();
        let (f, moved) = failover(&logs, args.shape.events, k_us, observed_us);
        let g = Integrity {
            errors: totals.errors,
            reconnects: totals.reconnects,
            error_kinds,
            ..integrity(&logs, k_us)
        };
        let victim_before = before.gauges[victim].unwrap_or_default();
        let title = format!(
            "livepush-bench failover: {} events x {} browsers over {} edges, {} pollers, one killed",
            args.shape.events, args.shape.browsers, args.shape.edges, args.pollers
        );
        let polls = |p: &Polls| PollFigures {
            events_per_poller: p.gauges.iter().map(|g| g.map(|g| g.events)).collect(),
            streams_per_poller: p.gauges.iter().map(|g| g.map(|g| g.streams)).collect(),
            requests_per_s: p.requests as f64 / p.seconds,
            polls_per_event_per_interval: p.requests as f64
                / f64::from(args.shape.events)
                / (p.seconds / args.interval.as_secs_f64()),
        };
        let per_edge = |e: &[EdgeGauges], f: fn(&EdgeGauges) -> u64| e.iter().map(f).collect::<Vec<_>>();
        let observe_s = observed_us.saturating_sub(k_us) as f64 / 1e6;
        let mut notes = Vec::new();
        let ret = ret.as_ref().map(|ret| {
            let b = back(&logs, &moved, ret.r_us, end_us);
            for (what, list) in [
                ("not switched back", &b.affected_not_switched),
                ("switched unexpectedly", &b.others_switched),
            ] {
                if !list.is_empty() {
                    notes.push(format!("browsers {what}: {}", describe(list)));
                }
            }
            Return {
                accepting_s: ret.accepting_after.as_secs_f64(),
                edges_up_s: ret.edges_up_after.iter().map(|d| d.map(|d| d.as_secs_f64())).collect(),
                streams_back_s: ret.streams_back_after.map(|d| d.as_secs_f64()),
                switched: b.switched,
                not_switched: b.affected_not_switched.len(),
                others_switched: b.others_switched.len(),
                switch_p50_ms: report::quantile_ms(&b.switch_us, 0.5),
                switch_max_ms: report::quantile_ms(&b.switch_us, 1.0),
                switch_gap_p50_ms: report::quantile_ms(&b.switch_gap_us, 0.5),
                switch_gap_max_ms: report::quantile_ms(&b.switch_gap_us, 1.0),
                gap_affected_p99_ms: report::quantile_ms(&b.max_gap_affected_us, 0.99),
                gap_affected_max_ms: report::quantile_ms(&b.max_gap_affected_us, 1.0),
                gap_others_p99_ms: report::quantile_ms(&b.max_gap_others_us, 0.99),
                gap_others_max_ms: report::quantile_ms(&b.max_gap_others_us, 1.0),
                stale: b.stale,
                failovers: per_edge(&ret.edges, |g| g.failovers),
                pollers_up: per_edge(&ret.edges, |g| g.pollers_up),
                polls: polls(&ret.polls),
            }
        });
        let figures = Figures {
            args,
            connections: u64::from(args.shape.events) * u64::from(args.shape.browsers),
            cores: report::cores(),
            media_cmd: &self.media.cmd,
            poller_cmd: &poller_cmd,
            edge_cmd: &self.edges[0].cmd,
            ready_s: ready_after.as_secs_f64(),
            before: polls(&before),
            kill: Kill {
                victim: format!("poller {} of {} ({})", victim + 1, before.gauges.len(), self.addrs[victim]),
                victim_events: victim_before.events,
                moved_events: f.moved_events,
                split_events: f.split_events.len(),
                edge_failovers: edges_after
                    .iter()
                    .zip(&edges_before)
                    .map(|(a, b)| a.failovers.saturating_sub(b.failovers))
                    .collect(),
                pollers_up: per_edge(&edges_after, |g| g.pollers_up),
                kill_cmd_ms: kill_cmd.as_secs_f64() * 1000.0,
                others_cpu_pct_before: 100.0 * cpu_before.others() / before.seconds.max(1e-9),
                others_cpu_pct: 100.0 * cpu_kill.others() / observe_s.max(1e-9),
            },
            affected: GroupFigures::of(&f.affected),
            unaffected: GroupFigures::of(&f.unaffected),
            unclassified: f.unclassified.len(),
            after: polls(&after),
            ret,
            integrity: &g,
            stuck,
        };
        let mut r = Report::new("failover", title, &figures)?;
        for note in notes {
            r.note(note);
        }
        r.note(
            "time to resume = arrival of a browser's first data event whose served_at_ms is at or after the \
             kill instant, minus that instant (taken when the kill signal was sent); one clock, ms stamps"
                .into(),
        );
        r.note(format!(
            "affected = events whose first value after the kill carried an id from a new feed (a jump of more than \
             {FEED_JUMP}); the killed poller's events_watched gauge said {}",
            victim_before.events
        ));
        for v in &g.violations {
            r.note(format!("id violation: {v}"));
        }
        if !f.split_events.is_empty() {
            let ids: Vec<String> = f.split_events.iter().take(10).map(|&e| event_id(e)).collect();
            r.note(format!("events whose browsers disagreed: {}", ids.join(", ")));
        }
        if !f.unclassified.is_empty() {
            r.note(format!("browsers without any value after the kill: {}", describe(&f.unclassified)));
        }
        for (key, group) in [("affected", &f.affected), ("unaffected", &f.unaffected)] {
            if group.browsers > group.resume_us.len() as u64 {
                let missing: Vec<(u32, usize)> = logs
                    .iter()
                    .filter(|l| moved.get(l.event as usize).copied().flatten() == Some(key == "affected"))
                    .filter(|l| {
                        !l.data
                            .iter()
                            .any(|r| r.stamp_ms > 0 && r.stamp_ms * 1000 >= k_us && r.at_us <= observed_us)
                    })
                    .map(|l| (l.event, l.edge))
                    .collect();
                r.note(format!("{key} browsers not resumed: {}", describe(&missing)));
            }
        }
        Ok(r)
    }

    /// One browser per (event, copy), spread over the edges: the plan, and
    /// each browser's (event, edge).
    fn plan(&self) -> (Plan, Vec<(u32, usize)>) {
        let args = self.args;
        let mut plan = Plan::default();
        let mut who = Vec::new();
        for i in 0..args.shape.events * args.shape.browsers {
            let event = i % args.shape.events;
            let edge = (i / args.shape.events) as usize % self.edges.len();
            plan.push(self.edges[edge].addr, &format!("/live/{}/stream", event_id(event)), event);
            who.push((event, edge));
        }
        (plan, who)
    }

    /// The killed poller again on its address; waits until its streams are
    /// back, then until the survivors' linger has passed, then counts polls.
    async fn bring_back(&mut self, victim: usize, before: &Polls) -> anyhow::Result<ReturnOutcome> {
        let args = self.args;
        let addr = self.addrs[victim];
        let want = before.gauges[victim].map_or(0, |g| g.streams);
        eprintln!("failover: restarting poller {addr}");
        let t = Instant::now();
        let r_us = unix_micros();
        let proc = start_poller(&args.bins, addr, self.media.addr, args.interval).await?;
        let accepting_after = t.elapsed();
        self.pollers[victim] = Some(proc);
        let mut streams_back_after = None;
        let mut edges_up_after = vec![None; self.edges.len()];
        while t.elapsed() < args.return_limit {
            for (after, g) in edges_up_after.iter_mut().zip(self.edge_gauges().await?) {
                if after.is_none() && g.pollers_up >= u64::from(args.pollers) {
                    *after = Some(t.elapsed());
                }
            }
            if streams_back_after.is_none() && scrape_poller(addr).await?.streams >= want {
                streams_back_after = Some(t.elapsed());
            }
            if streams_back_after.is_some() && edges_up_after.iter().all(Option::is_some) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The previous owners keep polling moved events for --linger.
        tokio::time::sleep(LINGER + Duration::from_secs(2)).await;
        let edges = self.edge_gauges().await?;
        let polls = self.polls(args.window).await?;
        Ok(ReturnOutcome { r_us, accepting_after, streams_back_after, edges_up_after, edges, polls })
    }

    /// media-sim's requests and the pollers' gauges over `window`.
    async fn polls(&self, window: Duration) -> anyhow::Result<Polls> {
        let r0 = stack::media_requests(self.media.addr).await?;
        let t = Instant::now();
        tokio::time::sleep(window).await;
        let r1 = stack::media_requests(self.media.addr).await?;
        let seconds = t.elapsed().as_secs_f64();
        let mut gauges = Vec::new();
        for (i, p) in self.pollers.iter().enumerate() {
            gauges.push(match p {
                Some(_) => Some(scrape_poller(self.addrs[i]).await?),
                None => None,
            });
        }
        Ok(Polls { requests: r1.saturating_sub(r0), seconds, gauges })
    }

    async fn edge_gauges(&self) -> anyhow::Result<Vec<EdgeGauges>> {
        let mut out = Vec::new();
        for e in &self.edges {
            let text = scrape(e.addr).await?;
            out.push(EdgeGauges {
                failovers: metric(&text, livepush::metrics::EDGE_UPSTREAM_FAILOVERS).unwrap_or(0),
                pollers_up: metric(&text, livepush::metrics::EDGE_POLLERS_UP).unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// CPU of the running processes and this one, and the host's busy time.
    fn cpu_reading(&self) -> anyhow::Result<procstat::Cpu> {
        let mut pids = vec![self.media.pid(), std::process::id()];
        pids.extend(self.pollers.iter().flatten().map(Proc::pid));
        pids.extend(self.edges.iter().map(Proc::pid));
        procstat::Cpu::read(&pids)
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.media.child.ensure_running()?;
        for p in self.pollers.iter_mut().flatten() {
            p.child.ensure_running()?;
        }
        for e in &mut self.edges {
            e.child.ensure_running()?;
        }
        Ok(())
    }

    async fn stop(self) -> anyhow::Result<()> {
        if let Some(b) = self.browsers {
            b.stop(Duration::from_secs(5)).await;
        }
        let mut first_error = None;
        for e in self.edges {
            first_error = first_error.or(e.stop().await.err());
        }
        for p in self.pollers.into_iter().flatten() {
            first_error = first_error.or(p.stop().await.err());
        }
        first_error = first_error.or(self.media.stop().await.err());
        first_error.map_or(Ok(()), Err)
    }
}

/// A poller on `addr` polling media-sim every `interval`, lingering
/// [`LINGER`] after its last subscriber.
async fn start_poller(
    bins: &BinArgs,
    addr: SocketAddr,
    media: SocketAddr,
    interval: Duration,
) -> anyhow::Result<Proc> {
    let linger = humantime::format_duration(LINGER).to_string();
    stack::poller_at(bins, addr, media, interval, &["--linger", &linger]).await
}

async fn scrape_poller(addr: SocketAddr) -> anyhow::Result<Gauges> {
    use livepush::metrics::{POLLER_EVENTS_WATCHED, POLLER_SUBSCRIBERS};
    let text = scrape(addr).await?;
    let get = |name| metric(&text, name).with_context(|| format!("no {name} in {addr}'s /metrics"));
    Ok(Gauges { events: get(POLLER_EVENTS_WATCHED)?, streams: get(POLLER_SUBSCRIBERS)? })
}

// ---------------------------------------------------------------------------
// Browsers

/// One data event as a browser received it.
#[derive(Debug, Clone, Copy)]
struct Rec {
    /// Unix µs of the read.
    at_us: u64,
    /// The SSE id (0: none or unparsable).
    id: u64,
    /// media-sim's `served_at_ms` (0: none).
    stamp_ms: u64,
}

/// What one browser saw (its [`Trace`]), with its ids checked.
#[derive(Debug, Default)]
struct Log {
    event: u32,
    edge: usize,
    data: Vec<Rec>,
    /// Data events beyond the trace's cap.
    dropped: u64,
    named: Vec<(u64, Kind)>,
    last_id: Option<u64>,
    duplicates: u64,
    out_of_order: u64,
    /// Ids passed over within a feed (a step of more than one but no new
    /// feed): values this browser never got.
    skipped: u64,
    /// (previous id, id, Unix µs) of the first violation.
    first_violation: Option<(u64, u64, u64)>,
    no_id: u64,
    bad_id: u64,
    unstamped: u64,
}

impl Log {
    fn of(event: u32, edge: usize, trace: Trace) -> Self {
        let mut log = Self { event, edge, dropped: trace.dropped, named: trace.named, ..Self::default() };
        for r in trace.data {
            let id = match r.id {
                Id::Missing => {
                    log.no_id += 1;
                    0
                }
                Id::Bad => {
                    log.bad_id += 1;
                    0
                }
                Id::Value(id) => log.check(id, r.at_us),
            };
            log.unstamped += u64::from(r.stamp.is_none());
            log.data.push(Rec { at_us: r.at_us, id, stamp_ms: r.stamp.unwrap_or(0) });
        }
        log
    }

    /// Ids must strictly increase, by one within a feed.
    fn check(&mut self, id: u64, at_us: u64) -> u64 {
        if let Some(last) = self.last_id.filter(|&last| id <= last) {
            if id == last {
                self.duplicates += 1;
            } else {
                self.out_of_order += 1;
            }
            self.first_violation.get_or_insert((last, id, at_us));
        } else {
            let step = self.last_id.map_or(1, |last| id - last);
            if (2..=FEED_JUMP).contains(&step) {
                self.skipped += step - 1;
            }
            self.last_id = Some(id);
        }
        id
    }
}

// ---------------------------------------------------------------------------
// Analysis

/// Browsers of one group around the kill.
#[derive(Debug, Default)]
struct Group {
    browsers: u64,
    /// µs from the kill to the first value served after it, sorted.
    resume_us: Vec<u64>,
    /// µs between the data event read before that one and it.
    gap_us: Vec<u64>,
    stale: u64,
    live: u64,
}

impl Group {
    fn sort(&mut self) {
        self.resume_us.sort_unstable();
        self.gap_us.sort_unstable();
    }
}

#[derive(Debug, Default)]
struct Failover {
    affected: Group,
    unaffected: Group,
    /// Events whose browsers' first value after the kill came from a new feed.
    moved_events: u64,
    /// Events some of whose browsers saw a new feed and some not.
    split_events: Vec<u32>,
    /// Browsers with no value served after the kill, of events none of whose
    /// browsers had one either: (event, edge).
    unclassified: Vec<(u32, usize)>,
}

#[derive(Debug, Default)]
struct Back {
    /// Affected browsers that switched to the returned poller.
    switched: u64,
    affected_not_switched: Vec<(u32, usize)>,
    /// Browsers of other events that saw a new feed after the restart.
    others_switched: Vec<(u32, usize)>,
    /// µs from the restart to each switched browser's first value from the
    /// returned poller, sorted.
    switch_us: Vec<u64>,
    /// µs between the last value from the interim owner and the first from
    /// the returned poller, per switched browser, sorted.
    switch_gap_us: Vec<u64>,
    /// Per browser, the largest gap between two data events read after the
    /// restart (the end of the run counts as one), sorted: browsers of the
    /// events that moved back, and the others.
    max_gap_affected_us: Vec<u64>,
    max_gap_others_us: Vec<u64>,
    stale: u64,
}

#[derive(Debug, Default, Serialize)]
struct Integrity {
    data_events: u64,
    dropped: u64,
    duplicates: u64,
    out_of_order: u64,
    skipped: u64,
    browsers_skipping: u64,
    browsers_with_violations: u64,
    #[serde(skip)]
    violations: Vec<String>,
    no_id: u64,
    bad_id: u64,
    unstamped: u64,
    errors: u64,
    reconnects: u64,
    error_kinds: BTreeMap<String, u64>,
    stale: u64,
    end: u64,
}

/// What each browser's log says about the kill at `k_us`, observed until
/// `observed_us`: the first value served at or after the kill, and whether
/// it came from a new feed.
fn failover(logs: &[Log], events: u32, k_us: u64, observed_us: u64) -> (Failover, Vec<Option<bool>>) {
    struct Seen {
        resume_us: u64,
        gap_us: Option<u64>,
        moved: bool,
    }
    let seen: Vec<Option<Seen>> = logs
        .iter()
        .map(|log| {
            let i = log.data.iter().position(|r| r.stamp_ms > 0 && r.stamp_ms * 1000 >= k_us)?;
            let rec = log.data[i];
            if rec.at_us > observed_us {
                return None;
            }
            let prev = i.checked_sub(1).map(|j| log.data[j]);
            let moved = prev.is_some_and(|p| p.id != 0 && rec.id > p.id.saturating_add(FEED_JUMP));
            Some(Seen {
                resume_us: rec.at_us.saturating_sub(k_us),
                gap_us: prev.map(|p| rec.at_us - p.at_us),
                moved,
            })
        })
        .collect();
    // Per event: moved if any browser saw a new feed; split if they disagree.
    let mut votes = vec![(0u32, 0u32); events as usize];
    for (log, s) in logs.iter().zip(&seen) {
        if let (Some(s), Some(v)) = (s, votes.get_mut(log.event as usize)) {
            if s.moved { v.0 += 1 } else { v.1 += 1 }
        }
    }
    let moved: Vec<Option<bool>> = votes.iter().map(|&(yes, no)| (yes + no > 0).then_some(yes > 0)).collect();
    let mut f = Failover {
        moved_events: moved.iter().filter(|m| **m == Some(true)).count() as u64,
        split_events: (0..events).filter(|&e| votes[e as usize].0 > 0 && votes[e as usize].1 > 0).collect(),
        ..Failover::default()
    };
    for (log, s) in logs.iter().zip(&seen) {
        let group = match moved.get(log.event as usize).copied().flatten() {
            Some(true) => &mut f.affected,
            Some(false) => &mut f.unaffected,
            None => {
                f.unclassified.push((log.event, log.edge));
                continue;
            }
        };
        group.browsers += 1;
        if let Some(s) = s {
            group.resume_us.push(s.resume_us);
            group.gap_us.extend(s.gap_us);
        }
        for &(at, kind) in &log.named {
            if (k_us..=observed_us).contains(&at) {
                match kind {
                    Kind::Stale => group.stale += 1,
                    Kind::Live => group.live += 1,
                    _ => {}
                }
            }
        }
    }
    f.affected.sort();
    f.unaffected.sort();
    (f, moved)
}

/// What the browsers saw after the restart at `r_us`, until `end_us`.
fn back(logs: &[Log], moved: &[Option<bool>], r_us: u64, end_us: u64) -> Back {
    let mut b = Back::default();
    for log in logs {
        let affected = moved.get(log.event as usize).copied().flatten() == Some(true);
        let switch = log
            .data
            .windows(2)
            .find(|w| w[1].at_us >= r_us && w[0].id != 0 && w[1].id > w[0].id.saturating_add(FEED_JUMP))
            .map(|w| (w[1].at_us - r_us, w[1].at_us - w[0].at_us));
        match (switch, affected) {
            (Some((us, gap)), true) => {
                b.switched += 1;
                b.switch_us.push(us);
                b.switch_gap_us.push(gap);
            }
            (None, true) => b.affected_not_switched.push((log.event, log.edge)),
            (Some(_), false) => b.others_switched.push((log.event, log.edge)),
            (None, false) => {}
        }
        let mut last = log.data.iter().rev().find(|r| r.at_us < r_us).map_or(r_us, |r| r.at_us);
        let mut max_gap = 0;
        for r in log.data.iter().filter(|r| (r_us..=end_us).contains(&r.at_us)) {
            max_gap = max_gap.max(r.at_us - last);
            last = r.at_us;
        }
        let max_gap = max_gap.max(end_us.saturating_sub(last));
        if affected {
            b.max_gap_affected_us.push(max_gap)
        } else {
            b.max_gap_others_us.push(max_gap)
        }
        b.stale += log.named.iter().filter(|&&(at, k)| at >= r_us && k == Kind::Stale).count() as u64;
    }
    for v in [&mut b.switch_us, &mut b.switch_gap_us, &mut b.max_gap_affected_us, &mut b.max_gap_others_us] {
        v.sort_unstable();
    }
    b
}

fn integrity(logs: &[Log], k_us: u64) -> Integrity {
    let mut g = Integrity::default();
    for log in logs {
        g.data_events += log.data.len() as u64 + log.dropped;
        g.dropped += log.dropped;
        g.duplicates += log.duplicates;
        g.out_of_order += log.out_of_order;
        g.skipped += log.skipped;
        g.browsers_skipping += u64::from(log.skipped > 0);
        if let Some((prev, id, at)) = log.first_violation {
            g.browsers_with_violations += 1;
            if g.violations.len() < SHOWN_VIOLATIONS {
                let rel = at as f64 / 1e6 - k_us as f64 / 1e6;
                g.violations.push(format!(
                    "{} on edge {}: id {id} after {prev}, {rel:+.3} s from the kill",
                    event_id(log.event),
                    log.edge
                ));
            }
        }
        g.no_id += log.no_id;
        g.bad_id += log.bad_id;
        g.unstamped += log.unstamped;
        g.stale += log.named.iter().filter(|(_, k)| *k == Kind::Stale).count() as u64;
        g.end += log.named.iter().filter(|(_, k)| *k == Kind::End).count() as u64;
    }
    g
}

// ---------------------------------------------------------------------------
// Report

/// The figures. Per-poller lists are in poller order (`None`: not running);
/// per-edge lists in edge order.
#[derive(Serialize)]
struct Figures<'a> {
    args: &'a Args,
    connections: u64,
    cores: usize,
    media_cmd: &'a str,
    poller_cmd: &'a str,
    edge_cmd: &'a str,
    /// Before the kill: every browser had its first event after.
    ready_s: f64,
    before: PollFigures,
    /// The kill: SIGKILL to the poller polling the most events.
    kill: Kill,
    /// Browsers of the killed poller's events: time to a value served after
    /// the kill; the others (control: their next regular poll).
    affected: GroupFigures,
    unaffected: GroupFigures,
    /// Browsers of events none of whose browsers resumed.
    unclassified: usize,
    /// After the kill: the window starts at the end of the observation.
    after: PollFigures,
    /// The killed poller's return on the same address.
    #[serde(rename = "return")]
    ret: Option<Return>,
    /// Every browser, whole run.
    integrity: &'a Integrity,
    /// Browser tasks not stopped within 5 s.
    stuck: usize,
}

#[derive(Serialize)]
struct PollFigures {
    events_per_poller: Vec<Option<u64>>,
    streams_per_poller: Vec<Option<u64>>,
    requests_per_s: f64,
    polls_per_event_per_interval: f64,
}

#[derive(Serialize)]
struct Kill {
    victim: String,
    /// Its events_watched before.
    victim_events: u64,
    /// Events whose browsers saw a new feed's id, and those whose browsers
    /// disagreed on that.
    moved_events: u64,
    split_events: usize,
    /// Streams moved per edge (the edges' failover counter) and pollers up
    /// per edge after the kill.
    edge_failovers: Vec<u64>,
    pollers_up: Vec<u64>,
    kill_cmd_ms: f64,
    /// Other programs on the host, % of one core: in the window before, from
    /// the kill on.
    others_cpu_pct_before: f64,
    others_cpu_pct: f64,
}

#[derive(Serialize)]
struct GroupFigures {
    browsers: u64,
    resumed: u64,
    resume_min_ms: Option<f64>,
    resume_p50_ms: Option<f64>,
    resume_p90_ms: Option<f64>,
    resume_p99_ms: Option<f64>,
    resume_max_ms: Option<f64>,
    /// Previous data event to the resuming one.
    gap_p50_ms: Option<f64>,
    gap_max_ms: Option<f64>,
    /// In the observation.
    stale: u64,
    live: u64,
}

impl GroupFigures {
    fn of(g: &Group) -> Self {
        let resume = |q| report::quantile_ms(&g.resume_us, q);
        Self {
            browsers: g.browsers,
            resumed: g.resume_us.len() as u64,
            resume_min_ms: resume(0.0),
            resume_p50_ms: resume(0.5),
            resume_p90_ms: resume(0.9),
            resume_p99_ms: resume(0.99),
            resume_max_ms: resume(1.0),
            gap_p50_ms: report::quantile_ms(&g.gap_us, 0.5),
            gap_max_ms: report::quantile_ms(&g.gap_us, 1.0),
            stale: g.stale,
            live: g.live,
        }
    }
}

#[derive(Serialize)]
struct Return {
    accepting_s: f64,
    /// Per edge, until it counted the poller up again.
    edges_up_s: Vec<Option<f64>>,
    /// Until its Subscribe streams were back to the count before the kill.
    streams_back_s: Option<f64>,
    /// Affected browsers switched back and not; others switched (expected 0).
    switched: u64,
    not_switched: usize,
    others_switched: usize,
    /// Restart to a browser's first value from it.
    switch_p50_ms: Option<f64>,
    switch_max_ms: Option<f64>,
    /// The interim owner's last value to its first.
    switch_gap_p50_ms: Option<f64>,
    switch_gap_max_ms: Option<f64>,
    /// Per browser, the largest gap after the restart: switched, others.
    gap_affected_p99_ms: Option<f64>,
    gap_affected_max_ms: Option<f64>,
    gap_others_p99_ms: Option<f64>,
    gap_others_max_ms: Option<f64>,
    stale: u64,
    /// Streams moved per edge (whole run) and pollers up per edge.
    failovers: Vec<u64>,
    pollers_up: Vec<u64>,
    /// After the linger.
    polls: PollFigures,
}

/// "ev-000001 on edge 0, ..." for at most ten browsers, and how many more.
fn describe(list: &[(u32, usize)]) -> String {
    let mut shown: Vec<String> =
        list.iter().take(10).map(|&(e, edge)| format!("{} on edge {edge}", event_id(e))).collect();
    if list.len() > 10 {
        shown.push(format!("and {} more", list.len() - 10));
    }
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_strictly_increase() {
        let mut log = Log::default();
        for (i, id) in [5u64, 6, 6, 4, 7].into_iter().enumerate() {
            log.check(id, i as u64);
        }
        assert_eq!((log.duplicates, log.out_of_order, log.skipped, log.last_id), (1, 1, 0, Some(7)));
        // A step of three within a feed passes over two values; a new
        // feed's jump passes over none.
        for (i, id) in [10u64, 10 + FEED_JUMP + 5].into_iter().enumerate() {
            log.check(id, 9 + i as u64);
        }
        assert_eq!(log.skipped, 2);
        assert_eq!(log.first_violation, Some((6, 6, 2)));
    }

    fn log(event: u32, recs: &[(u64, u64, u64)]) -> Log {
        let data = recs.iter().map(|&(at_us, id, stamp_ms)| Rec { at_us, id, stamp_ms }).collect();
        Log { event, data, ..Log::default() }
    }

    #[test]
    fn classifies_browsers_by_the_feed_of_their_first_value_after_the_kill() {
        // Kill at t = 10 s. Event 0 moves (id jumps to a new feed base),
        // event 1 stays (id + 1), event 2's browser never gets a fresh value.
        let k = 10_000_000;
        let logs = [
            log(0, &[(9_500_000, 1_000_005, 9_499), (10_050_000, 10_000_000, 10_040)]),
            log(0, &[(9_500_000, 1_000_005, 9_499), (10_060_000, 10_000_000, 10_040)]),
            // A value served before the kill but read after it is not a resumption.
            log(
                1,
                &[
                    (9_900_000, 2_000_009, 9_899),
                    (10_001_000, 2_000_010, 9_999),
                    (10_700_000, 2_000_011, 10_690),
                ],
            ),
            log(2, &[(9_000_000, 3_000_001, 8_999)]),
        ];
        let (f, moved) = failover(&logs, 3, k, 20_000_000);
        assert_eq!(moved, vec![Some(true), Some(false), None]);
        assert_eq!((f.moved_events, f.split_events.len(), f.unclassified), (1, 0, vec![(2, 0)]));
        assert_eq!((f.affected.browsers, f.affected.resume_us.clone()), (2, vec![50_000, 60_000]));
        assert_eq!(f.affected.gap_us, vec![550_000, 560_000]);
        assert_eq!((f.unaffected.browsers, f.unaffected.resume_us.clone()), (1, vec![700_000]));
        // The value served before the kill and read after it ends the gap.
        assert_eq!(f.unaffected.gap_us, vec![699_000]);
        assert_eq!(report::quantile_ms(&f.affected.resume_us, 0.5), Some(50.0));
        assert_eq!(report::quantile_ms(&f.affected.resume_us, 1.0), Some(60.0));

        // Restart at 30 s: event 0's browser switches at 33 s, the other
        // not; event 1's stays. The run ends at 40 s.
        let later = [
            log(
                0,
                &[
                    (29_000_000, 10_000_020, 28_999),
                    (33_000_000, 30_500_000, 32_999),
                    (34_000_000, 30_500_001, 33_999),
                ],
            ),
            log(0, &[(29_000_000, 10_000_020, 28_999), (39_000_000, 10_000_030, 38_999)]),
            log(1, &[(29_500_000, 2_000_030, 29_499), (30_500_000, 2_000_031, 30_499)]),
        ];
        let b = back(&later, &moved, 30_000_000, 40_000_000);
        assert_eq!((b.switched, b.switch_us.clone()), (1, vec![3_000_000]));
        assert_eq!((b.affected_not_switched, b.others_switched.len()), (vec![(0, 0)], 0));
        // Gaps: 4 s (29 -> 33) then 6 s to the end; 10 s; 9.5 s to the end.
        assert_eq!(b.switch_gap_us, vec![4_000_000]);
        assert_eq!(b.max_gap_affected_us, vec![6_000_000, 10_000_000]);
        assert_eq!(b.max_gap_others_us, vec![9_500_000]);
    }
}
