use clap::Parser;
use poller::Config;

// The same few lines in each binary, on purpose: main parses flags, starts
// logging and hands over to the crate's `run`.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    livepush::telemetry::init(config.log_format);
    let shutdown = livepush::signal::shutdown();
    let listener = livepush::listen::bind(config.listen).await?;
    poller::run(config, listener, shutdown).await
}
