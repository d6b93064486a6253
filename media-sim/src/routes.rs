//! The HTTP face of the simulator. It behaves like a well-mannered media
//! service so the poller's conditional requests, 304 handling and end-of-event
//! handling are exercised for real: validators on every live answer, 304 when
//! they match, 404 once an event has ended, 400 for ids the contract refuses.
//! The batch endpoint answers many events in one request the way a batching
//! media API would: one object keyed by id, one validator for the whole.

use crate::sim::{MAX_BATCH, Sim, Snapshot};
use axum::{
    Router,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::{
        HeaderMap, HeaderValue, StatusCode,
        header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED},
    },
    response::{IntoResponse, Response},
    routing::{get, post},
};
use livepush::EventId;
use std::collections::HashMap;
use tracing::info;

/// The simulator's routes:
///
/// - `GET /live/{event_id}`: the event's current document (200, 304, 400, 404);
/// - `GET /batch?ids=a,b,c`: one JSON object mapping each id to its document,
///   `null` for ended events (200, 304 on the whole batch's ETag, 400 for an
///   invalid id or more than [`MAX_BATCH`] ids);
/// - `POST /admin/events/{event_id}/end` and `.../revive`: end or revive an event;
/// - `GET /stats`: `{"requests": N, "batch_requests": M}`, the numbers of
///   `GET /live` and `GET /batch` requests so far.
pub fn app(sim: Sim) -> Router {
    Router::new()
        .route("/live/{event_id}", get(live))
        .route("/batch", get(batch))
        .route("/admin/events/{event_id}/end", post(end))
        .route("/admin/events/{event_id}/revive", post(revive))
        .route("/stats", get(stats))
        .with_state(sim)
}

async fn live(State(sim): State<Sim>, path: Result<Path<String>, PathRejection>, req: HeaderMap) -> Response {
    sim.record_request();
    let id = match event_id(path) {
        Ok(id) => id,
        Err(reason) => return (StatusCode::BAD_REQUEST, reason).into_response(),
    };
    let no_cache = [(CACHE_CONTROL, HeaderValue::from_static("no-cache"))];
    let Some(snapshot) = sim.current(&id) else {
        return (no_cache, json(StatusCode::NOT_FOUND, r#"{"error":"event ended"}"#.into())).into_response();
    };
    let mut headers = HeaderMap::from_iter(no_cache);
    if let Some(etag) = snapshot.etag.as_deref().and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert(ETAG, etag);
    }
    if let Some(modified) = snapshot.last_modified {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
            headers.insert(LAST_MODIFIED, v);
        }
    }
    if not_modified(&req, &snapshot) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, json(StatusCode::OK, snapshot.body)).into_response()
}

/// The query of `GET /batch`: `ids`, comma-separated event ids. The query is
/// percent-decoded first, so an encoded `,` separates too and an encoded `/`
/// is refused like a raw one.
type BatchQuery = Query<HashMap<String, String>>;

async fn batch(
    State(sim): State<Sim>,
    query: Result<BatchQuery, QueryRejection>,
    req: HeaderMap,
) -> Response {
    sim.record_batch_request();
    let ids = match batch_ids(query) {
        Ok(ids) => ids,
        Err(reason) => return (StatusCode::BAD_REQUEST, reason).into_response(),
    };
    let answer = sim.batch(&ids);
    let mut headers = HeaderMap::from_iter([(CACHE_CONTROL, HeaderValue::from_static("no-cache"))]);
    if let Some(etag) = answer.etag.as_deref().and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert(ETAG, etag);
    }
    let candidates = req.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    if let (Some(candidates), Some(etag)) = (candidates, answer.etag.as_deref())
        && etag_matches(candidates, etag)
    {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, json(StatusCode::OK, answer.body)).into_response()
}

/// The ids of a batch request, or the one-line reason (never echoing the
/// input) for the 400 that refuses it.
fn batch_ids(query: Result<BatchQuery, QueryRejection>) -> Result<Vec<EventId>, String> {
    let Query(mut query) = query.map_err(|_| "the query string is not valid".to_owned())?;
    let ids = query.remove("ids").ok_or("the ids query parameter is missing")?;
    let raw: Vec<&str> = ids.split(',').collect();
    if raw.len() > MAX_BATCH {
        return Err(format!("more than {MAX_BATCH} ids in one batch"));
    }
    raw.into_iter().map(|id| EventId::parse(id).map_err(|e| e.to_string())).collect()
}

