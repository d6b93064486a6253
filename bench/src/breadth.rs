//! Scenario `breadth`: many events with a few browsers each, spread over
//! several edges (default 1,000 events × 10 browsers over two edges).
//!
//! Where `fanout` stresses one update going to many browsers, this stresses
//! many upstream feeds: every edge holds one gRPC stream per event, the poller
//! polls 1,000 events, and each event's browsers sit on both edges, so the
//! figures also show whether the poller still polls each event once per
//! interval when two edges watch it.

use crate::{
    push::{self, PushArgs, Shape, ShapeArgs, Upstream},
    report::Report,
};

#[derive(Debug, clap::Args)]
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
    let params = up.params(&args.push);
    let outcome = push::measure(&args.push, shape, &mut up).await;
    up.stop().await?;
    let outcome = outcome?;
    let title = format!(
        "livepush-bench breadth: {} events x {} browsers over {} edges",
        args.shape.events, args.shape.browsers, args.shape.edges
    );
    let column = format!("{}x{}", args.shape.events, args.shape.browsers);
    Ok(push::report("breadth", title, vec![column], &[outcome], &args.push, params))
}
