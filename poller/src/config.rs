//! Everything the poller can be told, in one struct: flags with environment
//! fallbacks and defaults, checked at start-up so a bad value stops the process
//! with an error naming the flag instead of failing later at the first poll.

use crate::{
    clients::ClientsFile,
    headers::{Header, HeaderParser, HeadersFile},
    media_url::MediaUrl,
    peers::parse_peer,
    publish::PublishTokenFile,
    tls::{CaBundle, ClientCert, ClientKey},
    tls_listener::{ServerCert, ServerKey},
};
use clap::Parser;
use livepush::{
    flags::{parse_size, positive_duration},
    target::Target,
    telemetry::LogFormat,
};
use std::{net::SocketAddr, time::Duration};

// The certificate/key flag pairs (gRPC port, media client) are alike in
// shape on purpose: each is a flag of its own with its own help, env and
// `requires`, which a shared macro would only hide.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "poller",
    version,
    about = "Polls the media service once per watched event and streams changes over gRPC."
)]
pub struct Config {
    /// Address for the gRPC server (LiveFeed, health, reflection).
    #[arg(long, env = "POLLER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// A separate plain address for the health service and `/metrics` (off
    /// when unset). For probes and scrapers that cannot present the gRPC
    /// port's TLS or tokens, such as Kubernetes' gRPC probes; keep it on the
    /// private network.
    #[arg(long, env = "POLLER_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Certificate chain (PEM, leaf first): with `--tls-key`, the gRPC port
    /// (health, reflection and `/metrics` included) speaks TLS only.
    #[arg(
        long,
        env = "POLLER_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key",
        value_parser = ServerCert::load
    )]
    pub tls_cert: Option<ServerCert>,

    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, env = "POLLER_TLS_KEY", value_name = "PATH", requires = "tls_cert", value_parser = ServerKey::load)]
    pub tls_key: Option<ServerKey>,

    /// The gRPC clients, one `TOKEN ROLE NAME` per line (`#` comments; role
    /// `edge` or `reader`), read again when it changes. With it, LiveFeed and
    /// Presence calls need `authorization: Bearer TOKEN`; without it they are
    /// open to anyone who reaches the port (a trusted network only).
    #[arg(long, env = "POLLER_CLIENTS_FILE", value_name = "PATH", value_parser = ClientsFile::load)]
    pub clients_file: Option<ClientsFile>,

    /// Most viewer ids in one `GetPresence` answer (the counts stay exact;
    /// `truncated` says some were left out).
    #[arg(
        long,
        env = "POLLER_MAX_PRESENCE_VIDS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(0..=MAX_PRESENCE_VIDS)
    )]
    pub max_presence_vids: u32,

    /// Most `Subscribe` streams one client holds open, over all its
    /// connections: per token name with `--clients-file`, per IP address
    /// without (clients sharing one share the cap).
    #[arg(long, env = "POLLER_MAX_STREAMS_PER_CLIENT", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_client: u32,

    /// Most `WatchPresence` streams one client holds open (counted like
    /// `--max-streams-per-client`).
    #[arg(long, env = "POLLER_MAX_WATCHES_PER_CLIENT", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watches_per_client: u32,

    /// Media service URL template; `{event_id}` is replaced by the
    /// percent-encoded event id and must sit in the path or query.
    #[arg(
        long,
        env = "POLLER_MEDIA_URL",
        default_value = "http://127.0.0.1:8090/live/{event_id}",
        value_parser = MediaUrl::parse
    )]
    pub media_url: MediaUrl,

    /// Batch polls: a URL template with `{event_ids}` (in the path or query)
    /// replaced by a comma-separated list of percent-encoded event ids. When
    /// set, every poll goes through it, `--batch-size` events at a time; the
    /// answer is a JSON object keyed by event id (`null`: the event ended).
    #[arg(long, env = "POLLER_MEDIA_BATCH_URL", value_name = "TEMPLATE", value_parser = MediaUrl::parse_batch)]
    pub media_batch_url: Option<MediaUrl>,

    /// Most event ids in one `--media-batch-url` request.
    #[arg(long, env = "POLLER_BATCH_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch_size: u32,

    /// A file holding the token (one line; `#` comments allowed) that change
    /// hints and direct publishes need (`POST /events/{id}/changed`,
    /// `LiveFeed/Publish`), read again when it changes. Without it, both
    /// are refused.
    #[arg(long, env = "POLLER_PUBLISH_TOKEN_FILE", value_name = "PATH", value_parser = PublishTokenFile::load)]
    pub publish_token_file: Option<PublishTokenFile>,

    /// The other pollers (`http://host:port` or `https://host:port`,
    /// repeated or comma-separated; a DNS name counts each of its
    /// addresses), to which hints for events this poller does not watch are
    /// forwarded.
    #[arg(long = "peers", env = "POLLER_PEERS", value_name = "URL", value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<Target>,

    /// How often peer names are resolved again.
    #[arg(long, env = "POLLER_PEERS_RESOLVE_INTERVAL", default_value = "10s", value_parser = positive_duration)]
    pub peers_resolve_interval: Duration,

    /// Least time between two hint-triggered polls of one event: hints
    /// beyond it are coalesced.
    #[arg(long, env = "POLLER_MIN_HINT_GAP", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub min_hint_gap: Duration,

    /// Extra trusted CA certificates (PEM, one or more) for an https media
    /// service or `--heartbeat-url`, on top of the system's trust store.
    #[arg(long, env = "POLLER_MEDIA_CA", value_name = "PATH", value_parser = CaBundle::load)]
    pub media_ca: Option<CaBundle>,

    // This pair is declared like --tls-cert/--tls-key above, and each key
    // like its certificate, on purpose: distinct files, each flag with its
    // own name, variable and check.
    /// Client certificate chain (PEM) for media services that require mutual
    /// TLS; needs `--media-client-key`.
    #[arg(
        long,
        env = "POLLER_MEDIA_CLIENT_CERT",
        value_name = "PATH",
        requires = "media_client_key",
        value_parser = ClientCert::load
    )]
    pub media_client_cert: Option<ClientCert>,

    /// Private key (PEM) of `--media-client-cert`.
    #[arg(
        long,
        env = "POLLER_MEDIA_CLIENT_KEY",
        value_name = "PATH",
        requires = "media_client_cert",
        value_parser = ClientKey::load
    )]
    pub media_client_key: Option<ClientKey>,

    /// A header added to every media request, as `Name: value` (repeatable).
    /// Prefer `--media-headers-file` for secrets: flags show in `ps`.
    #[arg(long = "media-header", env = "POLLER_MEDIA_HEADER", value_name = "NAME: VALUE", value_parser = HeaderParser)]
    pub media_headers: Vec<Header>,

    /// A file of headers for every media request, one `Name: value` per line
    /// (`#` comments allowed); read again when it changes.
    #[arg(long, env = "POLLER_MEDIA_HEADERS_FILE", value_name = "PATH", value_parser = HeadersFile::load)]
    pub media_headers_file: Option<HeadersFile>,

    /// Time between two polls of one event (e.g. 500ms, 2s, 1m).
    #[arg(long, env = "POLLER_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub interval: Duration,

    /// Timeout of one request to the media service, body included.
    #[arg(long, env = "POLLER_MEDIA_TIMEOUT", default_value = "2s", value_parser = positive_duration)]
    pub media_timeout: Duration,

    /// Most requests in flight to the media service across all events.
    #[arg(long, env = "POLLER_MAX_INFLIGHT", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_inflight: u32,

    /// Largest media service body accepted, in bytes (suffixes KiB and MiB allowed).
    #[arg(long, env = "POLLER_MAX_BODY", default_value = "1MiB", value_parser = parse_size)]
    pub max_body: usize,

    /// Keep polling an event this long after its last subscriber left, so a
    /// page reload finds a warm value.
    #[arg(long, env = "POLLER_LINGER", default_value = "10s", value_parser = humantime::parse_duration)]
    pub linger: Duration,

    /// Longest wait between retries while the media service fails.
    #[arg(long, env = "POLLER_MAX_BACKOFF", default_value = "1m", value_parser = positive_duration)]
    pub max_backoff: Duration,

    /// Most events watched at once; further new events are refused with
    /// RESOURCE_EXHAUSTED so a flood of ids cannot exhaust the poller.
    #[arg(long, env = "POLLER_MAX_EVENTS", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_events: u32,

    /// Most `Subscribe` streams per client connection; one beyond it is
    /// refused with RESOURCE_EXHAUSTED (edges then open another connection).
    #[arg(long, env = "POLLER_MAX_STREAMS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,

    /// How long a graceful shutdown may take before the process exits anyway.
    #[arg(long, env = "POLLER_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Where to POST merged presence (off when unset): a URL template like
    /// `--media-url`, with `{event_id}` in the path or query. Each event with
    /// viewers gets `{"event_id","viewers","vids"}` every
    /// `--heartbeat-interval`, and one post with zero viewers once its last
    /// viewer is gone. Each post is bounded by `--media-timeout`.
    #[arg(long, env = "POLLER_HEARTBEAT_URL", value_parser = MediaUrl::parse)]
    pub heartbeat_url: Option<MediaUrl>,

    /// A header added to every `--heartbeat-url` post (repeatable). When
    /// neither this nor `--heartbeat-headers-file` is given, the media
    /// headers are sent.
    #[arg(
        long = "heartbeat-header",
        env = "POLLER_HEARTBEAT_HEADER",
        value_name = "NAME: VALUE",
        value_parser = HeaderParser
    )]
    pub heartbeat_headers: Vec<Header>,

    /// A file of headers for `--heartbeat-url` posts, like
    /// `--media-headers-file`.
    #[arg(long, env = "POLLER_HEARTBEAT_HEADERS_FILE", value_name = "PATH", value_parser = HeadersFile::load)]
    pub heartbeat_headers_file: Option<HeadersFile>,

    /// Time between two presence posts of one event to `--heartbeat-url`.
    #[arg(long, env = "POLLER_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = positive_duration)]
    pub heartbeat_interval: Duration,

    /// Log lines as `text` or `json` (one object per line, for collectors).
    #[arg(long, env = "POLLER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Upper bound of `--max-presence-vids`: 50,000 ids of up to 64 bytes stay