async fn end(State(sim): State<Sim>, path: Result<Path<String>, PathRejection>) -> Response {
    let id = match event_id(path) {
        Ok(id) => id,
        Err(reason) => return (StatusCode::BAD_REQUEST, reason).into_response(),
    };
    match sim.end(id.clone()) {
        Ok(changed) => {
            if changed {
                info!(event_id = %id, "event ended");
            }
            admin_answer(&id, true)
        }
        Err(full) => (StatusCode::INSUFFICIENT_STORAGE, full.to_string()).into_response(),
    }
}

async fn revive(State(sim): State<Sim>, path: Result<Path<String>, PathRejection>) -> Response {
    let id = match event_id(path) {
        Ok(id) => id,
        Err(reason) => return (StatusCode::BAD_REQUEST, reason).into_response(),
    };
    if sim.revive(&id) {
        info!(event_id = %id, "event revived");
    }
    admin_answer(&id, false)
}

async fn stats(State(sim): State<Sim>) -> Response {
    let body = serde_json::json!({ "requests": sim.requests(), "batch_requests": sim.batch_requests() });
    json(StatusCode::OK, body.to_string())
}

/// The path's event id, or the one-line reason (never echoing the input) for
/// the 400 that refuses it.
fn event_id(path: Result<Path<String>, PathRejection>) -> Result<EventId, String> {
    let Path(raw) = path.map_err(|_| "event id is not a valid path segment".to_owned())?;
    EventId::parse(&raw).map_err(|e| e.to_string())
}

