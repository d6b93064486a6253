//! Everything the edge can be told, in one struct, checked at start-up so a
//! bad value stops the process with an error that names the flag.

use clap::Parser;
use std::{net::SocketAddr, time::Duration};

#[derive(Debug, Clone, Parser)]
#[command(name = "edge", version, about = "Serves live event updates to browsers over Server-Sent Events.")]
pub struct Config {
    /// Address for the HTTP server (SSE streams, demo page, health).
    #[arg(long, env = "EDGE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// gRPC address of the poller.
    #[arg(long, env = "EDGE_POLLER", default_value = "http://127.0.0.1:50051", value_parser = parse_poller)]
    pub poller: String,

    /// Reconnect delay suggested to browsers (`retry:`), e.g. 3000ms or 3s.
    #[arg(long, env = "EDGE_RETRY", default_value = "3000ms", value_parser = humantime::parse_duration)]
    pub retry: Duration,

    /// Interval of keep-alive comments on idle streams.
    #[arg(long, env = "EDGE_KEEPALIVE", default_value = "15s", value_parser = positive_duration)]
    pub keepalive: Duration,

    /// How long a graceful shutdown may take before the process exits anyway.
    #[arg(long, env = "EDGE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
}

impl Config {
    /// Every default, with the poller at `poller`: for tests and embedding.
    pub fn with_poller(poller: &str) -> anyhow::Result<Self> {
        Ok(Self::try_parse_from(["edge", "--poller", poller])?)
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(d)
}

/// An `http://` or `https://` URI with a host.
fn parse_poller(s: &str) -> Result<String, String> {
    let uri: axum::http::Uri = s.parse().map_err(|e| format!("not a URI: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        Config::try_parse_from(std::iter::once("edge").chain(args.iter().copied())).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_docs() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.poller, "http://127.0.0.1:50051");
        assert_eq!(c.retry, Duration::from_millis(3000));
        assert_eq!(c.keepalive, Duration::from_secs(15));
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--listen", "8080"][..], "--listen"),
            (&["--poller", "127.0.0.1:50051"][..], "--poller"),
            (&["--poller", "ftp://x"][..], "--poller"),
            (&["--keepalive", "0s"][..], "--keepalive"),
            (&["--retry", "later"][..], "--retry"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
