//! Change hints and direct publish: the media service (or any internal
//! service holding the publish token) tells the poller that an event
//! changed, instead of waiting for the next poll.
//!
//! - `POST /events/{event_id}/changed` on the gRPC port (HTTP/1.1 or h2c,
//!   beside `/metrics`), or `livepush.v1.LiveFeed/Publish`;
//! - `Authorization: Bearer TOKEN` with the `--publish-token-file` token;
//!   without that flag nothing is accepted (403 / FAILED_PRECONDITION);
//! - an empty body polls the event now (coalesced per event by its poll
//!   task: see [`crate::poll_loop`]); a JSON body is published at once as
//!   the event's value (the next regular poll still confirms it), at most
//!   `--max-body` bytes;
//! - a poller that does not watch the event forwards the hint to its
//!   `--peers` (once: a forwarded hint carries `livepush-forwarded: 1` and
//!   is never forwarded again), so a hint sent to any poller of a cluster
//!   reaches the one that polls the event; an event nobody watches is
//!   accepted and ignored (202).

use crate::{
    clients::{Digest, digest},
    media_client::{FetchError, compact_json, fingerprint},
    peers::Peers,
    registry::{Hint, HintOutcome, Registry},
};
use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use livepush::{EventId, bearer, watched_file};
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

/// Marks a hint one poller forwarded to another.
pub const FORWARDED: &str = "livepush-forwarded";
/// Largest token file read.
const MAX_FILE: u64 = 16 << 10;

/// `--publish-token-file`: its path and the digest of the token it held when
/// the flags were parsed. `Debug` shows neither token nor digest.
#[derive(Clone)]
pub struct PublishTokenFile {
    pub path: String,
    loaded: u64,
    digest: Digest,
}

impl std::fmt::Debug for PublishTokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishTokenFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl PublishTokenFile {
    /// Reads and checks the file (the flag's value parser); errors never
    /// show the file's contents.
    pub fn load(path: &str) -> Result<Self, String> {
        let text = watched_file::read_bounded(path, MAX_FILE)?;
        let digest = parse(&text).map_err(|e| format!("{path}: {e}"))?;
        Ok(Self { path: path.to_owned(), loaded: watched_file::fingerprint(&text), digest })
    }
}

/// The digest of the one token in a token file's text.
fn parse(text: &str) -> Result<Digest, String> {
    bearer::from_file(text).map(digest)
}

/// Why a hint was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("publishing is off: the poller has no --publish-token-file")]
    Disabled,
    #[error("a valid publish token is required (Authorization: Bearer TOKEN)")]
    Unauthenticated,
    #[error("{0}")]
    InvalidId(String),
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is larger than --max-body ({0} bytes)")]
    TooLarge(usize),
}

/// What became of an accepted hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub outcome: &'static str,
    /// Pollers that took the forwarded hint.
    pub peers: u32,
}

/// Accepts hints and publishes; clones share it.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    /// The token's digest (None: publishing is off).
    token: Option<watch::Receiver<Digest>>,
    forwarding: Forwarding,
    max_body: usize,
}

/// How hints reach the other pollers.
pub struct Forwarding {
    pub peers: Peers,
    /// The poller's HTTP client (its TLS trust for `https://` peers).
    pub http: reqwest::Client,
    /// Bound of one forward.
    pub timeout: Duration,
}

impl Publisher {
    /// Follows `token`'s file (if any) until `stop`.
    pub fn new(
        registry: Registry,
        token: Option<&PublishTokenFile>,
        forwarding: Forwarding,
        max_body: usize,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let token = token.map(|file| {
            info!(path = %file.path, "publish token loaded: change hints and publishes accepted");
            let (tx, rx) = watch::channel(file.digest);
            let (path, loaded) = (file.path.clone(), file.loaded);
            tasks.spawn(async move {
                let what = format!("publish token file {path}");
                watched_file::follow(&what, &path, MAX_FILE, Some(loaded), stop, |text| match parse(text) {
                    Ok(d) => {
                        tx.send_replace(d);
                        info!(%path, "publish token file changed: new token in use");
                    }
                    Err(e) => {
                        warn!(%path, error = %e, "publish token file is invalid; keeping the last token")
                    }
                })
                .await
            });
            rx
        });
        Self { inner: Arc::new(Inner { registry, token, forwarding, max_body }) }
    }

    /// Largest body accepted.
    pub fn max_body(&self) -> usize {
        self.inner.max_body
    }

    /// Checks an `authorization` value against the publish token.
    pub fn authorize(&self, authorization: Option<&str>) -> Result<(), Refused> {
        let hints = &livepush::metrics::poller().hints;
        let Some(token) = &self.inner.token else {
            hints.refused_disabled.increment(1);
            return Err(Refused::Disabled);
        };
        // Digests are compared, so the time taken tells nothing of the token.
        let presented = authorization.and_then(bearer::from_header).map(digest);
        if presented.is_none_or(|d| d != *token.borrow()) {
            hints.refused_unauthenticated.increment(1);
            return Err(Refused::Unauthenticated);
        }
        Ok(())
    }

