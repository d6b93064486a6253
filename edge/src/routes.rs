//! The edge's HTTP surface: the SSE stream per event, the demo page, health,
//! readiness and Prometheus metrics. Every input (path, query, headers) is
//! validated here before anything else sees it.

use crate::{
    auth::{self, Auth, Events, TokenError},
    feeds::Feeds,
    limits::{Refused, StreamLimits},
    multi,
    pulse::Pulse,
    readiness::Readiness,
    stream,
    viewers::Viewers,
};
use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use futures_util::StreamExt;
use livepush::{EventId, ViewerId};
use serde::Deserialize;
use std::{net::SocketAddr, time::Duration};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Longest query string accepted (`vid` and `lastEventId` need far less),
/// not counting a `token` parameter, which has its own bound
/// ([`auth::MAX_TOKEN_LEN`]): a token naming many events is longer than the
/// rest of the query may be, and the whole head stays within 16 KiB.
const MAX_QUERY: usize = 512;
/// What a refused browser is told to wait before trying again.
const RETRY_AFTER_SECS: &str = "5";

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub feeds: Feeds,
    pub limits: StreamLimits,
    pub readiness: Readiness,
    pub viewers: Viewers,
    /// `--retry` (sent first on every stream), keep-alives, token deadlines
    /// and the drain of every stream.
    pub pulse: Pulse,
    /// `--auth-secret-file`: streams need a watch token (`None`: open).
    pub auth: Option<Auth>,
    /// `--max-events-per-stream`: most events of one multi-event stream.
    pub max_events_per_stream: usize,
}

/// The router for browsers; `allow_origin` is `--allow-origin` (empty:
/// same-origin only). With `admin_apart` (`--admin-listen`), the probes and
/// `/metrics` are left to [`admin`] on their own address.
pub fn app(state: AppState, allow_origin: &[String], admin_apart: bool) -> Router {
    // Installs the recorder before any metric handle is taken (so none is a
    // no-op) and registers the edge's metrics, so a scrape shows them all
    // from the start.
    livepush::metrics::edge();
    let demo_tokens = state.auth.as_ref().is_some_and(|auth| auth.demo_ttl().is_some());
    let router = Router::new();
    // Only with --demo-tokens: it hands a token to anyone who asks.
    let router = if demo_tokens { router.route("/demo/token", get(demo_token)) } else { router };
    let router = router
        .route("/", get(demo_page))
        .route("/live/{event_id}/stream", get(live_stream))
        .route("/live/stream", get(multi_stream));
    let router = if admin_apart { router } else { router.merge(admin_routes()) };
    let router = router.with_state(state);
    match cors(allow_origin) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// The operator's routes on `--admin-listen`: liveness, readiness, metrics.
pub fn admin(state: AppState) -> Router {
    livepush::metrics::edge();
    admin_routes().with_state(state)
}

fn admin_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
}

/// CORS for cross-origin `EventSource`s. With a list of origins the exact
/// origin is echoed with `Access-Control-Allow-Credentials: true` (what
/// `withCredentials: true` requires) and `Vary: Origin`; `*` allows any origin
/// without credentials. `Last-Event-ID` is allowed because browsers preflight
/// it when it is long or unusual.
fn cors(allow_origin: &[String]) -> Option<CorsLayer> {
    if allow_origin.is_empty() {
        return None;
    }
    let base = CorsLayer::new()
        .allow_methods([Method::GET])
        .allow_headers([HeaderName::from_static("last-event-id"), header::CACHE_CONTROL, header::ACCEPT])
        .max_age(Duration::from_secs(86_400));
    if allow_origin.iter().any(|o| o == "*") {
        return Some(base.allow_origin(AllowOrigin::any()));
    }
    let origins = allow_origin.iter().filter_map(|o| HeaderValue::from_str(o).ok());
    Some(base.allow_origin(AllowOrigin::list(origins)).allow_credentials(true))
}

async fn demo_page() -> Html<&'static str> {
    Html(include_str!("../static/index.html"))
}

/// `GET /metrics`: every metric of this process in the Prometheus text format.
async fn metrics() -> Response {
    ([(header::CONTENT_TYPE, livepush::metrics::CONTENT_TYPE)], livepush::metrics::render()).into_response()
}

async fn ready(State(app): State<AppState>) -> Response {
    match app.readiness.check() {
        Ok(()) => "ready\n".into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response(),
    }
}

#[derive(Deserialize)]
struct StreamQuery {
    vid: Option<String>,
    /// For EventSource polyfills that cannot set the `Last-Event-ID` header.
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
    /// A watch token; the `livepush_token` cookie keeps it out of logs.
    token: Option<String>,
}

