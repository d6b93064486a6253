//! Everything the edge can be told, in one struct, checked at start-up so a
//! bad value stops the process with an error that names the flag.

use crate::upstream::{pollers::Target, tls::PollerCa, token::TokenFile};
use clap::Parser;
use livepush::{flags::positive_duration, telemetry::LogFormat};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

#[derive(Debug, Clone, Parser)]
#[command(name = "edge", version, about = "Serves live event updates to browsers over Server-Sent Events.")]
pub struct Config {
    /// Address for the HTTP server (SSE streams, demo page, health).
    #[arg(long, env = "EDGE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// A separate address for `/metrics`, `/healthz` and `/readyz` (off when
    /// unset: they share `--listen`). Set, the browser-facing port serves only
    /// streams and the demo page, and these stay on the private network.
    #[arg(long, env = "EDGE_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// The pollers, as `http://host:port` or `https://host:port` (TLS, the
    /// certificate verified for `host`): repeat the flag or separate with
    /// commas. A name that resolves to several addresses (a Kubernetes
    /// headless Service) counts each address as a poller. Each event is
    /// served by one live poller, the same on every edge.
    #[arg(long = "poller", env = "EDGE_POLLER", default_value = "http://127.0.0.1:50051", value_delimiter = ',', value_parser = Target::parse)]
    pub pollers: Vec<Target>,

    /// How often poller names are resolved again (new and gone pollers).
    #[arg(long, env = "EDGE_POLLER_RESOLVE_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub poller_resolve_interval: Duration,

    /// Extra trusted CA certificates (PEM) for `https://` pollers, on top of
    /// the system's trust store.
    #[arg(long, env = "EDGE_POLLER_CA", value_name = "PATH", value_parser = PollerCa::load)]
    pub poller_ca: Option<PollerCa>,

    /// A file holding this edge's token for pollers started with
    /// `--clients-file` (sent as `authorization: Bearer TOKEN`); read again
    /// when it changes.
    #[arg(long, env = "EDGE_POLLER_TOKEN_FILE", value_name = "PATH", value_parser = TokenFile::load)]
    pub poller_token_file: Option<TokenFile>,

    /// Reconnect delay suggested to browsers (`retry:`), e.g. 3000ms or 3s.
    #[arg(long, env = "EDGE_RETRY", default_value = "3000ms", value_parser = humantime::parse_duration)]
    pub retry: Duration,

    /// Interval of keep-alive comments on idle streams.
    #[arg(long, env = "EDGE_KEEPALIVE", default_value = "15s", value_parser = positive_duration)]
    pub keepalive: Duration,

    /// Close a connection whose writes make no progress for this long (a
    /// browser that stopped reading).
    #[arg(long, env = "EDGE_WRITE_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub write_timeout: Duration,

    /// Most concurrent SSE streams; beyond it browsers get 503 with
    /// Retry-After. Keep it below the process's open-file limit.
    #[arg(long, env = "EDGE_MAX_CONNECTIONS", default_value_t = 18_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Most concurrent SSE streams from one client IP address (0: no cap).
    /// Behind a proxy every browser shares the proxy's address, so the cap is
    /// off by default.
    #[arg(long, env = "EDGE_MAX_PER_CLIENT", default_value_t = 0)]
    pub max_per_client: u32,

    /// Most events on one multi-event stream (`GET /live/stream?event=…`);
    /// more get 400. At most 256, which keeps the stream's resume id within
    /// 2.7 KiB and its query within the 16 KiB head limit.
    #[arg(long, env = "EDGE_MAX_EVENTS_PER_STREAM", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=crate::multi::MAX_EVENTS as i64))]
    pub max_events_per_stream: u16,

    /// Origins allowed to open streams cross-origin, comma-separated, or `*`.
    /// With a list, credentialed requests (`withCredentials: true`) are allowed
    /// for exactly those origins. Empty: same-origin only.
    #[arg(long, env = "EDGE_ALLOW_ORIGIN", value_delimiter = ',', value_parser = parse_origin)]
    pub allow_origin: Vec<String>,

