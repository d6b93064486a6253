//! Scenario `sse-load`: the SSE load generator alone, against edges that are
//! already running (started by hand).
//!
//! The other scenarios start and measure their own processes; this one exists
//! for diagnostics they cannot run: an edge under a heap profiler or `perf`,
//! an edge built with different settings, a quick check of a demo. It prints
//! what the browsers saw (connect times, delivery latency if media-sim runs
//! with `--stamp`, errors) and, with `--pid`, that process's RSS before and
//! after connecting and its CPU during the window. Loopback targets only.

use crate::{
    procstat,
    push::{LoadArgs, at_least_1s, event_id},
    report::Report,
    sse_load::{self, Counters, Load, Plan},
};
use anyhow::ensure;
use serde::Serialize;
use std::{net::SocketAddr, time::Duration};
use tokio::time::Instant;

/// Wait after every connection has its first event, before sampling RSS.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args, serde::Serialize)]
pub struct Args {
    /// Edge address (loopback); repeat it for several edges, which the
    /// connections alternate between.
    #[arg(long, required = true)]
    target: Vec<SocketAddr>,

    /// Events watched (ids ev-000000, ...), round-robin over connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    events: u32,

    /// SSE connections.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=18_000))]
    connections: u32,

    /// Measurement window after all connected.
    #[arg(long, default_value = "30s", value_parser = at_least_1s)]
    #[serde(rename = "duration_s", serialize_with = "crate::report::secs")]
    duration: Duration,

    /// A process to sample (the edge's pid): RSS and CPU.
    #[arg(long)]
    pid: Option<u32>,

    #[command(flatten)]
    load: LoadArgs,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    for t in &args.target {
        ensure!(t.ip().is_loopback(), "{t} is not a loopback address: load goes to 127.0.0.0/8 only");
    }
    let before = args.pid.map(procstat::sample).transpose()?;
    let n = u64::from(args.connections);
    let mut plan = Plan::default();
    for i in 0..args.connections {
        let target = args.target[i as usize % args.target.len()];
        let event = (i / args.target.len() as u32) % args.events;
        plan.push(target, &format!("/live/{}/stream", event_id(event)), event);
    }
    let ramp_limit = args.load.ramp(n) + Duration::from_secs(30);
    let deadline = Instant::now() + ramp_limit + SETTLE + args.duration + Duration::from_secs(30);
    let load = Load::start(plan, args.load.config(deadline));
    let ready_after = load.wait_ready(n, ramp_limit).await;
    tokio::time::sleep(SETTLE).await;
    let connected = args.pid.map(procstat::sample).transpose()?;
    let stats = load.stats().clone();
    stats.latency.reset();
    let c0 = stats.counters();
    let start = Instant::now();
    tokio::time::sleep(args.duration).await;
    let window = start.elapsed().as_secs_f64();
    let end = args.pid.map(procstat::sample).transpose()?;
    let c = stats.counters().since(&c0);
    let latency = stats.latency.snapshot();
    let connect = stats.connect.snapshot();
    load.stop(Duration::from_secs(5)).await;
    let totals = stats.counters();

    let targets: Vec<String> = args.target.iter().map(ToString::to_string).collect();
    let title =
        format!("livepush-bench sse-load: {} SSE connections to {}", args.connections, targets.join(", "));
    let ms = |q: f64| sse_load::ms(&latency, q);
    let process = match (before, connected, end) {
        (Some(before), Some(connected), Some(end)) => Some(Process {
            rss_before_kib: before.rss_bytes / 1024,
            rss_connected_kib: connected.rss_bytes / 1024,
            rss_per_conn_kib: connected.rss_bytes.saturating_sub(before.rss_bytes) as f64 / 1024.0 / n as f64,
            cpu_pct: 100.0 * (end.cpu_seconds - connected.cpu_seconds) / window,
        }),
        _ => None,
    };
    let figures = Figures {
        connections: args.connections,
        all_ready_s: ready_after.map(|d| d.as_secs_f64()),
        connect_p99_ms: sse_load::ms(&connect, 0.99),
        messages_per_s: c.messages as f64 / window,
        latency_p50_ms: ms(0.5),
        latency_p99_ms: ms(0.99),
        latency_max_ms: ms(1.0),
        totals,
        process,
    };
    let mut r = Report::new("sse-load", title, &figures)?;
    for (kind, count) in stats.error_kinds() {
        r.note(format!("{count} x {kind}"));
    }
    Ok(r)
}

#[derive(Serialize)]
struct Figures {
    connections: u32,
    /// Every browser had its first event after.
    all_ready_s: Option<f64>,
    connect_p99_ms: Option<f64>,
    /// In the window.
    messages_per_s: f64,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    latency_max_ms: Option<f64>,
    /// The whole run.
    totals: Counters,
    /// The process of `--pid`.
    process: Option<Process>,
}

#[derive(Serialize)]
struct Process {
    rss_before_kib: u64,
    rss_connected_kib: u64,
    rss_per_conn_kib: f64,
    /// In the window, % of one core.
    cpu_pct: f64,
}
