//! A media service whose answers the test scripts per event id, and which
//! records every request it gets (per event, with arrival times and how many
//! were in flight at once) so tests can count upstream load exactly.
//!
//! It also answers batch polls (`GET /batch?ids=a,b,c`, the poller's
//! `--media-batch-url`) from the same per-event script: one JSON object with
//! each 200 reply's body as its event's value, `null` for a 404 and the id
//! left out for anything else ([`Reply::missing`]). A batch gets an `ETag`
//! (and 304 on a match) when every value in it has a scripted `etag`, and a
//! test can replace whole batches that contain a given id
//! ([`TestMedia::set_batch_override`]).

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{net::TcpListener, time::Instant};

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Send the body in chunks without `Content-Length`.
    pub chunked: bool,
}

impl Reply {
    pub fn json(body: &str) -> Self {
        Self { status: 200, body: body.to_owned(), headers: vec![], delay: Duration::ZERO, chunked: false }
    }
    pub fn status(status: u16) -> Self {
        Self { status, ..Self::json("") }
    }
    /// A failure of this event alone: `/live` answers 500 and batch answers
    /// leave the id out (as for every status but 200 and 404).
    pub fn missing() -> Self {
        Self::status(500).body("left out of batch answers")
    }
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }
    pub fn body(mut self, body: &str) -> Self {
        self.body = body.to_owned();
        self
    }
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// A request the media service received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub event_id: String,
    pub at: Instant,
    pub headers: HeaderMap,
}

/// A batch request the media service received.
#[derive(Clone, Debug)]
pub struct BatchSeen {
    /// The ids asked for, in the request's order (duplicates kept).
    pub ids: Vec<String>,
    pub at: Instant,
    pub headers: HeaderMap,
    /// The status it was answered with (304 for a matching `If-None-Match`).
    pub status: u16,
    /// The `ETag` it was answered with, if any.
    pub etag: Option<String>,
}

impl BatchSeen {
    /// The value of `header` on this request, if it carried one.
    pub fn header(&self, header: &str) -> Option<String> {
        self.headers.get(header).map(|v| v.to_str().unwrap_or("<binary>").to_owned())
    }
}

#[derive(Default)]
struct Inner {
    replies: Mutex<HashMap<String, Reply>>,
    seen: Mutex<Vec<Seen>>,
    batches: Mutex<Vec<BatchSeen>>,
    /// Whole-batch replies, by an id that makes a batch get them.
    batch_overrides: Mutex<Vec<(String, Reply)>>,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    /// JSON bodies POSTed to `/presence/{event_id}` (the poller's
    /// `--heartbeat-url` forwarding).
    posts: Mutex<Vec<(String, serde_json::Value)>>,
    /// The headers of each of those POSTs, in the same order.
    post_headers: Mutex<Vec<HeaderMap>>,
}

#[derive(Clone)]
pub struct TestMedia {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl TestMedia {
    /// Starts the server; unscripted events answer `{"event":"<id>"}`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (media, app) = Self::app_at(listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        media
    }

    /// The scripted app, not yet served, and the handle that scripts and
    /// counts it: for serving the very same app on another transport (TLS in
    /// `tls_media`). `addr` is where the caller serves it.
    pub fn app_at(addr: SocketAddr) -> (Self, Router) {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/live/{event_id}", get(answer))
            .route("/batch", get(answer_batch))
            .route("/presence/{event_id}", axum::routing::post(record_post))
            .with_state(inner.clone());
        (Self { addr, inner }, app)
    }

    /// `--media-url` for the poller.
    pub fn template(&self) -> String {
        format!("http://{}/live/{{event_id}}", self.addr)
    }

    /// `--media-batch-url` for the poller.
    pub fn batch_template(&self) -> String {
        format!("http://{}/batch?ids={{event_ids}}", self.addr)
    }

    /// `--heartbeat-url` for the poller.
    pub fn heartbeat_template(&self) -> String {
        format!("http://{}/presence/{{event_id}}", self.addr)
    }

    /// Presence POSTs received, in order: (event id in the URL, JSON body).
    pub fn posts(&self) -> Vec<(String, serde_json::Value)> {
        self.inner.posts.lock().unwrap().clone()
    }

    /// The values of `header` on the presence POSTs received, in order.
    pub fn post_header_values(&self, header: &str) -> Vec<String> {
        let headers = self.inner.post_headers.lock().unwrap();
        headers
            .iter()
            .filter_map(|h| h.get(header))
            .map(|v| v.to_str().unwrap_or("<binary>").to_owned())
            .collect()
    }