    /// PEM certificate chain: with --tls-key, serve HTTP/1.1 and HTTP/2 over TLS.
    #[arg(long, env = "EDGE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "EDGE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// File holding the secret (raw bytes, at least 32, one trailing line
    /// break ignored) that signs browsers' watch tokens: with it, every
    /// stream needs a valid token (`?token=` or the `livepush_token` cookie).
    #[arg(long, env = "EDGE_AUTH_SECRET_FILE")]
    pub auth_secret_file: Option<PathBuf>,

    /// The secret being rotated out: tokens it signed are still accepted.
    #[arg(long, env = "EDGE_AUTH_PREVIOUS_SECRET_FILE", requires = "auth_secret_file")]
    pub auth_previous_secret_file: Option<PathBuf>,

    /// How long a stream may outlive its token's expiry; then it is closed
    /// with `retry:` and the browser reconnects with a fresh token.
    #[arg(long, env = "EDGE_AUTH_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub auth_grace: Duration,

    /// Serve `GET /demo/token?event=ID&vid=VID`, minting tokens valid this
    /// long for anyone who asks. For demos and local development only.
    #[arg(long, env = "EDGE_DEMO_TOKENS", requires = "auth_secret_file", value_parser = demo_token_ttl)]
    pub demo_tokens: Option<Duration>,

    /// On shutdown, browsers are told to reconnect after a random delay up to
    /// this long, so they spread over the remaining edges instead of a herd.
    #[arg(long, env = "EDGE_DRAIN_SPREAD", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_spread: Duration,

    /// How often this edge reports its viewers to the poller (one batch).
    #[arg(long, env = "EDGE_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = heartbeat_interval)]
    pub heartbeat_interval: Duration,

    /// This edge's name in heartbeat batches (default: `edge-` and random hex).
    #[arg(long, env = "EDGE_ID", value_parser = parse_edge_id)]
    pub edge_id: Option<String>,

    /// How long a graceful shutdown may take before the process exits anyway.
    #[arg(long, env = "EDGE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Log lines as `text` or `json` (one object per line, for collectors).
    #[arg(long, env = "EDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// Every default, with the poller at `poller`: for tests and embedding.
    pub fn with_poller(poller: &str) -> anyhow::Result<Self> {
        Ok(Self::try_parse_from(["edge", "--poller", poller])?)
    }
}

/// Whole seconds (token times are Unix seconds), 1 s to 1 day.
fn demo_token_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&d) {
        return Err("must be between 1s and 1d".into());
    }
    Ok(Duration::from_secs(d.as_secs()))
}

/// `*` or an exact origin such as `https://app.example` (scheme, host and
/// optional port; no path).
fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s == "*" {
        return Ok(s.to_owned());
    }
    let uri: axum::http::Uri = s.parse().map_err(|e| format!("not an origin: {e}"))?;
    let plain = uri.path_and_query().is_none_or(|p| p.as_str() == "/") && !s.ends_with('/');
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() || !plain {
        return Err(format!("{s:?} is not an origin like https://app.example or *"));
    }
    Ok(s.to_owned())
}

/// What the poller accepts: 100 ms to 10 min.
fn heartbeat_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&d) {
        return Err("must be between 100ms and 10m".into());
    }
    Ok(d)
}

