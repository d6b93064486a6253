use clap::Parser;
use edge::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    livepush::telemetry::init(config.log_format);
    let shutdown = livepush::signal::shutdown();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", config.listen))?;
    edge::run(config, listener, shutdown).await
}
