//! The poller's only door to the media service: one shared HTTP client (with
//! connection reuse), a cap on requests in flight across all events, a
//! per-request timeout, a body size limit, conditional requests, and a verdict
//! for every answer. Nothing the media service sends is forwarded unchecked.
//!
//! Redirects are never followed: the URL template decides which server the
//! poller talks to, never an answer. Following them would let a media
//! service, or anyone able to inject a `Location`, point the poller at
//! internal addresses (SSRF). A 3xx is a failed poll counted as
//! `outcome="redirect"`, with its `Location` in the log.

use crate::{headers::RequestHeaders, media_url::MediaUrl};
use livepush::{
    EventId,
    metrics::{Counter, UpstreamOutcomes},
};
use reqwest::{StatusCode, Url, header};
use std::{sync::Arc, time::Duration};
use tokio::{sync::Semaphore, time::Instant};

/// Validators from the last good answer, sent back as `If-None-Match` /
/// `If-Modified-Since` so an unchanged value costs the media service a 304.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<header::HeaderValue>,
    pub last_modified: Option<header::HeaderValue>,
}

/// A successful poll.
#[derive(Debug)]
pub enum Fetched {
    /// A JSON document, compacted to one line, and its [`fingerprint`].
    Json { data: String, fingerprint: u128, validators: Validators },
    /// 304: the value we hold is still current.
    NotModified,
    /// 404 or 410: the event is over.
    Ended(StatusCode),
}

/// A failed poll. The last good value stays; the caller backs off.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("media service did not answer within {0:?}")]
    Timeout(Duration),
    #[error("media service unreachable: {0}")]
    Connect(#[source] reqwest::Error),
    #[error("TLS with {host} failed: {detail}")]
    Tls { host: String, detail: String },
    #[error("media service answered {status} to {location}; redirects are not followed")]
    Redirect { status: StatusCode, location: String },
    #[error("media service answered {status}")]
    Status { status: StatusCode, retry_after: Option<Duration> },
    #[error("media service body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("media service body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the media service body failed: {0}")]
    Body(#[source] reqwest::Error),
    #[error("media service batch answer is not a JSON object")]
    NotAnObject,
    #[error("media service batch answer has no entry for the event")]
    MissingFromBatch,
    /// The batch this event's poll went in failed as a whole.
    #[error("{0}")]
    Batch(Arc<FetchError>),
    /// The poll was given up before it answered (shutting down).
    #[error("the poll was abandoned")]
    Dropped,
}

impl FetchError {
    /// How long the media service asked us to wait (429/503 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            Self::Batch(inner) => inner.retry_after(),
            _ => None,
        }
    }
}

/// Longest `Retry-After` honoured; a larger one is clamped so that one odd
/// header cannot silence an event for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct MediaClient {
    http: reqwest::Client,
    headers: RequestHeaders,
    url: MediaUrl,
    /// `--media-batch-url`: when set, every poll is a batch poll.
    batch_url: Option<MediaUrl>,
    timeout: Duration,
    max_body: usize,
    /// Bounds requests in flight across all events (`--max-inflight`).
    inflight: Arc<Semaphore>,
}

impl MediaClient {
    /// Polls `url` through `http` (see [`http_client`]), adding `headers`
    /// to every request.
    pub fn new(
        http: reqwest::Client,
        headers: RequestHeaders,
        url: MediaUrl,
        timeout: Duration,
        max_body: usize,
        max_inflight: usize,
    ) -> Self {
        let inflight = Arc::new(Semaphore::new(max_inflight));
        Self { http, headers, url, batch_url: None, timeout, max_body, inflight }
    }

    /// Polls through `--media-batch-url` instead (see [`crate::batch`]).
    pub fn with_batch_url(mut self, batch_url: Option<MediaUrl>) -> Self {
        self.batch_url = batch_url;
        self
    }