/// `GET /live/{event_id}/stream`: `200 text/event-stream`, the latest value at
/// once, then every change; `204` for an event known to have ended (the way
/// to tell `EventSource` to stop reconnecting).
async fn live_stream(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(raw_id): Path<String>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if uri.query().is_some_and(|q| !query_fits(q)) {
        return plain(StatusCode::BAD_REQUEST, "query string is too long");
    }
    let id = match EventId::parse(&raw_id) {
        Ok(id) => id,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Ok(Query(query)) = query else {
        return plain(StatusCode::BAD_REQUEST, "query string is malformed");
    };
    let vid = match query.vid.as_deref().map(ViewerId::parse).transpose() {
        Ok(vid) => vid,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    // With tokens the token says who watches: a `vid` of its own is refused,
    // and no stream is anonymous.
    let (vid, deadline) = match &app.auth {
        None => (vid, None),
        Some(auth) => match auth.admit(query.token.as_deref(), &headers, std::slice::from_ref(&id)) {
            Err(refused) => return unauthorized(refused),
            Ok(admitted) if vid.as_ref().is_some_and(|vid| *vid != admitted.vid) => {
                return plain(StatusCode::BAD_REQUEST, "vid differs from the watch token's viewer id");
            }
            Ok(admitted) => (Some(admitted.vid), Some(admitted.deadline)),
        },
    };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.last_event_id.as_deref())
        .and_then(|v| v.trim().parse::<u64>().ok());

    let permit = match app.limits.acquire(peer.ip()) {
        Ok(permit) => permit,
        Err(refused) => return unavailable(refused),
    };
    let Some(watch) = app.feeds.watch(id) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    if watch.rx.borrow().ended {
        return StatusCode::NO_CONTENT.into_response();
    }
    let viewer = app.viewers.join(watch.event_id().clone(), vid);
    let pulse = app.pulse.follow(deadline);
    // The stream's permit and its viewer's presence live exactly as long as
    // the response body.
    let held = (permit, viewer);
    let body = stream::body(watch, last_event_id, pulse).map(move |chunk| {
        let _ = &held;
        chunk
    });
    event_stream(Body::from_stream(body))
}

/// `200 text/event-stream`, uncached and unbuffered by proxies.
fn event_stream(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no")),
        ],
        body,
    )
        .into_response()
}

/// `GET /live/stream?event=a&event=b&…`: many events on one stream (see
/// [`multi`]): `400` with a reason for no event, more than
/// `--max-events-per-stream` distinct ones or any invalid id (nothing is
/// watched then); `204` when every event is known to have ended. Otherwise
/// as a single-event stream: one connection in the limits, presence on
/// every event, tokens that must cover every event.
async fn multi_stream(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if uri.query().is_some_and(|q| !multi_query_fits(q, app.max_events_per_stream)) {
        return plain(StatusCode::BAD_REQUEST, "query string is too long");
    }
    let Ok(Query(pairs)) = query else {
        return plain(StatusCode::BAD_REQUEST, "query string is malformed");
    };
    let mut events: Vec<EventId> = Vec::new();
    let (mut vid, mut last_event_id, mut token) = (None, None, None);
    for (key, value) in &pairs {
        match key.as_str() {
            "event" => match EventId::parse(value) {
                Ok(id) if events.contains(&id) => {}
                Ok(_) if events.len() == app.max_events_per_stream => {
                    let reason = format!("too many events: at most {} per stream", app.max_events_per_stream);
                    return plain(StatusCode::BAD_REQUEST, &reason);
                }
                Ok(id) => events.push(id),
                Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("{e}: {value:?}")),
            },
            "vid" => vid = vid.or(Some(value.as_str())),
            "lastEventId" => last_event_id = last_event_id.or(Some(value.as_str())),
            "token" => token = token.or(Some(value.as_str())),
            _ => {}
        }
    }
    if events.is_empty() {
        return plain(StatusCode::BAD_REQUEST, "no event: expected ?event=ID, repeated for each event");
    }
    let vid = match vid.map(ViewerId::parse).transpose() {
        Ok(vid) => vid,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let (vid, deadline) = match &app.auth {
        None => (vid, None),
        Some(auth) => match auth.admit(token, &headers, &events) {
            Err(refused) => return unauthorized(refused),
            Ok(admitted) if vid.as_ref().is_some_and(|vid| *vid != admitted.vid) => {
                return plain(StatusCode::BAD_REQUEST, "vid differs from the watch token's viewer id");
            }
            Ok(admitted) => (Some(admitted.vid), Some(admitted.deadline)),
        },
    };
    let last_event_id =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).or(last_event_id).map(str::to_owned);

    let permit = match app.limits.acquire(peer.ip()) {
        Ok(permit) => permit,
        Err(refused) => return unavailable(refused),
    };
    let watches: Vec<_> = events
        .into_iter()
        .map(|id| {
            let watch = app.feeds.watch(id.clone()).filter(|w| !w.rx.borrow().ended);
            (id, watch)
        })
        .collect();
    if watches.iter().all(|(_, watch)| watch.is_none()) {
        return StatusCode::NO_CONTENT.into_response();
    }
    let viewers: Vec<_> = watches
        .iter()
        .filter(|(_, watch)| watch.is_some())
        .map(|(id, _)| app.viewers.join(id.clone(), vid.clone()))
        .collect();
    let pulse = app.pulse.follow(deadline);
    let held = (permit, viewers);
    let body = multi::body(watches, last_event_id.as_deref(), pulse).map(move |chunk| {
        let _ = &held;
        chunk
    });
    event_stream(Body::from_stream(body))
}

