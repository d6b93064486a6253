//! Scenario `breadth`: many events with a few browsers each, spread over
//! several edges (default 1,000 events × 10 browsers over two edges).
//!
//! Where `fanout` stresses one update going to many browsers, this stresses
//! many upstream feeds: every edge holds one gRPC stream per event, the poller
//! polls 1,000 events, and each event's browsers sit on both edges, so the
//! figures also show whether the poller still polls each event once per
//! interval when two edges watch it.

use crate::{
    push::{self, Figures, Outcome, Params, PushArgs, Shape, ShapeArgs, Upstream},
    report::Report,
};

#[derive(Debug, clap::Args, serde::Serialize)]
pub struct Args {
    #[command(flatten)]
    shape: ShapeArgs,

    #[command(flatten)]
    push: PushArgs,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let shape =
        Shape { edges: args.shape.edges as usize, events: args.shape.events, per_event: args.shape.browsers };
    anyhow::ensure!(
        shape.connections() <= 18_000,
        "{} connections: the load generator holds one file per connection, at most 18,000",
        shape.connections()
    );
    let mut up = Upstream::start(&args.push).await?;
    let outcome = push::measure(&args.push, shape, &mut up).await;
    let column = format!("{}x{}", args.shape.events, args.shape.browsers);
    let runs = [Outcome { column, ..outcome? }];
    let params = Params::new(&args.push, Some(&up), &runs);
    up.stop().await?;
    let title = format!(
        "livepush-bench breadth: {} events x {} browsers over {} edges",
        args.shape.events, args.shape.browsers, args.shape.edges
    );
    let mut report = Report::new("breadth", title, &Figures { params, runs: &runs })?;
    report.note(push::latency_note("media-sim's clock"));
    Ok(report)
}
