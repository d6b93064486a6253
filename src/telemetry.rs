//! Logging set-up shared by the binaries: `tracing` to stdout, filtered by
//! `RUST_LOG` (default `info`), coloured only on a terminal so log files and
//! collectors get plain text.

use std::io::IsTerminal;

pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}
