//! Prometheus metrics of the poller and the edge: one recorder per process
//! (the `metrics` facade with `metrics-exporter-prometheus`), every metric's
//! name as a constant here, and cached handles for the hot paths.
//!
//! [`install`] sets the global recorder once per process (later calls are
//! free), describes every metric and starts the upkeep thread; [`render`] is
//! what `GET /metrics` answers. Metrics are process-wide: several pollers or
//! edges in one process (the tests) add up.
//!
//! A handle taken before the recorder is installed records nothing, forever.
//! [`poller()`], [`edge()`] and [`edge_upstream()`] install first, so cached
//! handles are always live; code using the `metrics` macros directly with
//! these names should call [`install`] before caching any handle.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::{sync::OnceLock, time::Duration};

pub use metrics::{Counter, Gauge, Histogram};

/// `Content-Type` of [`render`]'s output (the Prometheus text format).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Buckets of every latency histogram, in seconds: from a fast local answer to
/// beyond the media timeout's default (2 s).
pub const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Buckets of [`POLLER_BATCH_SIZE`], up to `--batch-size`'s maximum.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes (a scrape does it too), so unscraped samples cannot pile up.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

// ---- poller ------------------------------------------------------------

/// Gauge: `LiveFeed/Subscribe` streams open.
pub const POLLER_SUBSCRIBERS: &str = "livepush_poller_subscribers";
/// Gauge: events being polled (or lingering after their last subscriber).
pub const POLLER_EVENTS_WATCHED: &str = "livepush_poller_events_watched";
/// Counter: `LiveUpdate`s published (data or state changed).
pub const POLLER_UPDATES_PUBLISHED: &str = "livepush_poller_updates_published_total";
/// Counter, label `outcome`: requests to the media service by result.
pub const POLLER_UPSTREAM_REQUESTS: &str = "livepush_poller_upstream_requests_total";
/// Histogram (seconds): duration of one media request, body included.
pub const POLLER_UPSTREAM_DURATION: &str = "livepush_poller_upstream_request_duration_seconds";
/// Counter: failed polls, each followed by a backoff wait.
pub const POLLER_BACKOFFS: &str = "livepush_poller_backoffs_total";
/// Counter, label `outcome`: `Presence/ReportHeartbeats` batches by result.
pub const POLLER_HEARTBEAT_BATCHES: &str = "livepush_poller_heartbeat_batches_total";
/// Gauge: edges reporting presence.
pub const POLLER_PRESENCE_EDGES: &str = "livepush_poller_presence_edges";
/// Gauge: events with at least one viewer on some edge.
pub const POLLER_PRESENCE_EVENTS: &str = "livepush_poller_presence_events";
/// Gauge: viewers over all events (distinct vids per event plus anonymous).
pub const POLLER_PRESENCE_VIEWERS: &str = "livepush_poller_presence_viewers";
/// Gauge: events whose presence is watched (`Presence/WatchPresence`).
pub const POLLER_PRESENCE_WATCHED: &str = "livepush_poller_presence_watched_events";
/// Counter, label `outcome` (`ok`, `failed`): posts to `--heartbeat-url`, a
/// failure counted once after its retries.
pub const POLLER_PRESENCE_POSTS: &str = "livepush_poller_presence_posts_total";
/// Counter, label `reason` (`missing_token`, `unknown_token`, `wrong_role`):
/// gRPC calls refused by `--clients-file`.
pub const POLLER_AUTH_REFUSALS: &str = "livepush_poller_auth_refusals_total";
/// Counter, label `rpc` (`subscribe`, `watch_presence`): streams refused
/// because their client holds `--max-streams-per-client` or
/// `--max-watches-per-client`.
pub const POLLER_CLIENT_LIMIT_REFUSALS: &str = "livepush_poller_client_limit_refusals_total";
/// Counter: batch requests to `--media-batch-url` (each also counted in
/// [`POLLER_UPSTREAM_REQUESTS`] by outcome).
pub const POLLER_BATCH_REQUESTS: &str = "livepush_poller_batch_requests_total";
/// Histogram: event ids per batch request.
pub const POLLER_BATCH_SIZE: &str = "livepush_poller_batch_size";
/// Counter: event ids a batch answer left out (each a failed poll of that
/// event).
pub const POLLER_BATCH_MISSING: &str = "livepush_poller_batch_missing_total";
/// Counter: change hints and publishes accepted (HTTP or gRPC, forwarded
/// ones included).
pub const POLLER_HINTS_RECEIVED: &str = "livepush_poller_hints_received_total";
/// Counter: hints that caused no poll of their own (one was already due or
/// in flight, or `--min-hint-gap` had not passed).
pub const POLLER_HINTS_COALESCED: &str = "livepush_poller_hints_coalesced_total";
/// Counter: hints for events this poller does not watch, sent on to
/// `--peers`.
pub const POLLER_HINTS_FORWARDED: &str = "livepush_poller_hints_forwarded_total";
/// Counter: documents published directly (a hint with a body).
pub const POLLER_HINTS_PUBLISHED: &str = "livepush_poller_hints_published_total";
/// Counter, label `reason` (`disabled`, `unauthenticated`, `invalid`):
/// hints refused.
pub const POLLER_HINT_REFUSALS: &str = "livepush_poller_hint_refusals_total";

