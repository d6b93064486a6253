//! Scenario `fanout`: one event, one edge, N browsers — the cost of holding
//! many SSE streams and of pushing one update to all of them.
//!
//! media-sim (`--stamp`, data changing every second) and the poller (1 s
//! interval) run once for the whole invocation; each size in `--connections`
//! gets a fresh edge process, so its idle RSS, RSS per connection and CPU are
//! its own (see [`crate::push`] for the phases). With `--plot` the latency
//! and memory figures across sizes are drawn as an SVG.

use crate::{
    plot,
    push::{self, Figures, Outcome, Params, PushArgs, Shape, Sizes, Upstream},
    report::Report,
};
use std::path::PathBuf;

#[derive(Debug, clap::Args, serde::Serialize)]
pub struct Args {
    #[command(flatten)]
    sizes: Sizes,

    /// Also draw latency and RSS per connection against connections as SVG.
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,

    #[command(flatten)]
    push: PushArgs,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let mut up = Upstream::start(&args.push).await?;
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut failed = Vec::new();
    for &n in &args.sizes.connections {
        eprintln!("fanout: {n} connections");
        let shape = Shape { edges: 1, events: 1, per_event: n };
        match push::measure(&args.push, shape, &mut up).await {
            Ok(o) => outcomes.push(Outcome { column: n.to_string(), ..o }),
            // The other sizes' figures still stand; the failure is reported.
            Err(e) => failed.push(format!("{n} connections: the run failed: {e:#}")),
        }
    }
    let params = Params::new(&args.push, Some(&up), &outcomes);
    up.stop().await?;

    let title = format!(
        "livepush-bench fanout: one event, one edge, {} SSE connections",
        args.sizes.connections.iter().map(u32::to_string).collect::<Vec<_>>().join(" / ")
    );
    let mut report = Report::new("fanout", title, &Figures { params, runs: &outcomes })?;
    report.note(push::latency_note("media-sim's clock"));
    for f in failed {
        report.note(f);
    }
    if let Some(path) = &args.plot {
        let points: Vec<plot::Point> = outcomes
            .iter()
            .map(|o| plot::Point {
                connections: o.connections,
                p50_ms: o.delivery.latency_p50_ms,
                p99_ms: o.delivery.latency_p99_ms,
                rss_per_conn_kib: o.memory.rss_per_conn_kib,
            })
            .collect();
        plot::fanout(path, &points, push::TARGET_P99_MS, push::TARGET_RSS_PER_CONN_KIB)?;
        report.note(format!("plot written to {}", path.display()));
    }
    Ok(report)
}
