//! Scenario `sse-load`: the SSE load generator alone against edges started
//! by hand (BENCHMARKS.md, "Scenario `sse-load`").

use crate::{
    procstat,
    push::{LoadArgs, at_least_1s, event_id},
    report::Report,
    sse_load::{self, Counters, Load, Plan},
};
use serde::Serialize;
use std::{net::SocketAddr, time::Duration};
use tokio::time::Instant;

/// Wait after every connection has its first event, before sampling RSS.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args, Serialize)]
pub struct Args {
    /// Edge address (loopback); repeated, the connections alternate.
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

/// Latencies and rates in the window; `totals` of the whole run.
#[derive(Serialize)]
struct Figures {
    connections: u32,
    /// Every browser had its first event after.
    all_ready_s: Option<f64>,
    connect_p99_ms: Option<f64>,
    messages_per_s: f64,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    latency_max_ms: Option<f64>,
    totals: Counters,
    process: Option<Process>,
}

/// The process of `--pid`; CPU in the window, % of one core.
#[derive(Serialize)]
struct Process {
    rss_before_kib: u64,
    rss_connected_kib: u64,
    rss_per_conn_kib: f64,
    cpu_pct: f64,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    if let Some(t) = args.target.iter().find(|t| !t.ip().is_loopback()) {
        anyhow::bail!("{t} is not a loopback address: load goes to 127.0.0.0/8 only");
    }
    let sample = || args.pid.map(procstat::sample).transpose();
    let (before, n, mut plan) = (sample()?, u64::from(args.connections), Plan::default());
    for i in 0..args.connections {
        let (target, event) = (i as usize % args.target.len(), (i / args.target.len() as u32) % args.events);
        plan.push(args.target[target], &format!("/live/{}/stream", event_id(event)), event);
    }
    let ramp_limit = args.load.ramp(n) + Duration::from_secs(30);
    let deadline = Instant::now() + ramp_limit + SETTLE + args.duration + Duration::from_secs(30);
    let load = Load::start(plan, args.load.config(deadline));
    let ready_after = load.wait_ready(n, ramp_limit).await;
    tokio::time::sleep(SETTLE).await;
    let (connected, stats) = (sample()?, load.stats().clone());
    stats.latency.reset();
    let (c0, start) = (stats.counters(), Instant::now());
    tokio::time::sleep(args.duration).await;
    let (window, end) = (start.elapsed().as_secs_f64(), sample()?);
    let (messages, latency) = (stats.counters().since(&c0).messages, stats.latency.snapshot());
    let connect_p99_ms = sse_load::ms(&stats.connect.snapshot(), 0.99);
    load.stop(Duration::from_secs(5)).await;
    let process = before.zip(connected).zip(end).map(|((before, connected), end)| Process {
        rss_before_kib: before.rss_bytes / 1024,
        rss_connected_kib: connected.rss_bytes / 1024,
        rss_per_conn_kib: connected.rss_bytes.saturating_sub(before.rss_bytes) as f64 / 1024.0 / n as f64,
        cpu_pct: 100.0 * (end.cpu_seconds - connected.cpu_seconds) / window,
    });
    let figures = Figures {
        connections: args.connections,
        all_ready_s: ready_after.map(|d| d.as_secs_f64()),
        connect_p99_ms,
        messages_per_s: messages as f64 / window,
        latency_p50_ms: sse_load::ms(&latency, 0.5),
        latency_p99_ms: sse_load::ms(&latency, 0.99),
        latency_max_ms: sse_load::ms(&latency, 1.0),
        totals: stats.counters(),
        process,
    };
    let targets: Vec<String> = args.target.iter().map(ToString::to_string).collect();
    let title = format!("livepush-bench sse-load: {n} SSE connections to {}", targets.join(", "));
    let mut r = Report::new("sse-load", title, &figures)?;
    for (kind, count) in stats.error_kinds() {
        r.note(format!("{count} x {kind}"));
    }
    Ok(r)
}
