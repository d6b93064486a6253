use clap::Parser;
use poller::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    livepush::telemetry::init();
    let config = Config::parse();
    let shutdown = livepush::signal::shutdown();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", config.listen))?;
    poller::run(config, listener, shutdown).await
}