// ---- both ---------------------------------------------------------------

/// Counter, label `lock`: locks found poisoned by a panic (and recovered;
/// see [`crate::sync`]). Anything but 0 is a bug to report.
pub const POISONED_LOCKS: &str = "livepush_poisoned_locks_total";

// ---- edge --------------------------------------------------------------

/// Gauge: client sockets open.
pub const EDGE_CONNECTIONS_OPEN: &str = "livepush_edge_connections_open";
/// Counter: client sockets accepted.
pub const EDGE_CONNECTIONS_ACCEPTED: &str = "livepush_edge_connections_accepted_total";
/// Gauge: SSE streams open.
pub const EDGE_STREAMS_OPEN: &str = "livepush_edge_streams_open";
/// Counter: update frames (data, `stale`/`live`, `presence`, `end`) written
/// to browsers; keep-alives and `retry:` are not counted.
pub const EDGE_UPDATES_DELIVERED: &str = "livepush_edge_updates_delivered_total";
/// Counter, label `reason`: streams or sockets refused.
pub const EDGE_REJECTED: &str = "livepush_edge_rejected_total";
/// Counter: connections closed because their writes stalled past
/// `--write-timeout`.
pub const EDGE_SLOW_CONSUMERS_DROPPED: &str = "livepush_edge_slow_consumers_dropped_total";
/// Counter: streams closed by a drain (shutdown), each told a `retry:` delay.
pub const EDGE_DRAIN_CLOSED: &str = "livepush_edge_drain_closed_streams_total";
/// Gauge: events this edge watches (one upstream feed each).
pub const EDGE_EVENTS_WATCHED: &str = "livepush_edge_events_watched";
/// Gauge: upstream `LiveFeed/Subscribe` streams open.
pub const EDGE_UPSTREAM_STREAMS: &str = "livepush_edge_upstream_streams";
/// Counter: upstream streams moved to another poller.
pub const EDGE_UPSTREAM_FAILOVERS: &str = "livepush_edge_upstream_failovers_total";
/// Gauge: pollers this edge currently considers healthy.
pub const EDGE_POLLERS_UP: &str = "livepush_edge_pollers_up";
/// Gauge: poller addresses this edge knows (from `--poller` and DNS), up
/// or not; with `livepush_edge_pollers_up`, how many are not serving.
pub const EDGE_POLLERS_KNOWN: &str = "livepush_edge_pollers_known";
/// Counter, label `reason`: upstream `Subscribe` calls that did not open a
/// stream (`timeout`, `connection_full`, `refused`, `invalid`,
/// `unauthorized`, `error`).
pub const EDGE_UPSTREAM_SUBSCRIBE_FAILURES: &str = "livepush_edge_upstream_subscribe_failures_total";
/// Gauge, label `poller`: HTTP/2 connections this edge holds to a poller for
/// subscriptions.
pub const EDGE_UPSTREAM_CHANNELS: &str = "livepush_edge_upstream_channels";
/// Counter, label `outcome`: presence batches sent to the poller.
pub const EDGE_HEARTBEAT_REPORTS: &str = "livepush_edge_heartbeat_reports_total";

