//! The HTTP face of the simulator. It behaves like a well-mannered media
//! service so the poller's conditional requests, 304 handling and end-of-event
//! handling are exercised for real: validators on every live answer, 304 when
//! they match, 404 once an event has ended, 400 for ids the contract refuses.

use crate::sim::{Sim, Snapshot};
use axum::{
    Router,
    extract::{Path, State, rejection::PathRejection},
    http::{
        HeaderMap, HeaderValue, StatusCode,
        header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED},
    },
    response::{IntoResponse, Response},
    routing::{get, post},
};
use livepush::EventId;
use tracing::info;

/// The simulator's routes:
///
/// - `GET /live/{event_id}`: the event's current document (200, 304, 400, 404);
/// - `POST /admin/events/{event_id}/end` and `.../revive`: end or revive an event;
/// - `GET /stats`: `{"requests": N}`, the number of `GET /live` requests so far.
pub fn app(sim: Sim) -> Router {
    Router::new()
        .route("/live/{event_id}", get(live))
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
    json(StatusCode::OK, serde_json::json!({ "requests": sim.requests() }).to_string())
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
}