    /// Polls the media service once for `id`.
    pub async fn fetch(&self, id: &EventId, validators: &Validators) -> Result<Fetched, FetchError> {
        let _permit = self.inflight.acquire().await.expect("semaphore is never closed");
        let started = Instant::now();
        // The timeout covers headers and body, so a trickling body cannot hold
        // a permit forever.
        let url = self.url.for_event(id);
        let result = match tokio::time::timeout(self.timeout, self.get(url, validators, self.max_body)).await
        {
            Ok(Ok(Answer::Body { body, validators })) => parse_json(&body).map(|value| Fetched::Json {
                data: value.to_string(),
                fingerprint: fingerprint(&value),
                validators,
            }),
            Ok(Ok(Answer::NotModified)) => Ok(Fetched::NotModified),
            Ok(Ok(Answer::Gone(status))) => Ok(Fetched::Ended(status)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(FetchError::Timeout(self.timeout)),
        };
        let metrics = livepush::metrics::poller();
        metrics.upstream_duration.record(started.elapsed());
        outcome_counter(&metrics.upstream, &result).increment(1);
        result
    }

    /// Polls `--media-batch-url` once for `ids` (at most `--batch-size`).
    /// A whole-batch failure is one error; per-event verdicts are in the
    /// answer. A 404 or 410 here is a failure, not an end: it is the batch
    /// endpoint that answered it.
    pub async fn fetch_batch(&self, ids: &[EventId], validators: &Validators) -> Result<Batch, FetchError> {
        let batch_url = self.batch_url.as_ref().expect("batches are only polled with --media-batch-url");
        let _permit = self.inflight.acquire().await.expect("semaphore is never closed");
        let started = Instant::now();
        let url = batch_url.for_events(ids);
        let limit = batch_body_limit(self.max_body, ids.len());
        let result = match tokio::time::timeout(self.timeout, self.get(url, validators, limit)).await {
            Ok(Ok(Answer::Body { body, validators })) => {
                parse_batch(&body, ids, self.max_body).map(|values| Batch::Values { values, validators })
            }
            Ok(Ok(Answer::NotModified)) => Ok(Batch::NotModified),
            Ok(Ok(Answer::Gone(status))) => Err(FetchError::Status { status, retry_after: None }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(FetchError::Timeout(self.timeout)),
        };
        let metrics = livepush::metrics::poller();
        metrics.upstream_duration.record(started.elapsed());
        metrics.batch_requests.increment(1);
        metrics.batch_size.record(ids.len() as f64);
        let outcomes = &metrics.upstream;
        match &result {
            Ok(Batch::Values { .. }) => outcomes.ok.increment(1),
            Ok(Batch::NotModified) => outcomes.not_modified.increment(1),
            Err(e) => error_counter(outcomes, e).increment(1),
        }
        result
    }

    /// Whether polls go through `--media-batch-url`.
    pub fn batched(&self) -> bool {
        self.batch_url.is_some()
    }

    /// One conditional GET of `url`, its body bounded by `max_body`.
    async fn get(&self, url: Url, validators: &Validators, max_body: usize) -> Result<Answer, FetchError> {
        let mut req = self.http.get(url.clone()).header(header::ACCEPT, "application/json");
        // After ours, so a deployment may override Accept or User-Agent; the
        // conditional headers cannot be set this way (see `headers`).
        req = req.headers((*self.headers.current()).clone());
        if let Some(etag) = &validators.etag {
            req = req.header(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = &validators.last_modified {
            req = req.header(header::IF_MODIFIED_SINCE, lm.clone());
        }
        let mut resp = req.send().await.map_err(|e| send_error(&url, e))?;
        let status = resp.status();
        match status {
            StatusCode::NOT_MODIFIED => return Ok(Answer::NotModified),
            StatusCode::NOT_FOUND | StatusCode::GONE => return Ok(Answer::Gone(status)),
            s if s.is_success() => {}
            s if s.is_redirection() => {
                return Err(FetchError::Redirect { status: s, location: location(resp.headers()) });
            }
            s => {
                let retry_after = match s {
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                        retry_after(resp.headers())
                    }
                    _ => None,
                };
                return Err(FetchError::Status { status: s, retry_after });
            }
        }
        if resp.content_length().is_some_and(|n| n > max_body as u64) {
            return Err(FetchError::TooLarge { limit: max_body });
        }
        let validators = Validators {
            etag: resp.headers().get(header::ETAG).cloned(),
            last_modified: resp.headers().get(header::LAST_MODIFIED).cloned(),
        };
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(FetchError::Body)? {
            if body.len() + chunk.len() > max_body {
                return Err(FetchError::TooLarge { limit: max_body });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer::Body { body, validators })
    }
}

/// What one GET brought back.
enum Answer {
    Body { body: Vec<u8>, validators: Validators },
    NotModified,
    Gone(StatusCode),
}

/// A batch answer.
#[derive(Debug)]
pub enum Batch {
    /// 304: every event of the batch is unchanged.
    NotModified,
    /// Each requested event's verdict, in the order requested, and the
    /// whole batch's validators.
    Values { values: Vec<BatchValue>, validators: Validators },
}

/// One event's part of a batch answer.
#[derive(Debug)]
pub enum BatchValue {
    /// Its document, compacted, and its [`fingerprint`].
    Json { data: String, fingerprint: u128 },
    /// `null`: the event is over.
    Ended,
    /// The answer left it out (a failed poll of that event only).
    Missing,
    /// Its document is larger than `--max-body` (`limit`).
    TooLarge { limit: usize },
}

/// Largest batch body read: `--max-body` per event asked for, but never
/// more than [`MAX_BATCH_BODY`] (the body is held and parsed whole).
pub fn batch_body_limit(max_body: usize, ids: usize) -> usize {
    max_body.saturating_mul(ids.max(1)).min(MAX_BATCH_BODY)
}

/// Bound of one batch body, whatever `--max-body` and `--batch-size` say.
pub const MAX_BATCH_BODY: usize = 64 << 20;

/// Splits a batch answer (a JSON object keyed by event id) into the
/// verdicts of `ids`; keys nobody asked for are ignored.
fn parse_batch(body: &[u8], ids: &[EventId], max_body: usize) -> Result<Vec<BatchValue>, FetchError> {
    let mut object: serde_json::Map<String, serde_json::Value> = match parse_json(body)? {
        serde_json::Value::Object(map) => map,
        _ => return Err(FetchError::NotAnObject),
    };
    let values = ids
        .iter()
        .map(|id| match object.remove(id.as_str()) {
            None => BatchValue::Missing,
            Some(serde_json::Value::Null) => BatchValue::Ended,
            Some(value) => {
                let data = value.to_string();
                if data.len() > max_body {
                    BatchValue::TooLarge { limit: max_body }
                } else {
                    BatchValue::Json { fingerprint: fingerprint(&value), data }
                }
            }
        })
        .collect();
    Ok(values)
}

/// The `outcome` a poll is counted under.
fn outcome_counter<'a>(outcomes: &'a UpstreamOutcomes, result: &Result<Fetched, FetchError>) -> &'a Counter {
    match result {
        Ok(Fetched::Json { .. }) => &outcomes.ok,
        Ok(Fetched::NotModified) => &outcomes.not_modified,
        Ok(Fetched::Ended(_)) => &outcomes.ended,
        Err(e) => error_counter(outcomes, e),
    }
}

/// The `outcome` a failed request is counted under.
fn error_counter<'a>(outcomes: &'a UpstreamOutcomes, err: &FetchError) -> &'a Counter {
    match err {
        FetchError::Timeout(_) => &outcomes.timeout,
        FetchError::Connect(_) => &outcomes.unreachable,
        FetchError::Tls { .. } => &outcomes.tls,
        FetchError::Redirect { .. } => &outcomes.redirect,
        FetchError::Status { .. } => &outcomes.http_error,
        FetchError::TooLarge { .. } => &outcomes.too_large,
        FetchError::NotJson(_) | FetchError::NotAnObject => &outcomes.bad_body,
        FetchError::Body(_) => &outcomes.body_error,
        // Counted once, as the batch request they came from.
        FetchError::Batch(inner) => error_counter(outcomes, inner),
        FetchError::MissingFromBatch => &outcomes.bad_body,
        FetchError::Dropped => &outcomes.unreachable,
    }
}