/// Label of [`POLLER_UPSTREAM_REQUESTS`], [`POLLER_HEARTBEAT_BATCHES`],
/// [`POLLER_PRESENCE_POSTS`] and [`EDGE_HEARTBEAT_REPORTS`].
pub const OUTCOME: &str = "outcome";
/// Label of [`EDGE_REJECTED`] and [`POLLER_AUTH_REFUSALS`].
pub const REASON: &str = "reason";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as this process's global recorder (once;
/// later calls only return it). If another recorder was installed first,
/// ours stays private and [`render`] shows nothing, with a warning logged.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(Matcher::Full(POLLER_BATCH_SIZE.into()), BATCH_SIZE_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "another metrics recorder is installed; /metrics stays empty");
        }
        describe();
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_PERIOD);
                upkeep.run_upkeep();
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no metrics upkeep thread; histograms are folded on scrape only");
        }
        handle
    })
}

/// Every metric in the Prometheus text format (installs the recorder if
/// needed).
pub fn render() -> String {
    let handle = install();
    // The standard process metrics (`process_open_fds`, `process_max_fds`,
    // `process_resident_memory_bytes`, `process_cpu_seconds_total`, ...),
    // read from /proc at each scrape: the alert on the open-files ceiling
    // and the dashboard's memory and CPU panels use them.
    process_collector().collect();
    handle.render()
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let collector = metrics_process::Collector::default();
        collector.describe();
        collector
    })
}

