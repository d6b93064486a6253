//! The poller's only door to the media service: one shared HTTP client (with
//! connection reuse), a cap on requests in flight across all events, a
//! per-request timeout, a body size limit, conditional requests, and a verdict
//! for every answer. Nothing the media service sends is forwarded unchecked.

use crate::media_url::MediaUrl;
use livepush::{
    EventId,
    metrics::{Counter, UpstreamOutcomes},
};
use reqwest::{StatusCode, header};
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
    /// A JSON document, compacted to one line.
    Json { data: String, validators: Validators },
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
    #[error("media service answered {status}")]
    Status { status: StatusCode, retry_after: Option<Duration> },
    #[error("media service body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("media service body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the media service body failed: {0}")]
    Body(#[source] reqwest::Error),
}

impl FetchError {
    /// How long the media service asked us to wait (429/503 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
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
    url: MediaUrl,
    timeout: Duration,
    max_body: usize,
    /// Bounds requests in flight across all events (`--max-inflight`).
    inflight: Arc<Semaphore>,
}

impl MediaClient {
    pub fn new(url: MediaUrl, timeout: Duration, max_body: usize, max_inflight: usize) -> Self {
        let http = http_client(timeout);
        Self { http, url, timeout, max_body, inflight: Arc::new(Semaphore::new(max_inflight)) }
    }

    /// Polls the media service once for `id`.
    pub async fn fetch(&self, id: &EventId, validators: &Validators) -> Result<Fetched, FetchError> {
        let _permit = self.inflight.acquire().await.expect("semaphore is never closed");
        let started = Instant::now();
        // The timeout covers headers and body, so a trickling body cannot hold
        // a permit forever.
        let result = match tokio::time::timeout(self.timeout, self.request(id, validators)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout(self.timeout)),
        };
        let metrics = livepush::metrics::poller();
        metrics.upstream_duration.record(started.elapsed());
        outcome_counter(&metrics.upstream, &result).increment(1);
        result
    }

    async fn request(&self, id: &EventId, validators: &Validators) -> Result<Fetched, FetchError> {
        let mut req = self.http.get(self.url.for_event(id)).header(header::ACCEPT, "application/json");
        if let Some(etag) = &validators.etag {
            req = req.header(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = &validators.last_modified {
            req = req.header(header::IF_MODIFIED_SINCE, lm.clone());
        }
        let mut resp = req.send().await.map_err(FetchError::Connect)?;
        let status = resp.status();
        match status {
            StatusCode::NOT_MODIFIED => return Ok(Fetched::NotModified),
            StatusCode::NOT_FOUND | StatusCode::GONE => return Ok(Fetched::Ended(status)),
            s if s.is_success() => {}
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
        if resp.content_length().is_some_and(|n| n > self.max_body as u64) {
            return Err(FetchError::TooLarge { limit: self.max_body });
        }
        let validators = Validators {
            etag: resp.headers().get(header::ETAG).cloned(),
            last_modified: resp.headers().get(header::LAST_MODIFIED).cloned(),
        };
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(FetchError::Body)? {
            if body.len() + chunk.len() > self.max_body {
                return Err(FetchError::TooLarge { limit: self.max_body });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched::Json { data: compact_json(&body)?, validators })
    }
}

/// The `outcome` a poll is counted under.
fn outcome_counter<'a>(outcomes: &'a UpstreamOutcomes, result: &Result<Fetched, FetchError>) -> &'a Counter {
    match result {
        Ok(Fetched::Json { .. }) => &outcomes.ok,
        Ok(Fetched::NotModified) => &outcomes.not_modified,
        Ok(Fetched::Ended(_)) => &outcomes.ended,
        Err(FetchError::Timeout(_)) => &outcomes.timeout,
        Err(FetchError::Connect(_)) => &outcomes.unreachable,
        Err(FetchError::Status { .. }) => &outcomes.http_error,
        Err(FetchError::TooLarge { .. }) => &outcomes.too_large,
        Err(FetchError::NotJson(_)) => &outcomes.bad_body,
        Err(FetchError::Body(_)) => &outcomes.body_error,
    }
}

/// The poller's HTTP client for the media service: connection reuse, a
/// connect timeout, and no redirects (the URL templates decide which server
/// the poller talks to, never the answers).
pub(crate) fn http_client(connect_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("livepush-poller/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("static HTTP client configuration is valid")
}

/// Re-serialises a JSON document on one line (key order kept). Serde escapes
/// control characters inside strings, so the result never holds CR or LF.
pub fn compact_json(body: &[u8]) -> Result<String, FetchError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(FetchError::NotJson)?;
    Ok(value.to_string())
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