    pub fn set(&self, event_id: &str, reply: Reply) {
        self.inner.replies.lock().unwrap().insert(event_id.to_owned(), reply);
    }

    pub fn set_json(&self, event_id: &str, body: &str) {
        self.set(event_id, Reply::json(body));
    }

    /// Answers every later batch request that names `event_id` with `reply`
    /// verbatim (status, body, headers, delay), whatever its other ids. The
    /// first override set for any of a batch's ids wins.
    pub fn set_batch_override(&self, event_id: &str, reply: Reply) {
        let mut overrides = self.inner.batch_overrides.lock().unwrap();
        overrides.retain(|(id, _)| id != event_id);
        overrides.push((event_id.to_owned(), reply));
    }

    /// Batches naming `event_id` are answered from the script again.
    pub fn clear_batch_override(&self, event_id: &str) {
        self.inner.batch_overrides.lock().unwrap().retain(|(id, _)| id != event_id);
    }

    /// Every batch request received, in order.
    pub fn batches(&self) -> Vec<BatchSeen> {
        self.inner.batches.lock().unwrap().clone()
    }

    /// Batch requests received.
    pub fn batch_count(&self) -> usize {
        self.inner.batches.lock().unwrap().len()
    }

    /// Batch requests that named `event_id` (once however often it was named).
    pub fn batch_appearances(&self, event_id: &str) -> usize {
        let batches = self.inner.batches.lock().unwrap();
        batches.iter().filter(|b| b.ids.iter().any(|id| id == event_id)).count()
    }

    /// Arrival times of the batch requests that named `event_id`.
    pub fn batch_times(&self, event_id: &str) -> Vec<Instant> {
        let batches = self.inner.batches.lock().unwrap();
        batches.iter().filter(|b| b.ids.iter().any(|id| id == event_id)).map(|b| b.at).collect()
    }

    /// Polls of `event_id` of either kind: its own requests plus the batch
    /// requests that named it.
    pub fn polls(&self, event_id: &str) -> usize {
        self.count(event_id) + self.batch_appearances(event_id)
    }

    /// Requests received for `event_id`.
    pub fn count(&self, event_id: &str) -> usize {
        self.inner.seen.lock().unwrap().iter().filter(|s| s.event_id == event_id).count()
    }

    /// Every request received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
    }

    /// Requests for `event_id` that carried `header`, with its values.
    pub fn header_values(&self, event_id: &str, header: &str) -> Vec<String> {
        let seen = self.inner.seen.lock().unwrap();
        let values = seen.iter().filter(|s| s.event_id == event_id).filter_map(|s| s.headers.get(header));
        values.map(|v| v.to_str().unwrap_or("<binary>").to_owned()).collect()
    }

    /// Arrival times of the requests for `event_id`.
    pub fn times(&self, event_id: &str) -> Vec<Instant> {
        self.inner.seen.lock().unwrap().iter().filter(|s| s.event_id == event_id).map(|s| s.at).collect()
    }

    pub fn total(&self) -> usize {
        self.inner.seen.lock().unwrap().len()
    }

    /// Most requests that were being answered at the same moment.
    pub fn max_inflight(&self) -> usize {
        self.inner.max_inflight.load(Ordering::SeqCst)
    }
}