/// under the 4 MiB a gRPC client accepts by default.
pub const MAX_PRESENCE_VIDS: i64 = 50_000;

impl Config {
    /// The configuration with every default, polling `media_url`: handy for
    /// tests and embedding.
    pub fn with_media_url(media_url: &str) -> anyhow::Result<Self> {
        Ok(Self::try_parse_from(["poller", "--media-url", media_url])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livepush::cli_checks::{scratch_dir, scratch_file};

    fn parse(args: &[&str]) -> Result<Config, String> {
        Config::try_parse_from(std::iter::once("poller").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_docs() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.media_timeout, Duration::from_secs(2));
        assert_eq!(c.max_inflight, 64);
        assert_eq!(c.max_body, 1 << 20);
        assert_eq!(c.linger, Duration::from_secs(10));
        assert!(c.heartbeat_url.is_none());
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.tls_cert.is_none() && c.tls_key.is_none() && c.clients_file.is_none());
        assert_eq!(c.max_presence_vids, 10_000);
        assert_eq!(c.max_streams_per_client, 100_000);
        assert_eq!(c.max_watches_per_client, 10_000);
        assert!(c.media_batch_url.is_none() && c.publish_token_file.is_none() && c.peers.is_empty());
        assert_eq!(c.batch_size, 100);
        assert_eq!(c.min_hint_gap, Duration::from_millis(250));
    }

    #[test]
    fn batch_and_hint_flags() {
        let c = parse(&[
            "--media-batch-url",
            "https://media/live?ids={event_ids}",
            "--batch-size",
            "250",
            "--peers",
            "http://p1:50051,p2:7000",
            "--peers",
            "https://pollers.svc",
        ])
        .unwrap();
        assert_eq!(c.media_batch_url.unwrap().to_string(), "https://media/live?ids={event_ids}");
        assert_eq!(c.batch_size, 250);
        let peers: Vec<String> = c.peers.iter().map(Target::to_string).collect();
        assert_eq!(peers, ["http://p1:50051", "http://p2:7000", "https://pollers.svc:50051"]);
    }

    #[test]
    fn grpc_access_flags() {
        let dir = scratch_dir("livepush-config-unit");
        let clients = scratch_file(&dir, "clients", "# ok\nedge-token-0123456789 edge edge-pool\n");
        let c = parse(&["--clients-file", clients.to_str().unwrap(), "--max-presence-vids", "0"]).unwrap();
        assert_eq!(c.clients_file.unwrap().path, clients.to_str().unwrap());
        assert_eq!(c.max_presence_vids, 0);
        assert!(
            !format!("{:?}", parse(&["--clients-file", clients.to_str().unwrap()]).unwrap())
                .contains("edge-token")
        );
        let bad = scratch_file(
            &dir,
            "bad-clients",
            "edge-token-0123456789 edge edge-pool\nedge-token-0123456789 edge other\n",
        );
        let err = parse(&["--clients-file", bad.to_str().unwrap()]).unwrap_err();
        assert!(err.contains("--clients-file") && err.contains("line 2"), "{err}");
        assert!(!err.contains("edge-token"), "{err}");
    }

    // The same check as the edge's on purpose: each binary's own flag.
    #[test]
    fn log_format() {
        assert_eq!(parse(&["--log-format", "json"]).unwrap().log_format, LogFormat::Json);
        let err = parse(&["--log-format", "xml"]).unwrap_err();
        assert!(err.contains("--log-format") && err.contains("json"), "{err}");
    }

    #[test]
    fn heartbeat_url_follows_the_media_url_rules() {
        let c = parse(&["--heartbeat-url", "http://analytics/presence/{event_id}"]).unwrap();
        assert_eq!(c.heartbeat_url.unwrap().to_string(), "http://analytics/presence/{event_id}");
        let c = parse(&["--heartbeat-interval", "30s"]).unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
    }

    #[test]
    fn intervals_accept_human_units() {
        for (s, d) in [("500ms", 500), ("2s", 2000), ("1m", 60_000)] {
            assert_eq!(parse(&["--interval", s]).unwrap().interval, Duration::from_millis(d));
        }
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--interval", "soon"][..], "--interval"),
            (&["--interval", "0s"][..], "--interval"),
            (&["--listen", "nowhere:x"][..], "--listen"),
            (&["--media-url", "http://m/live"][..], "--media-url"),
            (&["--media-url", "not a url {event_id}"][..], "--media-url"),
            (&["--max-body", "12XB"][..], "--max-body"),
            (&["--max-inflight", "0"][..], "--max-inflight"),
            (&["--heartbeat-url", "http://a/presence"][..], "--heartbeat-url"),
            (&["--heartbeat-url", "http://{event_id}.a/p"][..], "--heartbeat-url"),
            (&["--heartbeat-url", "ftp://a/{event_id}"][..], "--heartbeat-url"),
            (&["--heartbeat-interval", "0s"][..], "--heartbeat-interval"),
            (&["--tls-cert", "/nonexistent/cert.pem"][..], "--tls-cert"),
            (&["--tls-key", "/nonexistent/key.pem"][..], "--tls-key"),
            (&["--clients-file", "/nonexistent/clients"][..], "--clients-file"),
            (&["--max-presence-vids", "50001"][..], "--max-presence-vids"),
            (&["--max-streams-per-client", "0"][..], "--max-streams-per-client"),
            (&["--max-watches-per-client", "0"][..], "--max-watches-per-client"),
            (&["--media-batch-url", "http://m/live/{event_id}"][..], "--media-batch-url"),
            (&["--batch-size", "0"][..], "--batch-size"),
            (&["--batch-size", "1001"][..], "--batch-size"),
            (&["--publish-token-file", "/nonexistent/token"][..], "--publish-token-file"),
            (&["--peers", "ftp://x"][..], "--peers"),
            (&["--peers", "http://p:1/path"][..], "--peers"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn upstream_tls_and_header_flags() {
        let c = parse(&["--media-url", "https://media.example/live/{event_id}"]).unwrap();
        assert_eq!(c.media_url.to_string(), "https://media.example/live/{event_id}");
        assert!(c.media_ca.is_none() && c.media_client_cert.is_none() && c.media_headers.is_empty());
        let c =
            parse(&["--media-header", "X-Api-Key: k1", "--media-header", "Authorization: Bearer t"]).unwrap();
        let names: Vec<_> = c.media_headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["x-api-key", "authorization"]);
        assert!(c.heartbeat_headers.is_empty(), "heartbeat headers default to the media ones at run time");
        assert!(!format!("{c:?}").contains("k1"), "Debug of the config shows no header value");
    }
}
