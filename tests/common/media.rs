//! A media service whose answers the test scripts per event id, and which
//! records every request it gets (per event, with arrival times and how many
//! were in flight at once) so tests can count upstream load exactly.

use axum::{
    Router,
    extract::{Path, State},
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
}

impl Reply {
    pub fn json(body: &str) -> Self {
        Self { status: 200, body: body.to_owned(), headers: vec![], delay: Duration::ZERO }
    }
    pub fn status(status: u16) -> Self {
        Self { status, body: String::new(), headers: vec![], delay: Duration::ZERO }
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

#[derive(Default)]
struct Inner {
    replies: Mutex<HashMap<String, Reply>>,
    seen: Mutex<Vec<Seen>>,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
}

#[derive(Clone)]
pub struct TestMedia {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl TestMedia {
    /// Starts the server; unscripted events answer `{"event":"<id>"}`.
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new().route("/live/{event_id}", get(answer)).with_state(inner.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, inner }
    }

    /// `--media-url` for the poller.
    pub fn template(&self) -> String {
        format!("http://{}/live/{{event_id}}", self.addr)
    }

    pub fn set(&self, event_id: &str, reply: Reply) {
        self.inner.replies.lock().unwrap().insert(event_id.to_owned(), reply);
    }

    pub fn set_json(&self, event_id: &str, body: &str) {
        self.set(event_id, Reply::json(body));
    }

    /// Requests received for `event_id`.
    pub fn count(&self, event_id: &str) -> usize {
        self.inner.seen.lock().unwrap().iter().filter(|s| s.event_id == event_id).count()
    }

    /// Every request received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
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
    inner.seen.lock().unwrap().push(Seen { event_id: event_id.clone(), at: Instant::now(), headers });
    let reply = inner.replies.lock().unwrap().get(&event_id).cloned();
    let reply = reply.unwrap_or_else(|| Reply::json(&format!(r#"{{"event":"{event_id}"}}"#)));
    tokio::time::sleep(reply.delay).await;
    inner.inflight.fetch_sub(1, Ordering::SeqCst);
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(HeaderName::from_static(name), HeaderValue::from_str(&value).unwrap());
    }
    response
}
