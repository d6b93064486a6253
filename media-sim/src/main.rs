use clap::Parser;
use media_sim::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    livepush::telemetry::init(config.log_format);
    let shutdown = livepush::signal::shutdown();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", config.listen))?;
    media_sim::run(config, listener, shutdown).await
}