/// `[A-Za-z0-9._~-]{1,64}`, like viewer ids.
fn parse_edge_id(s: &str) -> Result<String, String> {
    livepush::ViewerId::parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string().replace("viewer id", "edge id"))
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
        assert_eq!(c.pollers, [Target { host: "127.0.0.1".into(), port: 50051, tls: false }]);
        assert!(c.poller_ca.is_none() && c.poller_token_file.is_none());
        assert_eq!(c.poller_resolve_interval, Duration::from_secs(5));
        assert_eq!(c.retry, Duration::from_millis(3000));
        assert_eq!(c.keepalive, Duration::from_secs(15));
        assert_eq!(c.drain_spread, Duration::from_secs(5));
        assert!(c.allow_origin.is_empty() && c.tls_cert.is_none());
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.auth_secret_file.is_none() && c.demo_tokens.is_none(), "auth is off by default");
        assert_eq!(c.auth_grace, Duration::from_secs(300));
        assert_eq!(c.max_events_per_stream as usize, crate::multi::DEFAULT_MAX_EVENTS);
    }

    #[test]
    fn auth_flags() {
        let c = parse(&["--auth-secret-file", "s", "--auth-previous-secret-file", "p", "--auth-grace", "1m"])
            .unwrap();
        let files = (c.auth_secret_file.unwrap(), c.auth_previous_secret_file.unwrap());
        assert_eq!(files, ("s".into(), "p".into()));
        assert_eq!(c.auth_grace, Duration::from_secs(60));
        let c = parse(&["--auth-secret-file", "s", "--demo-tokens", "90s"]).unwrap();
        assert_eq!(c.demo_tokens, Some(Duration::from_secs(90)));
    }

    // The same check as the poller's on purpose: each binary's own flag.
    #[test]
    fn log_format() {
        assert_eq!(parse(&["--log-format", "json"]).unwrap().log_format, LogFormat::Json);
        let err = parse(&["--log-format", "xml"]).unwrap_err();
        assert!(err.contains("--log-format") && err.contains("json"), "{err}");
    }

    #[test]
    fn pollers_repeat_or_separate_with_commas() {
        let c =
            parse(&["--poller", "http://a:1,https://b:2", "--poller", "http://pollers.svc:50051"]).unwrap();
        let hosts: Vec<String> = c.pollers.iter().map(Target::to_string).collect();
        assert_eq!(hosts, ["http://a:1", "https://b:2", "http://pollers.svc:50051"]);
    }

    #[test]
    fn origins() {
        let c = parse(&["--allow-origin", "https://a.example,http://localhost:3000"]).unwrap();
        assert_eq!(c.allow_origin, ["https://a.example", "http://localhost:3000"]);
        assert_eq!(parse(&["--allow-origin", "*"]).unwrap().allow_origin, ["*"]);
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--listen", "8080"][..], "--listen"),
            (&["--poller", "127.0.0.1:50051"][..], "--poller"),
            (&["--poller", "ftp://x"][..], "--poller"),
            (&["--poller", "http://a:1,ftp://b:2"][..], "--poller"),
            (&["--poller-ca", "/nonexistent/ca.pem"][..], "--poller-ca"),
            (&["--poller-token-file", "/nonexistent/token"][..], "--poller-token-file"),
            (&["--poller-resolve-interval", "0s"][..], "--poller-resolve-interval"),
            (&["--keepalive", "0s"][..], "--keepalive"),
            (&["--retry", "later"][..], "--retry"),
            (&["--allow-origin", "app.example"][..], "--allow-origin"),
            (&["--allow-origin", "https://app.example/path"][..], "--allow-origin"),
            (&["--tls-cert", "cert.pem"][..], "--tls-key"),
            (&["--write-timeout", "0s"][..], "--write-timeout"),
            (&["--max-connections", "0"][..], "--max-connections"),
            (&["--max-events-per-stream", "0"][..], "--max-events-per-stream"),
            (&["--max-events-per-stream", "257"][..], "--max-events-per-stream"),
            (&["--heartbeat-interval", "1ms"][..], "--heartbeat-interval"),
            (&["--edge-id", "a b"][..], "--edge-id"),
            (&["--auth-previous-secret-file", "p"][..], "--auth-secret-file"),
            (&["--demo-tokens", "1m"][..], "--auth-secret-file"),
            (&["--auth-secret-file", "s", "--demo-tokens", "0s"][..], "--demo-tokens"),
            (&["--auth-grace", "soon"][..], "--auth-grace"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