fn admin_answer(id: &EventId, ended: bool) -> Response {
    let body = serde_json::json!({ "event_id": id.as_str(), "ended": ended });
    json(StatusCode::OK, body.to_string())
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// Whether the request's validators match the current answer (RFC 9110
/// §13.2.2): `If-None-Match` decides when present; otherwise
/// `If-Modified-Since` is compared with the period start at full precision,
/// so a sub-second period never hides behind a whole-second date.
fn not_modified(req: &HeaderMap, snapshot: &Snapshot) -> bool {
    if let Some(candidates) = req.get(IF_NONE_MATCH) {
        let (Ok(candidates), Some(etag)) = (candidates.to_str(), snapshot.etag.as_deref()) else {
            return false;
        };
        return etag_matches(candidates, etag);
    }
    let since = req
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((snapshot.last_modified, since), (Some(modified), Some(since)) if modified <= since)
}

/// Whether an `If-None-Match` list names `etag`, by the weak comparison
/// `If-None-Match` calls for (a `W/` prefix is ignored); `*` matches anything.
fn etag_matches(candidates: &str, etag: &str) -> bool {
    candidates.split(',').map(str::trim).any(|c| c == "*" || c.strip_prefix("W/").unwrap_or(c) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn if_none_match_lists() {
        let etag = r#""00ff""#;
        for yes in [r#""00ff""#, r#""aa", "00ff""#, r#"W/"00ff""#, "*", r#" "x" ,W/"00ff" "#] {
            assert!(etag_matches(yes, etag), "{yes}");
        }
        for no in ["", r#""00fe""#, "00ff", r#""00ff"x"#, r#""aa", "bb""#] {
            assert!(!etag_matches(no, etag), "{no}");
        }
    }

    fn snapshot(etag: Option<&str>, modified_ms: Option<u64>) -> Snapshot {
        Snapshot {
            body: "{}".into(),
            etag: etag.map(Into::into),
            last_modified: modified_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    fn headers(pairs: &[(axum::http::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.clone(), HeaderValue::from_str(v).unwrap())).collect()
    }

    #[test]
    fn conditional_request_rules() {
        let date = "Sun, 01 Jan 2023 00:00:10 GMT"; // 1672531210 s
        let s = snapshot(Some(r#""e""#), Some(1_672_531_210_000));
        assert!(not_modified(&headers(&[(IF_NONE_MATCH, r#""e""#)]), &s));
        assert!(not_modified(&headers(&[(IF_MODIFIED_SINCE, date)]), &s));
        assert!(!not_modified(&headers(&[]), &s));
        // If-None-Match wins over a matching If-Modified-Since.
        assert!(!not_modified(&headers(&[(IF_NONE_MATCH, r#""old""#), (IF_MODIFIED_SINCE, date)]), &s));
        // A period that began 200ms after the date has changed since then.
        let later = snapshot(Some(r#""e""#), Some(1_672_531_210_200));
        assert!(!not_modified(&headers(&[(IF_MODIFIED_SINCE, date)]), &later));
        assert!(!not_modified(&headers(&[(IF_MODIFIED_SINCE, "yesterday")]), &s));
        // Stamped answers have no validators: never 304.
        let stamped = snapshot(None, None);
        assert!(!not_modified(&headers(&[(IF_NONE_MATCH, "*")]), &stamped));
        assert!(!not_modified(&headers(&[(IF_MODIFIED_SINCE, date)]), &stamped));
    }

    /// Serves `app(sim)` on an ephemeral port; returns its base URL.
    async fn serve(sim: Sim) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app(sim)).await });
        url
    }

    async fn get(url: &str, if_none_match: Option<&str>) -> (u16, HeaderMap, String) {
        let mut req = reqwest::Client::new().get(url);
        if let Some(v) = if_none_match {
            req = req.header(IF_NONE_MATCH, v);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, headers, resp.text().await.unwrap())
    }

    #[tokio::test]
    async fn batch_answers_one_object_with_null_for_ended_events_and_304_on_its_etag() {
        let sim = Sim::new(Duration::from_secs(3600), false);
        sim.end(EventId::parse("gone").unwrap()).unwrap();
        let base = serve(sim.clone()).await;
        let url = format!("{base}/batch?ids=a,gone,b~1");
        // Retry in the unlikely case an hour boundary passes in between.
        let (headers, body) = loop {
            let (status, headers, body) = get(&url, None).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(headers[CONTENT_TYPE], "application/json");
            let etag = headers[ETAG].to_str().unwrap().to_owned();
            let (status, again, empty) = get(&url, Some(&etag)).await;
            if status == 304 {
                assert_eq!(again[ETAG], etag.as_str());
                assert_eq!(empty, "");
                break (headers, body);
            }
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["gone"], serde_json::Value::Null);
        assert_eq!(v["a"]["event_id"], "a");
        assert_eq!(v["b~1"]["event_id"], "b~1");
        assert_eq!(v.as_object().unwrap().len(), 3);
        // Another validator, or none: the full answer.
        assert_eq!(get(&url, Some(r#""other""#)).await.0, 200);
        let etag = headers[ETAG].to_str().unwrap();
        // Ending a member changes the batch: its old ETag no longer matches.
        sim.end(EventId::parse("a").unwrap()).unwrap();
        let (status, _, body) = get(&url, Some(etag)).await;
        assert_eq!(status, 200);
        assert!(body.starts_with(r#"{"a":null,"gone":null,"b~1":{"#), "{body}");
    }

    #[tokio::test]
    async fn bad_batches_get_400_with_a_reason_and_everything_is_counted() {
        let sim = Sim::new(Duration::from_secs(2), false);
        let base = serve(sim.clone()).await;
        let many = (0..=MAX_BATCH).map(|i| format!("e{i}")).collect::<Vec<_>>().join(",");
        let most = (0..MAX_BATCH).map(|i| format!("e{i}")).collect::<Vec<_>>().join(",");
        for (query, reason) in [
            ("", "missing"),
            ("?other=a", "missing"),
            ("?ids=", "empty"),
            ("?ids=a,,b", "empty"),
            ("?ids=a,..", "dots"),
            ("?ids=a,b%2Fc", "may only contain"),
            ("?ids=a,b/c", "may only contain"),
            (&format!("?ids={}", "x".repeat(129)), "longer"),
            (&format!("?ids={many}"), "more than 1000"),
        ] {
            let (status, _, body) = get(&format!("{base}/batch{query}"), None).await;
            assert_eq!(status, 400, "{query}");
            assert!(body.contains(reason) && !body.contains('\n'), "{query}: {body}");
        }
        let (status, _, body) = get(&format!("{base}/batch?ids={most}"), None).await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v.as_object().unwrap().len(), MAX_BATCH);
        get(&format!("{base}/live/a"), None).await;
        let (_, _, stats) = get(&format!("{base}/stats"), None).await;
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        assert_eq!(stats, serde_json::json!({"requests": 1, "batch_requests": 10}));
    }
}