// One `describe_*` call per metric, kept as plain calls so each metric's
// help text is found by its name. The calls are alike by nature: runs of
// them pair up within this function (the poller's hint counters with the
// edge's stream counters, for one), on purpose.
fn describe() {
    describe_gauge!(POLLER_SUBSCRIBERS, Unit::Count, "LiveFeed/Subscribe streams open");
    describe_gauge!(
        POLLER_EVENTS_WATCHED,
        Unit::Count,
        "Events polled or lingering after their last subscriber"
    );
    describe_counter!(POLLER_UPDATES_PUBLISHED, Unit::Count, "LiveUpdates published (data or state changed)");
    describe_counter!(
        POLLER_UPSTREAM_REQUESTS,
        Unit::Count,
        "Media service requests by outcome: ok, not_modified, ended, timeout, unreachable, tls, redirect, \
         http_error, too_large, bad_body, body_error"
    );
    describe_histogram!(
        POLLER_UPSTREAM_DURATION,
        Unit::Seconds,
        "Duration of one media service request, body included (waiting for --max-inflight excluded)"
    );
    describe_counter!(POLLER_BACKOFFS, Unit::Count, "Failed polls followed by a backoff wait");
    describe_counter!(
        POLLER_HEARTBEAT_BATCHES,
        Unit::Count,
        "Presence batches received by outcome: ok, invalid, too_many_edges, full, shutting_down"
    );
    describe_gauge!(POLLER_PRESENCE_EDGES, Unit::Count, "Edges reporting presence");
    describe_gauge!(POLLER_PRESENCE_EVENTS, Unit::Count, "Events with at least one viewer on some edge");
    describe_gauge!(
        POLLER_PRESENCE_VIEWERS,
        Unit::Count,
        "Viewers over all events: distinct viewer ids per event plus anonymous streams"
    );
    describe_gauge!(POLLER_PRESENCE_WATCHED, Unit::Count, "Events whose presence is watched (WatchPresence)");
    describe_counter!(
        POLLER_PRESENCE_POSTS,
        Unit::Count,
        "Presence posts to --heartbeat-url by outcome: ok, failed (after retries)"
    );
    describe_counter!(
        POLLER_AUTH_REFUSALS,
        Unit::Count,
        "gRPC calls refused by --clients-file, by reason: missing_token, unknown_token (UNAUTHENTICATED), \
         wrong_role (PERMISSION_DENIED)"
    );
    describe_counter!(
        POLLER_CLIENT_LIMIT_REFUSALS,
        Unit::Count,
        "Streams refused at a per-client cap, by rpc: subscribe (--max-streams-per-client), \
         watch_presence (--max-watches-per-client)"
    );

    describe_counter!(POLLER_BATCH_REQUESTS, Unit::Count, "Batch requests to --media-batch-url");
    describe_histogram!(POLLER_BATCH_SIZE, Unit::Count, "Event ids per batch request");
    describe_counter!(POLLER_BATCH_MISSING, Unit::Count, "Event ids a batch answer left out (failed polls)");
    describe_counter!(POLLER_HINTS_RECEIVED, Unit::Count, "Change hints and publishes accepted");
    describe_counter!(
        POLLER_HINTS_COALESCED,
        Unit::Count,
        "Hints that caused no poll of their own (one already due or in flight, or --min-hint-gap)"
    );
    describe_counter!(
        POLLER_HINTS_FORWARDED,
        Unit::Count,
        "Hints for events watched elsewhere, sent to --peers"
    );
    describe_counter!(
        POLLER_HINTS_PUBLISHED,
        Unit::Count,
        "Documents published directly by a hint with a body"
    );
    describe_counter!(
        POLLER_HINT_REFUSALS,
        Unit::Count,
        "Hints refused by reason: disabled (no --publish-token-file), unauthenticated, invalid"
    );

    describe_counter!(POISONED_LOCKS, Unit::Count, "Locks found poisoned by a panic and recovered (a bug)");

    describe_gauge!(EDGE_CONNECTIONS_OPEN, Unit::Count, "Client sockets open");
    describe_counter!(EDGE_CONNECTIONS_ACCEPTED, Unit::Count, "Client sockets accepted");
    describe_gauge!(EDGE_STREAMS_OPEN, Unit::Count, "SSE streams open");
    describe_counter!(
        EDGE_UPDATES_DELIVERED,
        Unit::Count,
        "Update frames written to browsers (data, stale/live, presence, end; not keep-alives)"
    );
    describe_counter!(
        EDGE_REJECTED,
        Unit::Count,
        "Streams or sockets refused by reason: max_connections, per_client, socket_ceiling"
    );
    describe_counter!(
        EDGE_SLOW_CONSUMERS_DROPPED,
        Unit::Count,
        "Connections closed because their writes stalled past --write-timeout"
    );
    describe_counter!(EDGE_DRAIN_CLOSED, Unit::Count, "SSE streams closed by a drain with a retry: delay");
    describe_gauge!(EDGE_EVENTS_WATCHED, Unit::Count, "Events this edge watches");
    describe_gauge!(EDGE_UPSTREAM_STREAMS, Unit::Count, "Upstream LiveFeed/Subscribe streams open");
    describe_counter!(EDGE_UPSTREAM_FAILOVERS, Unit::Count, "Upstream streams moved to another poller");
    describe_gauge!(EDGE_POLLERS_UP, Unit::Count, "Pollers this edge considers healthy");
    describe_gauge!(EDGE_POLLERS_KNOWN, Unit::Count, "Poller addresses this edge knows, serving or not");
    describe_counter!(
        EDGE_UPSTREAM_SUBSCRIBE_FAILURES,
        Unit::Count,
        "Upstream Subscribe calls that opened no stream, by reason: timeout, connection_full, refused, \
         invalid, unauthorized, error"
    );
    describe_gauge!(EDGE_UPSTREAM_CHANNELS, Unit::Count, "Subscription connections to each poller");
    describe_counter!(EDGE_HEARTBEAT_REPORTS, Unit::Count, "Presence batches sent to the poller by outcome");
}