async fn answer(
    State(inner): State<Arc<Inner>>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let now = inner.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    inner.max_inflight.fetch_max(now, Ordering::SeqCst);
    let reply = inner.replies.lock().unwrap().get(&event_id).cloned();
    let reply = reply.unwrap_or_else(|| Reply::json(&format!(r#"{{"event":"{event_id}"}}"#)));
    let conditional = not_modified(&reply, &headers);
    inner.seen.lock().unwrap().push(Seen { event_id: event_id.clone(), at: Instant::now(), headers });
    tokio::time::sleep(reply.delay).await;
    inner.inflight.fetch_sub(1, Ordering::SeqCst);
    let status =
        if conditional { StatusCode::NOT_MODIFIED } else { StatusCode::from_u16(reply.status).unwrap() };
    let body = if conditional {
        Body::empty()
    } else if reply.chunked {
        let chunks: Vec<Result<String, std::io::Error>> =
            reply.body.as_bytes().chunks(256).map(|c| Ok(String::from_utf8_lossy(c).into_owned())).collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    } else {
        Body::from(reply.body)
    };
    let mut response = (status, body).into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(HeaderName::from_static(name), HeaderValue::from_str(&value).unwrap());
    }
    response
}

/// `GET /batch?ids=a,b,c`: a scripted override if one names an id of the
/// batch, else the object built from the per-event script (see the module
/// comment), with a batch `ETag` derived from its members' and a 304 when
/// `If-None-Match` names it.
async fn answer_batch(
    State(inner): State<Arc<Inner>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(list) = query.get("ids") else {
        return (StatusCode::BAD_REQUEST, "the ids query parameter is missing").into_response();
    };
    let ids: Vec<String> = list.split(',').map(str::to_owned).collect();
    let now = inner.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    inner.max_inflight.fetch_max(now, Ordering::SeqCst);
    let overridden = {
        let overrides = inner.batch_overrides.lock().unwrap();
        overrides.iter().find(|(id, _)| ids.contains(id)).map(|(_, r)| r.clone())
    };
    let reply = match overridden {
        Some(reply) => reply,
        None => {
            let members: Vec<(String, Reply)> = {
                let script = inner.replies.lock().unwrap();
                let mut members: Vec<(String, Reply)> = Vec::new();
                for id in &ids {
                    if !members.iter().any(|(m, _)| m == id) {
                        let default = || Reply::json(&format!(r#"{{"event":"{id}"}}"#));
                        members.push((id.clone(), script.get(id).cloned().unwrap_or_else(default)));
                    }
                }
                members
            };
            let delay = members.iter().map(|(_, r)| r.delay).max().unwrap_or_default();
            let mut reply = Reply::json(&batch_body(&members)).delay(delay);
            reply.headers.push(("content-type", "application/json".into()));
            if let Some(etag) = batch_etag(&members) {
                if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
                    reply.status = 304;
                    reply.body.clear();
                }
                reply.headers.push(("etag", etag));
            }
            reply
        }
    };
    let etag = reply.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("etag")).map(|(_, v)| v.clone());
    let seen = BatchSeen { ids, at: Instant::now(), headers, status: reply.status, etag };
    inner.batches.lock().unwrap().push(seen);
    tokio::time::sleep(reply.delay).await;
    inner.inflight.fetch_sub(1, Ordering::SeqCst);
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), Body::from(reply.body)).into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(HeaderName::from_static(name), HeaderValue::from_str(&value).unwrap());
    }
    response
}

/// The batch object: a 200 reply's body verbatim (so a test can break the
/// JSON through one event), `null` for a 404, nothing for other statuses.
fn batch_body(replies: &[(String, Reply)]) -> String {
    let members = replies.iter().filter_map(|(id, reply)| {
        let value = match reply.status {
            200 => reply.body.as_str(),
            404 => "null",
            _ => return None,
        };
        Some(format!("{}:{value}", serde_json::Value::from(id.as_str())))
    });
    format!("{{{}}}", members.collect::<Vec<_>>().join(","))
}

/// A batch `ETag` when every value in it has a scripted `etag`: a hash of the
/// members and what each answers, so it changes with any of them.
fn batch_etag(replies: &[(String, Reply)]) -> Option<String> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (id, reply) in replies {
        id.hash(&mut h);
        reply.status.hash(&mut h);
        if reply.status == 200 {
            let etag = reply.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("etag"))?;
            etag.1.hash(&mut h);
        }
    }
    Some(format!("\"batch-{:016x}\"", h.finish()))
}

async fn record_post(
    State(inner): State<Arc<Inner>>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    let mut posts = inner.posts.lock().unwrap();
    posts.push((event_id, json));
    inner.post_headers.lock().unwrap().push(headers);
    StatusCode::NO_CONTENT
}

/// A 304 when the request's validators match the scripted `ETag` or
/// `Last-Modified`, as a well-behaved media service would answer.
fn not_modified(reply: &Reply, request: &HeaderMap) -> bool {
    let validator = |reply_header: &str, request_header: &str| {
        let ours = reply.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(reply_header));
        let theirs = request.get(request_header).and_then(|v| v.to_str().ok());
        matches!((ours, theirs), (Some((_, a)), Some(b)) if a == b)
    };
    reply.status == 200
        && (validator("etag", "if-none-match") || validator("last-modified", "if-modified-since"))
}
