//! Scenario `breadth`: many events with a few browsers each, spread over
//! several edges (default 1,000 events × 10 browsers over two edges).
//!
//! Where `fanout` stresses one update going to many browsers, this stresses
//! many upstream feeds: every edge holds one gRPC stream per event, the poller
//! polls 1,000 events, and each event's browsers sit on both edges, so the
//! figures also show whether the poller still polls each event once per
//! interval when two edges watch it.

use crate::{
    push::{self, PushArgs, Shape, Upstream},
    report::Report,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events watched (ids ev-000000, ev-000001, ...).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    events: u32,

    /// Browsers per event, spread over the edges.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    browsers: u32,

    /// Edge processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    edges: u32,

    #[command(flatten)]
    push: PushArgs,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let shape = Shape { edges: args.edges as usize, events: args.events, per_event: args.browsers };
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
        args.events, args.browsers, args.edges
    );
    let column = format!("{}x{}", args.events, args.browsers);
    Ok(push::report("breadth", title, vec![column], &[outcome], &args.push, params))
}