/// Adds one to a gauge while it lives.
#[must_use = "the gauge goes back down when this is dropped"]
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The poller's handles, registered once.
pub struct Poller {
    pub subscribers: Gauge,
    pub events_watched: Gauge,
    pub updates_published: Counter,
    pub upstream: UpstreamOutcomes,
    pub upstream_duration: Histogram,
    pub backoffs: Counter,
    pub heartbeat_batches: BatchOutcomes,
    pub presence_edges: Gauge,
    pub presence_events: Gauge,
    pub presence_viewers: Gauge,
    pub presence_watched: Gauge,
    pub presence_posts_ok: Counter,
    pub presence_posts_failed: Counter,
    pub auth_refusals: AuthRefusals,
    pub client_limit_refusals: ClientLimitRefusals,
    pub batch_requests: Counter,
    pub batch_size: Histogram,
    pub batch_missing: Counter,
    pub hints: Hints,
}

/// The hint counters.
pub struct Hints {
    pub received: Counter,
    pub coalesced: Counter,
    pub forwarded: Counter,
    pub published: Counter,
    /// [`POLLER_HINT_REFUSALS`]: no `--publish-token-file`.
    pub refused_disabled: Counter,
    /// Missing or wrong token.
    pub refused_unauthenticated: Counter,
    /// Bad event id, body not JSON or too large.
    pub refused_invalid: Counter,
}

/// [`POLLER_AUTH_REFUSALS`] per `reason`.
pub struct AuthRefusals {
    /// No `authorization: Bearer …` (UNAUTHENTICATED).
    pub missing_token: Counter,
    /// A token the clients file does not list (UNAUTHENTICATED).
    pub unknown_token: Counter,
    /// The client's role does not allow the method (PERMISSION_DENIED).
    pub wrong_role: Counter,
}

/// [`POLLER_CLIENT_LIMIT_REFUSALS`] per `rpc`.
pub struct ClientLimitRefusals {
    pub subscribe: Counter,
    pub watch_presence: Counter,
}

/// [`POLLER_UPSTREAM_REQUESTS`] per `outcome`.
pub struct UpstreamOutcomes {
    /// 2xx with a JSON body.
    pub ok: Counter,
    /// 304.
    pub not_modified: Counter,
    /// 404 or 410: the event is over.
    pub ended: Counter,
    /// No complete answer within `--media-timeout`.
    pub timeout: Counter,
    /// Connecting or sending failed.
    pub unreachable: Counter,
    /// The TLS handshake failed: the certificate did not verify (unknown
    /// CA, wrong name, expired), or the server refused ours.
    pub tls: Counter,
    /// A 3xx other than 304: never followed (see `media_client`).
    pub redirect: Counter,
    /// Any other status.
    pub http_error: Counter,
    /// Body larger than `--max-body`.
    pub too_large: Counter,
    /// Body is not JSON.
    pub bad_body: Counter,
    /// Reading the body failed.
    pub body_error: Counter,
}

/// [`POLLER_HEARTBEAT_BATCHES`] per `outcome`.
pub struct BatchOutcomes {
    pub ok: Counter,
    pub invalid: Counter,
    pub too_many_edges: Counter,
    pub full: Counter,
    pub shutting_down: Counter,
}

