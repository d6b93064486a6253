//! Logging set-up shared by the binaries: `tracing` to stdout, filtered by
//! `RUST_LOG` (default `info`), either as text (coloured only on a terminal,
//! so log files get plain text) or as one JSON object per line for log
//! collectors.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// How log lines are written, chosen with each binary's `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, and
    /// `fields` (with `message`), plus the current span if any.
    Json,
}

/// Installs the global subscriber; call once, first thing after parsing the
/// configuration.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}