/// [`query_fits`] for multi-event streams, whose query may also hold up to
/// `max_events` `event=ID` pairs (ids percent-encoded at worst).
fn multi_query_fits(query: &str, max_events: usize) -> bool {
    let token = query.split('&').find(|p| p.starts_with("token=")).map_or(0, |p| p.len() + 1);
    let events = max_events * ("&event=".len() + 3 * livepush::event_id::MAX_LEN);
    query.len() - token.min(query.len()) <= MAX_QUERY + events
        && token <= "token=&".len() + auth::MAX_TOKEN_LEN
}

/// Whether `query` is within bounds: [`MAX_QUERY`] bytes without its
/// `token` parameter, which may add one token's length.
fn query_fits(query: &str) -> bool {
    let token = query.split('&').find(|p| p.starts_with("token=")).map_or(0, |p| p.len() + 1);
    query.len() - token.min(query.len()) <= MAX_QUERY && token <= "token=&".len() + auth::MAX_TOKEN_LEN
}

/// `GET /demo/token?event=ID&vid=VID` (only with `--demo-tokens`): what a
/// platform's backend does after its own login, minus the login. Answers the
/// token, and sets it as the `livepush_token` cookie for that event's stream
/// path, so one page can hold a token per event. With `event` repeated (at
/// most [`auth::MAX_EVENTS`]) the token covers them all and the cookie is
/// for the multi-event stream's path, `/live/stream`.
async fn demo_token(
    State(app): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let Some((auth, ttl)) = app.auth.as_ref().and_then(|a| Some((a, a.demo_ttl()?))) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(Query(pairs)) = query else {
        return plain(StatusCode::BAD_REQUEST, "expected ?event=ID&vid=VID");
    };
    let mut events: Vec<EventId> = Vec::new();
    let mut vid = None;
    for (key, value) in &pairs {
        match key.as_str() {
            "event" => match EventId::parse(value) {
                Ok(id) if events.contains(&id) => {}
                Ok(_) if events.len() == auth::MAX_EVENTS => {
                    let reason = format!("too many events: at most {} per token", auth::MAX_EVENTS);
                    return plain(StatusCode::BAD_REQUEST, &reason);
                }
                Ok(id) => events.push(id),
                Err(e) => return plain(StatusCode::BAD_REQUEST, &e.to_string()),
            },
            "vid" => vid = vid.or(Some(value.as_str())),
            _ => {}
        }
    }
    let (path, vid) = match (events.as_slice(), vid.map(ViewerId::parse)) {
        (_, Some(Err(e))) => return plain(StatusCode::BAD_REQUEST, &e.to_string()),
        ([], _) | (_, None) => return plain(StatusCode::BAD_REQUEST, "expected ?event=ID&vid=VID"),
        ([one], Some(Ok(vid))) => (format!("/live/{one}/"), vid),
        (_, Some(Ok(vid))) => ("/live/stream".to_owned(), vid),
    };
    let token = match auth.mint_now(vid, Events::Only(events), ttl) {
        Ok(token) => token,
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    // HttpOnly: page scripts never need to read it. A real backend on
    // another site adds `Secure; SameSite=None` (and the page opens its
    // EventSource with `withCredentials: true`).
    let cookie = format!(
        "{}={token}; Path={path}; Max-Age={}; HttpOnly; SameSite=Strict",
        auth::COOKIE,
        ttl.as_secs()
    );
    let mut response = plain(StatusCode::OK, &token);
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// `401` with the reason. `EventSource` stops for good on it; the page then
/// fetches a new token and opens a new one.
fn unauthorized(refused: TokenError) -> Response {
    let mut response = plain(StatusCode::UNAUTHORIZED, &refused.to_string());
    let headers = response.headers_mut();
    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("LivepushToken realm=\"livepush\""));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn unavailable(refused: Refused) -> Response {
    let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, &refused.to_string());
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
    response
}

/// A one-line plain-text answer.
fn plain(status: StatusCode, reason: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{reason}\n")).into_response()
}