/// The poller's metrics (installs the recorder on first use).
pub fn poller() -> &'static Poller {
    static POLLER: OnceLock<Poller> = OnceLock::new();
    POLLER.get_or_init(|| {
        install();
        let upstream =
            |outcome: &'static str| metrics::counter!(POLLER_UPSTREAM_REQUESTS, OUTCOME => outcome);
        let batches = |outcome: &'static str| metrics::counter!(POLLER_HEARTBEAT_BATCHES, OUTCOME => outcome);
        let auth = |reason: &'static str| metrics::counter!(POLLER_AUTH_REFUSALS, REASON => reason);
        let limits = |rpc: &'static str| metrics::counter!(POLLER_CLIENT_LIMIT_REFUSALS, "rpc" => rpc);
        Poller {
            subscribers: metrics::gauge!(POLLER_SUBSCRIBERS),
            events_watched: metrics::gauge!(POLLER_EVENTS_WATCHED),
            updates_published: metrics::counter!(POLLER_UPDATES_PUBLISHED),
            upstream: UpstreamOutcomes {
                ok: upstream("ok"),
                not_modified: upstream("not_modified"),
                ended: upstream("ended"),
                timeout: upstream("timeout"),
                unreachable: upstream("unreachable"),
                tls: upstream("tls"),
                redirect: upstream("redirect"),
                http_error: upstream("http_error"),
                too_large: upstream("too_large"),
                bad_body: upstream("bad_body"),
                body_error: upstream("body_error"),
            },
            upstream_duration: metrics::histogram!(POLLER_UPSTREAM_DURATION),
            backoffs: metrics::counter!(POLLER_BACKOFFS),
            heartbeat_batches: BatchOutcomes {
                ok: batches("ok"),
                invalid: batches("invalid"),
                too_many_edges: batches("too_many_edges"),
                full: batches("full"),
                shutting_down: batches("shutting_down"),
            },
            presence_edges: metrics::gauge!(POLLER_PRESENCE_EDGES),
            presence_events: metrics::gauge!(POLLER_PRESENCE_EVENTS),
            presence_viewers: metrics::gauge!(POLLER_PRESENCE_VIEWERS),
            presence_watched: metrics::gauge!(POLLER_PRESENCE_WATCHED),
            presence_posts_ok: metrics::counter!(POLLER_PRESENCE_POSTS, OUTCOME => "ok"),
            presence_posts_failed: metrics::counter!(POLLER_PRESENCE_POSTS, OUTCOME => "failed"),
            auth_refusals: AuthRefusals {
                missing_token: auth("missing_token"),
                unknown_token: auth("unknown_token"),
                wrong_role: auth("wrong_role"),
            },
            client_limit_refusals: ClientLimitRefusals {
                subscribe: limits("subscribe"),
                watch_presence: limits("watch_presence"),
            },
            batch_requests: metrics::counter!(POLLER_BATCH_REQUESTS),
            batch_size: metrics::histogram!(POLLER_BATCH_SIZE),
            batch_missing: metrics::counter!(POLLER_BATCH_MISSING),
            hints: Hints {
                received: metrics::counter!(POLLER_HINTS_RECEIVED),
                coalesced: metrics::counter!(POLLER_HINTS_COALESCED),
                forwarded: metrics::counter!(POLLER_HINTS_FORWARDED),
                published: metrics::counter!(POLLER_HINTS_PUBLISHED),
                refused_disabled: metrics::counter!(POLLER_HINT_REFUSALS, REASON => "disabled"),
                refused_unauthenticated: metrics::counter!(POLLER_HINT_REFUSALS, REASON => "unauthenticated"),
                refused_invalid: metrics::counter!(POLLER_HINT_REFUSALS, REASON => "invalid"),
            },
        }
    })
}

/// The edge's connection and stream handles, registered once.
pub struct Edge {
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    pub streams_open: Gauge,
    pub updates_delivered: Counter,
    pub rejected_max_connections: Counter,
    pub rejected_per_client: Counter,
    pub rejected_socket_ceiling: Counter,
    pub slow_consumers_dropped: Counter,
    pub drain_closed: Counter,
}

