//! `--heartbeat-url`: hands the merged presence on to another service as one
//! small JSON POST per watched event per `--heartbeat-interval`, so that
//! service keeps learning who watches without every browser calling it.
//!
//! Forwarding has its own task and its own HTTP client: a slow or failing
//! receiver delays nothing but the forwarding itself, never polling or batch
//! handling. Posts run at most [`MAX_CONCURRENT_POSTS`] at a time, each within
//! `--media-timeout`, with at most [`MAX_RETRIES`] retries that fit within the
//! interval. Failures are counted and logged once per interval, not once per
//! request, so a dead receiver cannot flood the log.

use crate::{headers::RequestHeaders, media_url::MediaUrl, presence::PresenceStore};
use bytes::Bytes;
use livepush::EventId;
use reqwest::{StatusCode, Url, header};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{sync::Semaphore, time::Instant};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Posts in flight at once: enough to keep up with thousands of events per
/// interval against a receiver answering in a few milliseconds, few enough
/// not to hammer it.
pub const MAX_CONCURRENT_POSTS: usize = 16;
/// Retries of one failed post within a round (connection errors, timeouts,
/// 429 and 5xx; a 4xx will not get better by repeating it).
pub const MAX_RETRIES: u32 = 2;
/// First wait before a retry, doubled each time; shortened to a tenth of the
/// interval so that every retry fits within it (1/10 + 2/10).
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// The receiver's answer is read (and thrown away) up to this size so its
/// connection can be reused; a larger answer closes the connection instead.
const MAX_DRAINED_BODY: usize = 64 << 10;

/// Posts presence to `--heartbeat-url`; clones share the failure counter.
#[derive(Clone)]
pub struct PresenceForwarder {
    inner: Arc<Inner>,
}

/// Where and how presence is posted.
pub struct ForwardTo {
    /// The poller's shared client.
    pub http: reqwest::Client,
    pub headers: RequestHeaders,
    pub url: MediaUrl,
    /// How often each watched event is posted.
    pub interval: Duration,
    /// The bound on each post, its answer included.
    pub timeout: Duration,
}

struct Inner {
    to: ForwardTo,
    store: PresenceStore,
    failures: AtomicU64,
    posts: Arc<Semaphore>,
}

// Alike `FetchError` (media_client.rs) in its first variants on purpose:
// the same failures of another request, with their own messages and
// retry rules.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unreachable: {0}")]
    Send(#[source] reqwest::Error),
    #[error("TLS with {host} failed: {detail}")]
    Tls { host: String, detail: String },
    #[error("answered {0}")]
    Status(StatusCode),
}

