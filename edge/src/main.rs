use clap::{Parser, Subcommand};
use edge::{Config, auth::MintArgs};

/// `edge [FLAGS]` serves; `edge token …` mints a watch token and exits.
#[derive(Parser)]
#[command(
    name = "edge",
    version,
    about = "Serves live event updates to browsers over Server-Sent Events.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a watch token for browsers, signed with the secret in
    /// --secret-file (what the platform's backend mints).
    Token(MintArgs),
}

// The same few lines in each binary, on purpose: main parses flags, starts
// logging and hands over to the crate's `run`. The edge first sets up its
// allocator, which may start the process again: before any thread exists.
fn main() -> anyhow::Result<()> {
    let tuning = edge::memory::tune_allocator();
    let config = match Cli::parse() {
        Cli { command: Some(Command::Token(args)), .. } => {
            println!("{}", args.mint()?);
            return Ok(());
        }
        Cli { config, command: None } => config,
    };
    livepush::telemetry::init(config.log_format);
    tuning.log();
    serve(config)
}

#[tokio::main]
async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = livepush::signal::shutdown();
    let listener = livepush::listen::bind(config.listen).await?;
    edge::run(config, listener, shutdown).await
}
