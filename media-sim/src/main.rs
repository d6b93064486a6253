use clap::Parser;
use media_sim::Config;

// The same few lines in each binary, on purpose: main parses flags, starts
// logging and hands over to the crate's `run`.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    livepush::telemetry::init(config.log_format);
    let shutdown = livepush::signal::shutdown();
    let listener = livepush::listen::bind(config.listen).await?;
    media_sim::run(config, listener, shutdown).await
}
