//! The edge's HTTP surface: the SSE stream per event, the demo page and health.

use crate::{
    feeds::Feeds,
    stream::{self, Options, Resume},
};
use axum::{
    Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use livepush::EventId;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub feeds: Feeds,
    pub retry: Duration,
    pub keepalive: Duration,
    pub shutdown: CancellationToken,
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(demo_page))
        .route("/live/{event_id}/stream", get(live_stream))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

async fn demo_page() -> Html<&'static str> {
    Html(include_str!("../static/index.html"))
}

/// `GET /live/{event_id}/stream`: `200 text/event-stream`, the latest value at
/// once, then every change.
async fn live_stream(
    State(app): State<AppState>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let id = match EventId::parse(&raw_id) {
        Ok(id) => id,
        Err(e) => return bad_request(&e.to_string()),
    };
    let resume = Resume { last_event_id: last_event_id(&headers) };
    let watch = app.feeds.watch(id);
    let opts = Options { retry: app.retry, keepalive: app.keepalive, shutdown: app.shutdown.clone() };
    let body = Body::from_stream(stream::body(watch, resume, opts));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no")),
        ],
        body,
    )
        .into_response()
}

/// The `Last-Event-ID` header as a `seq`; anything malformed is ignored.
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers.get("last-event-id")?.to_str().ok()?.trim().parse().ok()
}

fn bad_request(reason: &str) -> Response {
    (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{reason}\n"))
        .into_response()
}
