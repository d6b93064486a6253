//! `livepush-bench`: load scenarios that measure livepush on one machine and
//! print the figures (nothing is asserted; the numbers go to BENCHMARKS.md).
//!
//! Each scenario is a subcommand in a module of its own; the shared pieces
//! (child processes, /proc sampling, upstream arrival recording, the SSE load
//! generator, the report) live in small modules so scenarios reuse them
//! instead of growing this file.

mod attach;
mod child;
mod churn;
mod failover;
mod hints;
mod histogram;
mod httpc;
mod nchan;
mod poller;
mod polling;
mod procstat;
mod push;
mod report;
mod sse_load;
mod stack;
mod wire;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "livepush-bench", version, about = "Benchmarks of livepush (loopback only).")]
struct Cli {
    /// Also write the figures as JSON to this file.
    #[arg(long, global = true, value_name = "PATH")]
    json: Option<PathBuf>,

    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// One real poller process watching many events against an in-process
    /// media-sim: upstream requests/s, poller CPU and RSS, poll spread.
    Poller(poller::Args),
    /// One event, one edge, N SSE browsers (a list of sizes, each on a fresh
    /// edge): edge RSS per connection, delivery latency, CPU, errors.
    Fanout(push::FanoutArgs),
    /// Many events with a few browsers each over several edges (default
    /// 1,000 x 10 over two): the same figures, plus polls per event.
    Breadth(push::BreadthArgs),
    /// Browsers connecting and resetting in batches on distinct events on
    /// one edge (default 10,000 in batches of 500) while the browsers of
    /// one stable event watch: whether the edge's RSS, open files and
    /// streams and the poller's polling return to their level before,
    /// `stale` events and `/readyz` during the churn.
    Churn(churn::Args),
    /// A poller killed with SIGKILL under load (default 1,000 events x 10
    /// browsers, two edges, three pollers): time until every browser of its
    /// events receives fresh data again, ids, reconnects, polls per event.
    Failover(failover::Args),
    /// Change to browser with 1,000 browsers on one event: regular polls
    /// alone, a change hint, a direct publish (random changes, one session):
    /// time from the media service's change to the last browser and to
    /// each browser.
    Hints(hints::Args),
    /// N viewers polling media-sim directly versus the same viewers through
    /// livepush: upstream requests/s and bytes/s, measured at media-sim.
    Polling(polling::Args),
    /// The SSE load generator alone, against edges you started (for
    /// diagnostics: an edge under a profiler, say).
    SseLoad(attach::Args),
    /// The `fanout` measurement against Nginx with the nchan module (one
    /// channel, N EventSource browsers, one update per second): RSS per
    /// connection, delivery latency, CPU; `--with-livepush` runs livepush
    /// alongside at each size.
    Nchan(nchan::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let scenario = async {
        match cli.scenario {
            Scenario::Poller(args) => poller::run(args).await,
            Scenario::Fanout(args) => push::fanout(args).await,
            Scenario::Breadth(args) => push::breadth(args).await,
            Scenario::Churn(args) => churn::run(args).await,
            Scenario::Failover(args) => failover::run(args).await,
            Scenario::Polling(args) => polling::run(args).await,
            Scenario::Hints(args) => hints::run(args).await,
            Scenario::SseLoad(args) => attach::run(args).await,
            Scenario::Nchan(args) => nchan::run(args).await,
        }
    };
    // Ctrl-C drops the scenario, whose guards stop the child processes.
    let report = tokio::select! {
        report = scenario => report?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    };
    report.print(&mut std::io::stdout().lock()).context("printing the report")?;
    if let Some(path) = &cli.json {
        stack::ensure_parent(path)?;
        report.write_json(path)?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}