/// The edge's connection and stream metrics (installs the recorder on first
/// use).
pub fn edge() -> &'static Edge {
    static EDGE: OnceLock<Edge> = OnceLock::new();
    EDGE.get_or_init(|| {
        install();
        let rejected = |reason: &'static str| metrics::counter!(EDGE_REJECTED, REASON => reason);
        Edge {
            connections_open: metrics::gauge!(EDGE_CONNECTIONS_OPEN),
            connections_accepted: metrics::counter!(EDGE_CONNECTIONS_ACCEPTED),
            streams_open: metrics::gauge!(EDGE_STREAMS_OPEN),
            updates_delivered: metrics::counter!(EDGE_UPDATES_DELIVERED),
            rejected_max_connections: rejected("max_connections"),
            rejected_per_client: rejected("per_client"),
            rejected_socket_ceiling: rejected("socket_ceiling"),
            slow_consumers_dropped: metrics::counter!(EDGE_SLOW_CONSUMERS_DROPPED),
            drain_closed: metrics::counter!(EDGE_DRAIN_CLOSED),
        }
    })
}

/// The edge's upstream and cluster handles, registered on first use (so they
/// only appear once the code that maintains them runs).
pub struct EdgeUpstream {
    pub events_watched: Gauge,
    pub upstream_streams: Gauge,
    pub upstream_failovers: Counter,
    pub pollers_up: Gauge,
    pub pollers_known: Gauge,
}

/// See [`EdgeUpstream`] (installs the recorder on first use).
pub fn edge_upstream() -> &'static EdgeUpstream {
    static UPSTREAM: OnceLock<EdgeUpstream> = OnceLock::new();
    UPSTREAM.get_or_init(|| {
        install();
        EdgeUpstream {
            events_watched: metrics::gauge!(EDGE_EVENTS_WATCHED),
            upstream_streams: metrics::gauge!(EDGE_UPSTREAM_STREAMS),
            upstream_failovers: metrics::counter!(EDGE_UPSTREAM_FAILOVERS),
            pollers_up: metrics::gauge!(EDGE_POLLERS_UP),
            pollers_known: metrics::gauge!(EDGE_POLLERS_KNOWN),
        }
    })
}

/// Counts one upstream `Subscribe` that opened no stream, by `reason` (a
/// fixed word; a small lookup per failure, which is rare).
pub fn edge_subscribe_failure(reason: &'static str) {
    install();
    metrics::counter!(EDGE_UPSTREAM_SUBSCRIBE_FAILURES, "reason" => reason).increment(1);
}

/// The gauge of subscription connections to the poller at `poller`.
pub fn edge_upstream_channels(poller: &str) -> Gauge {
    install();
    metrics::gauge!(EDGE_UPSTREAM_CHANNELS, "poller" => poller.to_owned())
}

/// Counts one presence batch sent by this edge, by `outcome` (a fixed word
/// such as `ok`; one small lookup per call, fine at heartbeat rates).
pub fn edge_heartbeat_report(outcome: &'static str) {
    install();
    metrics::counter!(EDGE_HEARTBEAT_REPORTS, OUTCOME => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_twice_is_harmless_and_renders_described_metrics() {
        let a: *const PrometheusHandle = install();
        let b: *const PrometheusHandle = install();
        assert_eq!(a, b);
        poller().backoffs.increment(1);
        edge().rejected_per_client.increment(2);
        let text = render();
        assert!(text.contains("# TYPE livepush_poller_backoffs_total counter"), "{text}");
        assert!(text.contains("# HELP livepush_poller_backoffs_total"), "{text}");
        assert!(text.contains(r#"livepush_edge_rejected_total{reason="per_client"} 2"#), "{text}");
        let fds = text.lines().find_map(|l| l.strip_prefix("process_open_fds ")).expect("process_open_fds");
        assert!(fds.parse::<f64>().unwrap() >= 3.0, "{text}");
        assert!(text.contains("process_max_fds "), "{text}");
        poller().upstream_duration.record(0.03);
        let text = render();
        assert!(
            text.contains(r#"livepush_poller_upstream_request_duration_seconds_bucket{le="0.05"} 1"#),
            "explicit buckets: {text}"
        );
    }
}