impl PostError {
    fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Send(_) => true,
            // A certificate that does not verify will not within a round.
            Self::Tls { .. } => false,
            Self::Status(s) => s.is_server_error() || *s == StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl PresenceForwarder {
    /// Forwards `store`'s presence as `to` says; stops with the store's
    /// shutdown token.
    pub fn new(to: ForwardTo, store: PresenceStore) -> Self {
        let posts = Arc::new(Semaphore::new(MAX_CONCURRENT_POSTS));
        let failures = AtomicU64::new(0);
        let inner = Inner { to, store, failures, posts };
        Self { inner: Arc::new(inner) }
    }

    /// Posts that failed for good (after their retries) since start.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// Every interval, posts each event with viewers (and, once, each event
    /// that just lost its last viewer), until shutdown.
    pub async fn run(self) {
        let inner = &self.inner;
        let shutdown = inner.store.shutdown_token().clone();
        let deliveries = TaskTracker::new();
        let mut tick = tokio::time::interval_at(Instant::now() + inner.to.interval, inner.to.interval);
        // A round longer than the interval delays the next one rather than
        // starting rounds back to back.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = 0;
        info!(url = %inner.to.url, interval = ?inner.to.interval, "forwarding presence");
        'rounds: loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let failures = self.failures();
            if failures > reported {
                warn!(failed = failures - reported, total = failures, url = %inner.to.url, "presence posts failed");
                reported = failures;
            }
            let deadline = Instant::now() + inner.to.interval;
            for id in inner.store.forward_round() {
                let permit = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break 'rounds,
                    permit = inner.posts.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                };
                let this = self.clone();
                let shutdown = shutdown.clone();
                deliveries.spawn(async move {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => {}
                        () = this.deliver(&id, deadline) => {}
                    }
                    drop(permit);
                });
            }
        }
        deliveries.close();
        deliveries.wait().await;
    }

    /// Posts the current presence of `id`, retrying while time remains before
    /// `deadline` (the next round).
    async fn deliver(&self, id: &EventId, deadline: Instant) {
        let presence = self.inner.store.get(id);
        let body = serde_json::json!({
            "event_id": presence.event_id,
            "viewers": presence.viewers,
            "vids": presence.vids,
        });
        let body = Bytes::from(body.to_string());
        let url = self.inner.to.url.for_event(id);
        let mut backoff = RETRY_BACKOFF.min(self.inner.to.interval / 10);
        for attempt in 0..=MAX_RETRIES {
            let Err(error) = self.post(url.clone(), body.clone()).await else {
                livepush::metrics::poller().presence_posts_ok.increment(1);
                return;
            };
            let retry = error.is_retryable() && attempt < MAX_RETRIES && Instant::now() + backoff < deadline;
            debug!(event_id = %id, attempt, %error, retry, "presence post failed");
            if !retry {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        self.inner.failures.fetch_add(1, Ordering::Relaxed);
        livepush::metrics::poller().presence_posts_failed.increment(1);
    }

    async fn post(&self, url: Url, body: Bytes) -> Result<(), PostError> {
        let timeout = self.inner.to.timeout;
        let request = async {
            let mut resp = self
                .inner
                .to
                .http
                .post(url.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .headers((*self.inner.to.headers.current()).clone())
                .body(body)
                .send()
                .await
                .map_err(|e| match crate::media_client::tls_failure(&e) {
                    Some(detail) => {
                        PostError::Tls { host: url.host_str().unwrap_or_default().to_owned(), detail }
                    }
                    None => PostError::Send(e),
                })?;
            let status = resp.status();
            let mut read = 0;
            while let Ok(Some(chunk)) = resp.chunk().await {
                read += chunk.len();
                if read > MAX_DRAINED_BODY {
                    break;
                }
            }
            if status.is_success() { Ok(()) } else { Err(PostError::Status(status)) }
        };
        // The timeout covers the answer's body too.
        tokio::time::timeout(timeout, request).await.unwrap_or(Err(PostError::Timeout(timeout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livepush::proto::{EventViewers, HeartbeatBatch};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        sync::mpsc,
    };
    use tokio_util::sync::CancellationToken;

    /// A minimal HTTP/1.1 receiver: answers every request with `status` (one
    /// request per connection) and reports `(path, body)`.
    async fn receiver(status: u16) -> (String, mpsc::UnboundedReceiver<(String, serde_json::Value)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head_end, len) = loop {
                        let n = conn.read(&mut chunk).await.unwrap();
                        assert!(n > 0, "connection closed mid-request");
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse().unwrap());
                            break (end + 4, len);
                        }
                    };
                    while buf.len() < head_end + len {
                        let n = conn.read(&mut chunk).await.unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let path = head.split(' ').nth(1).unwrap().to_string();
                    assert!(head.starts_with("POST "), "{head}");
                    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
                    let answer =
                        format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    conn.write_all(answer.as_bytes()).await.unwrap();
                    let _ = tx.send((path, body));
                });
            }
        });
        (format!("http://{addr}/presence/{{event_id}}"), rx)
    }

    fn batch(events: Vec<EventViewers>) -> HeartbeatBatch {
        HeartbeatBatch { edge_id: "e1".into(), interval_ms: 60_000, events }
    }

    fn forwarder(url: &str, interval_ms: u64) -> (PresenceStore, PresenceForwarder, CancellationToken) {
        let stop = CancellationToken::new();
        let store = PresenceStore::new(stop.clone());
        let url = MediaUrl::parse(url).unwrap();
        let tls = crate::tls::client_config(None, None).unwrap();
        let to = ForwardTo {
            http: crate::media_client::http_client(tls, Duration::from_secs(1)),
            headers: RequestHeaders::none(),
            url,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_secs(1),
        };
        let f = PresenceForwarder::new(to, store.clone());
        (store, f, stop)
    }

    /// A forwarder (one-second rounds) running against a receiver that
    /// answers every post with `status`, with one event of two anonymous
    /// viewers to post.
    async fn one_event_answered_with(
        status: u16,
    ) -> (
        mpsc::UnboundedReceiver<(String, serde_json::Value)>,
        PresenceForwarder,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let (url, posts) = receiver(status).await;
        let (store, f, stop) = forwarder(&url, 1000);
        store.report(batch(vec![EventViewers { event_id: "x".into(), vids: vec![], anonymous: 2 }])).unwrap();
        let task = tokio::spawn(f.clone().run());
        (posts, f, stop, task)
    }

    /// Cancels the forwarder and waits (at most a second) for its task.
    async fn stopped(stop: CancellationToken, task: tokio::task::JoinHandle<()>) {
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task).await.unwrap().unwrap();
    }

    async fn next(
        rx: &mut mpsc::UnboundedReceiver<(String, serde_json::Value)>,
    ) -> (String, serde_json::Value) {
        tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.expect("no post in time").unwrap()
    }

    #[tokio::test]
    async fn posts_events_with_viewers_then_one_zero() {
        let (url, mut posts) = receiver(200).await;
        let (store, f, stop) = forwarder(&url, 150);
        let vids = vec!["b".to_string(), "a".to_string()];
        store.report(batch(vec![EventViewers { event_id: "ev-1".into(), vids, anonymous: 1 }])).unwrap();
        let task = tokio::spawn(f.clone().run());

        let (path, body) = next(&mut posts).await;
        assert_eq!(path, "/presence/ev-1");
        assert_eq!(body, serde_json::json!({"event_id": "ev-1", "viewers": 3, "vids": ["a", "b"]}));
        // Posted again next round.
        assert_eq!(next(&mut posts).await.1["viewers"], 3);

        store.report(batch(vec![])).unwrap();
        // Drain what was already in flight, then expect exactly one zero.
        let zero = loop {
            let (_, body) = next(&mut posts).await;
            if body["viewers"] == 0 {
                break body;
            }
        };
        assert_eq!(zero, serde_json::json!({"event_id": "ev-1", "viewers": 0, "vids": []}));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(posts.try_recv().is_err(), "an event without viewers is posted once");
        assert_eq!(f.failures(), 0);

        stopped(stop, task).await;
    }

    #[tokio::test]
    async fn failures_are_retried_then_counted() {
        // Retries wait 100 ms then 200 ms: all within the one-second round.
        let (mut posts, f, stop, task) = one_event_answered_with(503).await;
        for _ in 0..=MAX_RETRIES {
            next(&mut posts).await;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while f.failures() == 0 {
            assert!(Instant::now() < deadline, "the failure was never counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(f.failures(), 1, "one failure per post, not per attempt");
        assert!(posts.try_recv().is_err(), "at most {MAX_RETRIES} retries");
        stopped(stop, task).await;
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let (mut posts, f, stop, task) = one_event_answered_with(400).await;
        next(&mut posts).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(f.failures(), 1);
        assert!(posts.try_recv().is_err(), "a 400 is not retried");
        stopped(stop, task).await;
    }

    #[tokio::test]
    async fn an_unreachable_receiver_stops_nothing() {
        // A port nobody listens on any more: connections are refused at once.
        let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let (store, f, stop) = forwarder(&format!("http://127.0.0.1:{port}/p/{{event_id}}"), 100);
        store.report(batch(vec![EventViewers { event_id: "x".into(), vids: vec![], anonymous: 1 }])).unwrap();
        let task = tokio::spawn(f.clone().run());
        let deadline = Instant::now() + Duration::from_secs(3);
        while f.failures() == 0 {
            assert!(Instant::now() < deadline, "the failure was never counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Batches are still handled at once meanwhile.
        store.report(batch(vec![])).unwrap();
        stopped(stop, task).await;
    }
}
