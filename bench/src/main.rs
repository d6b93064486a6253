//! `livepush-bench`: load scenarios that measure livepush on one machine and
//! print the figures (nothing is asserted; the numbers go to BENCHMARKS.md).
//!
//! Each scenario is a subcommand in a module of its own; the shared pieces
//! (child processes, /proc sampling, upstream arrival recording, the report)
//! live in small modules so later scenarios (SSE fan-out, nchan comparison)
//! reuse them instead of growing this file.

mod arrivals;
mod child;
mod poller;
mod procstat;
mod report;
mod subscribers;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let scenario = async {
        match cli.scenario {
            Scenario::Poller(args) => poller::run(args).await,
        }
    };
    // Ctrl-C drops the scenario, whose guards stop the child processes.
    let report = tokio::select! {
        report = scenario => report?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    };
    report.print(&mut std::io::stdout().lock()).context("printing the report")?;
    if let Some(path) = &cli.json {
        report.write_json(path)?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}