    /// Applies an authorized hint: `body` empty polls the event now, a JSON
    /// document publishes it. `forwarded`: it came from another poller, so
    /// it is not sent on again.
    pub async fn hint(
        &self,
        event_id: &str,
        body: &[u8],
        forwarded: bool,
        authorization: &str,
    ) -> Result<Accepted, Refused> {
        let refused_invalid = || livepush::metrics::poller().hints.refused_invalid.increment(1);
        let id = EventId::parse(event_id).map_err(|e| {
            refused_invalid();
            Refused::InvalidId(e.to_string())
        })?;
        if body.len() > self.inner.max_body {
            refused_invalid();
            return Err(Refused::TooLarge(self.inner.max_body));
        }
        let hint = if body.iter().all(u8::is_ascii_whitespace) {
            Hint::Poll
        } else {
            let data = compact_json(body).map_err(|e| {
                refused_invalid();
                match e {
                    FetchError::NotJson(e) => Refused::NotJson(e.to_string()),
                    other => Refused::NotJson(other.to_string()),
                }
            })?;
            let value: serde_json::Value = serde_json::from_str(&data).expect("compacted from JSON");
            Hint::Publish { fingerprint: fingerprint(&value), data }
        };
        livepush::metrics::poller().hints.received.increment(1);
        match self.inner.registry.hint(&id, hint) {
            HintOutcome::Poll => Ok(Accepted { outcome: "poll", peers: 0 }),
            HintOutcome::Published => Ok(Accepted { outcome: "published", peers: 0 }),
            HintOutcome::NotWatched if forwarded => Ok(Accepted { outcome: "ignored", peers: 0 }),
            HintOutcome::NotWatched => {
                let peers = self.forward(&id, body, authorization).await;
                if peers == 0 {
                    Ok(Accepted { outcome: "ignored", peers })
                } else {
                    Ok(Accepted { outcome: "forwarded", peers })
                }
            }
        }
    }

    /// Sends the hint to every peer at once, with the caller's
    /// `authorization` (the peers share the token); how many took it.
    async fn forward(&self, id: &EventId, body: &[u8], authorization: &str) -> u32 {
        let Forwarding { peers, http, timeout } = &self.inner.forwarding;
        let peers = peers.current();
        if peers.is_empty() {
            return 0;
        }
        let body = bytes::Bytes::copy_from_slice(body);
        let sends = peers.iter().map(|peer| {
            let request = http
                .post(format!("{}/events/{}/changed", peer.base, id.as_str()))
                .header(header::AUTHORIZATION, authorization)
                .header(FORWARDED, "1")
                .header(header::CONTENT_TYPE, "application/json")
                .timeout(*timeout)
                .body(body.clone());
            async move {
                match request.send().await {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => true,
                    Ok(r) => {
                        warn!(peer = %peer.base, status = %r.status(), "a peer refused a forwarded hint");
                        false
                    }
                    Err(e) => {
                        warn!(peer = %peer.base, error = %e, "cannot forward a hint to a peer");
                        false
                    }
                }
            }
        });
        let took = futures_util::future::join_all(sends).await.into_iter().filter(|ok| *ok).count() as u32;
        livepush::metrics::poller().hints.forwarded.increment(1);
        took
    }
}

/// `POST /events/{event_id}/changed`.
pub async fn changed(
    State(publisher): State<Publisher>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Err(refused) = publisher.authorize(authorization) {
        return refusal(refused);
    }
    let authorization = authorization.expect("authorized");
    // Read at most one byte beyond the limit: enough to tell it is too large.
    let limit = publisher.max_body();
    let body = match axum::body::to_bytes(body, limit.saturating_add(1)).await {
        Ok(body) => body,
        Err(_) => {
            livepush::metrics::poller().hints.refused_invalid.increment(1);
            return refusal(Refused::TooLarge(limit));
        }
    };
    let forwarded = headers.contains_key(FORWARDED);
    match publisher.hint(&event_id, &body, forwarded, authorization).await {
        Ok(accepted) => {
            let answer = serde_json::json!({
                "event_id": event_id,
                "outcome": accepted.outcome,
                "peers": accepted.peers,
            });
            (
                StatusCode::ACCEPTED,
                [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                answer.to_string(),
            )
                .into_response()
        }
        Err(refused) => refusal(refused),
    }
}

/// A refusal as an HTTP answer with a one-line reason.
fn refusal(refused: Refused) -> Response {
    let status = match refused {
        Refused::Disabled => StatusCode::FORBIDDEN,
        Refused::Unauthenticated => StatusCode::UNAUTHORIZED,
        Refused::InvalidId(_) | Refused::NotJson(_) => StatusCode::BAD_REQUEST,
        Refused::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
    };
    let mut response = (status, format!("{refused}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// A refusal as a gRPC status.
pub fn status(refused: Refused) -> tonic::Status {
    let message = refused.to_string();
    match refused {
        Refused::Disabled => tonic::Status::failed_precondition(message),
        Refused::Unauthenticated => tonic::Status::unauthenticated(message),
        Refused::InvalidId(_) | Refused::NotJson(_) => tonic::Status::invalid_argument(message),
        Refused::TooLarge(_) => tonic::Status::out_of_range(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_keep_only_a_digest() {
        assert_eq!(
            parse("# the publish token\n  abcdefghijklmnop0123  \n"),
            Ok(digest("abcdefghijklmnop0123"))
        );
        assert!(parse("short").is_err());
    }
}
