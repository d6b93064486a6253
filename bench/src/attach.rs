//! Scenario `sse-load`: the SSE load generator alone against edges started
//! by hand (an edge under a profiler, a hand-built edge), measured as
//! `fanout` measures the edges it starts (BENCHMARKS.md, "Scenario `sse-load`").

use crate::push::{LoadArgs, PushArgs, Runs, Server, ShapeArgs, at_least_1s};
use crate::{report::Report, stack::BinArgs};
use anyhow::ensure;
use std::{net::SocketAddr, time::Duration};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Edge address (loopback); repeated, every event has browsers on each.
    #[arg(long, required = true)]
    target: Vec<SocketAddr>,
    /// The process id of each `--target`, in the same order: its RSS and CPU.
    #[arg(long, required = true)]
    pid: Vec<u32>,
    /// Events watched (ids ev-000000, ...); each has connections / events browsers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    events: u32,
    /// SSE connections, a multiple of `--events`.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=18_000))]
    connections: u32,
    /// Measurement window after all connected.
    #[arg(long, default_value = "30s", value_parser = at_least_1s)]
    duration: Duration,
    /// Wait from "every browser has its first event" to the connected RSS and the window.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    settle: Duration,
    #[command(flatten)]
    load: LoadArgs,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    if let Some(t) = args.target.iter().find(|t| !t.ip().is_loopback()) {
        anyhow::bail!("{t} is not a loopback address: load goes to 127.0.0.0/8 only");
    }
    ensure!(args.pid.len() == args.target.len(), "one --pid per --target, in the same order");
    ensure!(args.connections % args.events == 0, "--connections must be a multiple of --events");
    let (events, browsers, edges) = (args.events, args.connections / args.events, args.target.len() as u32);
    // No media-sim or poller of ours: the edges' own feed them (interval and binaries unused).
    let push = PushArgs {
        duration: args.duration,
        settle: args.settle,
        interval: Duration::from_secs(1),
        change_every: Duration::from_secs(1),
        load: args.load.clone(),
        bins: BinArgs { bin_dir: None, child_log: "warn".into(), edge_cpus: None },
    };
    let mut runs = Runs::new(&push, false).await?;
    let servers = args.target.iter().zip(&args.pid);
    let servers = servers.map(|(&addr, &pid)| Server { addr, pid, proc: None, nginx: None }).collect();
    let column = format!("{}", args.connections);
    runs.measure(ShapeArgs { events, browsers, edges }, Ok(servers), column).await;
    let targets: Vec<String> = args.target.iter().map(ToString::to_string).collect();
    let title = format!("{} SSE connections to {}", args.connections, targets.join(", "));
    runs.report("sse-load", &title).await
}