/// The poller's one HTTP client, shared by polling and presence forwarding
/// (one connection pool): connections reused, HTTP/2 when the server offers
/// it by ALPN, TLS from [`crate::tls`], the standard proxy variables
/// (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, read by reqwest), a connect
/// timeout, and no redirects.
pub fn http_client(tls: rustls::ClientConfig, connect_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("livepush-poller/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(tls)
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("static HTTP client configuration is valid")
}

/// A failed send, told apart: a TLS failure (somewhere in the error's
/// chain: rustls reports it inside an `io::Error`) names the host.
fn send_error(url: &reqwest::Url, err: reqwest::Error) -> FetchError {
    match tls_failure(&err) {
        Some(detail) => FetchError::Tls { host: url.host_str().unwrap_or_default().to_owned(), detail },
        None => FetchError::Connect(err),
    }
}

/// The rustls error behind `err`, if a TLS handshake is what failed.
pub(crate) fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // hyper-util wraps rustls' error in an io::Error inside another, and
        // io::Error::source() skips the error it wraps: descend into it.
        next = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// A redirect's `Location` for the log: at most 256 characters of visible
/// ASCII (it is the media service's text, not ours).
fn location(headers: &header::HeaderMap) -> String {
    match headers.get(header::LOCATION).map(|v| v.to_str()) {
        None => "(no Location)".into(),
        Some(Err(_)) => "(Location not visible ASCII)".into(),
        Some(Ok(l)) => l.chars().take(256).collect(),
    }
}

fn parse_json(body: &[u8]) -> Result<serde_json::Value, FetchError> {
    serde_json::from_slice(body).map_err(FetchError::NotJson)
}

/// Re-serialises a JSON document on one line, keeping key order and every
/// digit of every number (serde_json's `arbitrary_precision`). Serde escapes
/// control characters inside strings, so the result never holds CR or LF.
pub fn compact_json(body: &[u8]) -> Result<String, FetchError> {
    Ok(parse_json(body)?.to_string())
}

/// Identifies a JSON value regardless of key order and whitespace, so change
/// detection compares values, not texts: a media service that reorders its
/// keys has not changed anything. 128 bits of xxh3 over a canonical walk
/// (keys sorted, each item tagged and length-prefixed, so no two different
/// values walk alike); keeping a hash instead of the parsed value costs 16
/// bytes per event.
pub fn fingerprint(value: &serde_json::Value) -> u128 {
    use serde_json::Value;
    use xxhash_rust::xxh3::Xxh3;
    fn text(h: &mut Xxh3, tag: u8, s: &str) {
        h.update(&[tag]);
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    fn walk(v: &Value, h: &mut Xxh3) {
        match v {
            Value::Null => text(h, b'z', ""),
            Value::Bool(b) => text(h, b'b', if *b { "1" } else { "0" }),
            // The number as written: with arbitrary_precision, 1.0 and 1 are
            // different texts and count as a change, like any other digit.
            Value::Number(n) => text(h, b'n', &n.to_string()),
            Value::String(s) => text(h, b's', s),
            Value::Array(items) => {
                text(h, b'a', &items.len().to_string());
                items.iter().for_each(|item| walk(item, h));
            }
            Value::Object(map) => {
                text(h, b'o', &map.len().to_string());
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (k, item) in entries {
                    text(h, b'k', k);
                    walk(item, h);
                }
            }
        }
    }
    let mut h = Xxh3::new();
    walk(value, &mut h);
    h.digest128()
}

/// `Retry-After` as delay-seconds or an HTTP date, clamped to
/// [`MAX_RETRY_AFTER`].
fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(d.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_json_to_one_line_keeping_order() {
        let out = compact_json(b"{\n  \"z\": 1,\r\n  \"a\": \"x\\ny\"\n}").unwrap();
        assert_eq!(out, r#"{"z":1,"a":"x\ny"}"#);
        assert!(!out.contains('\n') && !out.contains('\r'));
    }

    #[test]
    fn numbers_keep_every_digit() {
        let body = br#"{"n": 1180591620717411303425, "price": 12345678901234567890.12345678901234567890,
            "id": 18446744073709551615, "neg": -9223372036854775809, "e": 1e400, "f": 1.0}"#;
        // Exponents are normalised (1e400 to 1e+400): the same value, every digit kept.
        assert_eq!(
            compact_json(body).unwrap(),
            r#"{"n":1180591620717411303425,"price":12345678901234567890.12345678901234567890,"id":18446744073709551615,"neg":-9223372036854775809,"e":1e+400,"f":1.0}"#
        );
    }

    #[test]
    fn fingerprints_compare_values_not_texts() {
        let fp = |s: &str| fingerprint(&parse_json(s.as_bytes()).unwrap());
        assert_eq!(
            fp(r#"{"a":1,"b":[1,{"x":"y","z":null}]}"#),
            fp(r#"{ "b": [1, {"z":null, "x":"y"}], "a": 1 }"#)
        );
        for (a, b) in [
            (r#"{"n":1180591620717411303425}"#, r#"{"n":1180591620717411303426}"#),
            (r#"{"a":"1"}"#, r#"{"a":1}"#),
            (r#"["ab","c"]"#, r#"["a","bc"]"#),
            (r#"{"a":{"b":1}}"#, r#"{"a":{"b":1},"c":null}"#),
            (r#"[[],[]]"#, r#"[[[]]]"#),
            (r#"{"ab":"c"}"#, r#"{"a":"bc"}"#),
        ] {
            assert_ne!(fp(a), fp(b), "{a} vs {b}");
        }
    }

    #[test]
    fn refuses_non_json() {
        for body in [&b"<html>"[..], b"", b"{\"a\":", b"\xff\xfe"] {
            assert!(matches!(compact_json(body), Err(FetchError::NotJson(_))));
        }
    }

    #[test]
    fn retry_after_forms() {
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(header::RETRY_AFTER, "999999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert(header::RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30), "{d:?}");
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
