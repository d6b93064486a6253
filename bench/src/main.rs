//! `livepush-bench`: load scenarios that measure livepush on one machine and
//! print the figures (nothing is asserted; the numbers go to BENCHMARKS.md).
//! Each scenario is a subcommand; BENCHMARKS.md says which file holds it.

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
use clap::{CommandFactory, FromArgMatches, Subcommand};
use std::path::PathBuf;

#[derive(Debug, clap::Parser)]
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
    /// One poller, many events, one gRPC stream each: upstream requests/s,
    /// poll spread, poller CPU and RSS; `--batch-size` compares modes.
    Poller(poller::Args),
    /// One event, one edge, N browsers (each size on a fresh edge): edge RSS
    /// per connection, delivery latency, CPU, errors.
    Fanout(push::FanoutArgs),
    /// Many events, a few browsers each, over several edges: the same
    /// figures, plus polls per event.
    Breadth(push::BreadthArgs),
    /// Browsers coming and going on distinct events beside one stable event:
    /// whether the edge and the poller return to their level before.
    Churn(churn::Args),
    /// A poller killed under load: time until each browser of its events
    /// has fresh data again, ids, polls per event, the poller's return.
    Failover(failover::Args),
    /// Change to browser without a hint, with a hint, with a direct publish.
    Hints(hints::Args),
    /// Viewers polling media-sim directly versus through livepush: upstream
    /// requests/s and bytes/s.
    Polling(polling::Args),
    /// The SSE load generator alone, against edges you started (diagnostics).
    SseLoad(attach::Args),
    /// `fanout`'s measurement against nginx with nchan; `--with-livepush`
    /// measures livepush beside it at each size.
    Nchan(nchan::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
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
    let mut report = tokio::select! {
        report = scenario => report?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    };
    // The scenario's flags, as given or defaulted, head the figures.
    let (name, flags) = matches.subcommand().context("no scenario")?;
    report.flags(Cli::command().find_subcommand(name).context("no scenario")?, flags);
    report.print(&mut std::io::stdout().lock()).context("printing the report")?;
    if let Some(path) = &cli.json {
        report.write_json(path)?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}
