//! Watch tokens end to end: an edge started with `--auth-secret-file` serves
//! only streams with a valid token (query or cookie), refuses the rest with
//! `401` and a one-line reason, fixes the viewer id, closes streams a grace
//! after their token expired, and counts presence by the tokens' viewer ids.
//! The token algorithm is checked against an independent implementation
//! (the Python in README.md, run with python3) and the README's test vector.

use edge::auth::{self, Claims, Events, Secret};
use livepush::proto::{PresenceRequest, presence_client::PresenceClient};
use livepush::{EventId, ViewerId};
use livepush_tests::{
    PATIENCE, Running, TestMedia, browser::Browser, read_for, sse::SseClient, start_edge, start_poller,
};
use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const EDGE_BIN: &str = env!("CARGO_BIN_EXE_livepush-test-edge");
/// The README's test vector.
const VECTOR_SECRET: &[u8] = b"livepush-test-vector-secret-32-bytes";
const VECTOR_TOKEN: &str = "djEAMTc2NzIyNTYwMAAxNzY3MjI2MjAwAHZpZXdlci00MgBkZW1vLTEAbWF0Y2guZmluYWw.F72xf4FTDiktuYplUqV41SD9yMNGJ3c2wGHefozTupw";

/// Secret files in a directory of their own, removed with it.
struct Secrets(PathBuf);

impl Secrets {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("livepush-auth-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `bytes` (and a newline, as `echo` would) to `name`.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, [bytes, b"\n"].concat()).unwrap();
        path
    }
}

impl Drop for Secrets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SECRET: &[u8] = b"current-secret-current-secret-current!";
const OLD_SECRET: &[u8] = b"previous-secret-previous-secret-previous";
const OTHER_SECRET: &[u8] = b"someone-elses-secret-someone-elses-secret";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A token signed with `secret` for `vid` and `events` (`*`: all), issued
/// now and valid `ttl` seconds.
fn token(secret: &[u8], vid: &str, events: &[&str], ttl: u64) -> String {
    let events = match events {
        ["*"] => Events::All,
        ids => Events::Only(ids.iter().map(|e| EventId::parse(e).unwrap()).collect()),
    };
    let issued_at = now();
    let claims =
        Claims { issued_at, expires_at: issued_at + ttl, vid: ViewerId::parse(vid).unwrap(), events };
    auth::mint(&Secret::new(secret).unwrap(), &claims).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

async fn poller(media: &TestMedia) -> Running {
    start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await
}

fn stream_url(edge: &Running, event: &str) -> String {
    format!("{}/live/{event}/stream", edge.url())
}

/// A stream request over raw TCP: HTTP/1.1 is served by the edge's lean
/// path, HTTP/1.0 by hyper; both go through the same router. Returns the
/// status, the head (lower-case) and the body of a complete answer (a
/// refusal).
async fn refusal(edge: &Running, version: &str, target: &str, cookie: Option<&str>) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    let request = format!("GET {target} HTTP/{version}\r\nHost: e\r\n{cookie}Connection: close\r\n\r\n");
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await.expect("a complete answer").unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_in_the_query_or_a_cookie_opens_the_stream() {
    let media = TestMedia::start().await;
    media.set_json("match", r#"{"m":1}"#);
    media.set_json("other", r#"{"o":1}"#);
    let poller = poller(&media).await;
    let secrets = Secrets::new("valid");
    let edge =
        start_edge(&["--poller", &poller.url(), "--auth-secret-file", p(&secrets.file("s", SECRET))]).await;
    let url = stream_url(&edge, "match");
    let t = token(SECRET, "ann", &["match"], 600);

    let mut by_query = SseClient::open(&format!("{url}?token={t}")).await;
    assert_eq!(by_query.status, 200);
    assert_eq!(by_query.next_message().await.data, r#"{"m":1}"#);

    let mut by_cookie =
        SseClient::open_with(&url, &[("cookie", &format!("theme=dark; livepush_token={t}"))]).await;
    assert_eq!(by_cookie.status, 200);
    assert_eq!(by_cookie.next_message().await.data, r#"{"m":1}"#);

    // The token's own vid may be repeated; lastEventId still works beside it.
    let mut with_vid = SseClient::open(&format!("{url}?vid=ann&lastEventId=1&token={t}")).await;
    assert_eq!(with_vid.status, 200);
    with_vid.next_message().await;

    // A token for all events opens any of them.
    let all = token(SECRET, "ann", &["*"], 600);
    for event in ["match", "other"] {
        let mut s =
            SseClient::open_with(&stream_url(&edge, event), &[("cookie", &format!("livepush_token={all}"))])
                .await;
        assert_eq!(s.status, 200, "{event}");
        s.next_message().await;
    }

    // Of several livepush_token cookies (one per path), one that covers the
    // event is enough.
    let for_other = token(SECRET, "ann", &["other"], 600);
    let both = format!("livepush_token={for_other}; livepush_token={t}");
    let mut s = SseClient::open_with(&url, &[("cookie", &both)]).await;
    assert_eq!(s.status, 200);
    s.next_message().await;

    // Without --auth-secret-file nothing changes: anonymous streams, and a
    // token is ignored.
    let open = start_edge(&["--poller", &poller.url()]).await;
    assert_eq!(SseClient::open(&stream_url(&open, "match")).await.status, 200);
    assert_eq!(SseClient::open(&format!("{}?token=junk", stream_url(&open, "match"))).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_with_a_one_line_reason_on_both_http_paths() {
    let media = TestMedia::start().await;
    let poller = poller(&media).await;
    let secrets = Secrets::new("refusals");
    let edge =
        start_edge(&["--poller", &poller.url(), "--auth-secret-file", p(&secrets.file("s", SECRET))]).await;

    let good = token(SECRET, "ann", &["match"], 600);
    let expired = {
        let claims = Claims {
            issued_at: now() - 700,
            expires_at: now() - 100,
            vid: ViewerId::parse("ann").unwrap(),
            events: Events::Only(vec![EventId::parse("match").unwrap()]),
        };
        auth::mint(&Secret::new(SECRET).unwrap(), &claims).unwrap()
    };
    // The payload re-encoded with another viewer id, the signature kept.
    let tampered = {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let (payload, sig) = good.split_once('.').unwrap();
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let forged = payload.replace("\0ann\0", "\0bob\0");
        assert_ne!(forged, payload);
        format!("{}.{sig}", URL_SAFE_NO_PAD.encode(forged))
    };
    let wrong_secret = token(OTHER_SECRET, "ann", &["match"], 600);
    let previous_secret = token(OLD_SECRET, "ann", &["match"], 600);
    let other_event = token(SECRET, "ann", &["other", "match.2"], 600);

    let target = "/live/match/stream";
    let cases: Vec<(String, Option<String>, &str)> = vec![
        (target.into(), None, "a watch token is required"),
        (format!("{target}?vid=ann"), None, "a watch token is required"),
        (format!("{target}?token=abc"), None, "watch token is malformed"),
        (target.into(), Some("livepush_token=abc.def".into()), "watch token is malformed"),
        (
            target.into(),
            Some(format!("livepush_token={}", "a".repeat(5000))),
            "watch token is longer than 4096 bytes",
        ),
        (format!("{target}?token={expired}"), None, "watch token has expired"),
        (target.into(), Some(format!("livepush_token={expired}")), "watch token has expired"),
        (format!("{target}?token={tampered}"), None, "watch token signature does not match"),
        (format!("{target}?token={wrong_secret}"), None, "watch token signature does not match"),
        (format!("{target}?token={previous_secret}"), None, "watch token signature does not match"),
        (format!("{target}?token={other_event}"), None, "watch token does not cover this event"),
        (
            target.into(),
            Some(format!("livepush_token={other_event}")),
            "watch token does not cover this event",
        ),
        // An explicit ?token= wins over a good cookie.
        (
            format!("{target}?token={expired}"),
            Some(format!("livepush_token={good}")),
            "watch token has expired",
        ),
    ];
    for (target, cookie, reason) in &cases {
        for version in ["1.1", "1.0"] {
            let (status, head, body) = refusal(&edge, version, target, cookie.as_deref()).await;
            let what = format!(
                "HTTP/{version} {target} cookie {:?}",
                cookie.as_deref().map(|c| &c[..c.len().min(80)])
            );
            assert_eq!(status, 401, "{what}: {body}");
            assert!(body.starts_with(reason), "{what}: {body:?}");
            assert_eq!(body.matches('\n').count(), 1, "{what}: one line: {body:?}");
            assert!(body.len() < 100, "{what}: the reason never echoes the token: {body:?}");
            assert!(head.contains("\r\nwww-authenticate: livepushtoken"), "{what}: {head}");
            assert!(head.contains("\r\ncache-control: no-store"), "{what}: {head}");
        }
    }
    // A query with a token longer than any token is too long as a query.
    let (status, _, body) =
        refusal(&edge, "1.1", &format!("{target}?token={}", "a".repeat(5000)), None).await;
    assert_eq!((status, body.as_str()), (400, "query string is too long\n"));
    // The good token was fine all along.
    let mut ok = SseClient::open(&format!("{}?token={good}", stream_url(&edge, "match"))).await;
    assert_eq!(ok.status, 200);
    ok.next_message().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_event_stream_needs_a_token_covering_every_event() {
    let media = TestMedia::start().await;
    let poller = poller(&media).await;
    let secrets = Secrets::new("multi");
    let edge =
        start_edge(&["--poller", &poller.url(), "--auth-secret-file", p(&secrets.file("s", SECRET))]).await;
    let url = format!("{}/live/stream?event=m-a&event=m-b", edge.url());
    let both = token(SECRET, "ann", &["m-a", "m-b"], 600);
    let mut ok = SseClient::open(&format!("{url}&token={both}")).await;
    assert_eq!(ok.status, 200);
    ok.next_message().await;
    let all = token(SECRET, "ann", &["*"], 600);
    assert_eq!(SseClient::open(&format!("{url}&token={all}")).await.status, 200);
    // A token for one of them only, or none: 401 on both HTTP paths, and
    // nothing watched upstream.
    let one = token(SECRET, "ann", &["m-a"], 600);
    for version in ["1.1", "1.0"] {
        let target = format!("/live/stream?event=m-c&event=m-a&token={one}");
        let (status, _, body) = refusal(&edge, version, &target, None).await;
        assert_eq!((status, body.as_str()), (401, "watch token does not cover this event\n"), "{version}");
        let (status, _, body) = refusal(&edge, version, "/live/stream?event=m-c", None).await;
        assert_eq!(status, 401, "{version}: {body}");
    }
    assert_eq!(media.count("m-c"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_fixes_the_viewer_id() {
    let media = TestMedia::start().await;
    let poller = poller(&media).await;
    let secrets = Secrets::new("vid");
    let edge =
        start_edge(&["--poller", &poller.url(), "--auth-secret-file", p(&secrets.file("s", SECRET))]).await;
    let t = token(SECRET, "ann", &["match"], 600);
    for vid in ["bob", "Ann", "ann2"] {
        let target = format!("/live/match/stream?vid={vid}&token={t}");
        let (status, _, body) = refusal(&edge, "1.1", &target, None).await;
        assert_eq!((status, body.as_str()), (400, "vid differs from the watch token's viewer id\n"), "{vid}");
    }
    // An invalid vid is still a plain 400 about the vid.
    let (status, _, body) =
        refusal(&edge, "1.1", &format!("/live/match/stream?vid=a%20b&token={t}"), None).await;
    assert_eq!(status, 400);
    assert!(body.contains("viewer id"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_rotation_tokens_of_the_previous_secret_still_pass() {
    let media = TestMedia::start().await;
    let poller = poller(&media).await;
    let secrets = Secrets::new("rotation");
    let (new, old) = (secrets.file("new", SECRET), secrets.file("old", OLD_SECRET));
    let rotating = start_edge(&[
        "--poller",
        &poller.url(),
        "--auth-secret-file",
        p(&new),
        "--auth-previous-secret-file",
        p(&old),
    ])
    .await;
    let rotated = start_edge(&["--poller", &poller.url(), "--auth-secret-file", p(&new)]).await;
    let by_old = token(OLD_SECRET, "ann", &["match"], 600);
    let by_new = token(SECRET, "ann", &["match"], 600);
    for t in [&by_old, &by_new] {
        let mut s = SseClient::open(&format!("{}?token={t}", stream_url(&rotating, "match"))).await;
        assert_eq!(s.status, 200);
        s.next_message().await;
    }
    let mut s = SseClient::open(&format!("{}?token={by_new}", stream_url(&rotated, "match"))).await;
    assert_eq!(s.status, 200);
    s.next_message().await;
    let (status, _, body) =
        refusal(&rotated, "1.1", &format!("/live/match/stream?token={by_old}"), None).await;
    assert_eq!((status, body.as_str()), (401, "watch token signature does not match\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outlives_its_token_by_the_grace_then_is_told_to_reconnect() {
    let media = TestMedia::start().await;
    media.set_json("short", r#"{"s":1}"#);
    let poller = poller(&media).await;
    let secrets = Secrets::new("grace");
    let edge = start_edge(&[
        "--poller",
        &poller.url(),
        "--auth-secret-file",
        p(&secrets.file("s", SECRET)),
        "--auth-grace",
        "1s",
        "--retry",
        "700ms",
        "--keepalive",
        "300ms",
    ])
    .await;
    let t = token(SECRET, "ann", &["short"], 2);
    let expires_at: u64 = {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let payload = URL_SAFE_NO_PAD.decode(t.split_once('.').unwrap().0).unwrap();
        String::from_utf8(payload).unwrap().split('\0').nth(2).unwrap().parse().unwrap()
    };
    let closes_at = UNIX_EPOCH + Duration::from_secs(expires_at) + Duration::from_secs(1);
    let resp =
        livepush_tests::http().get(format!("{}?token={t}", stream_url(&edge, "short"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = read_for(resp, PATIENCE).await;
    let ended = SystemTime::now();
    assert!(
        ended + Duration::from_millis(50) >= closes_at,
        "closed {:?} before expiry + grace",
        closes_at.duration_since(ended).unwrap_or_default()
    );
    assert!(ended < closes_at + Duration::from_secs(3), "closed long after expiry + grace");
    assert!(text.starts_with("retry: 700\n\n") && text.contains("data: {\"s\":1}\n"), "{text:?}");
    assert!(text.matches("\n:\n\n").count() >= 3, "keep-alives went on until the deadline: {text:?}");
    assert!(text.ends_with("\n\nretry: 700\n\n"), "the last frame tells the browser to reconnect: {text:?}");
    // Reconnecting with the expired token: 401, so the page fetches a new one.
    let (status, _, body) = refusal(&edge, "1.1", &format!("/live/short/stream?token={t}"), None).await;
    assert_eq!((status, body.as_str()), (401, "watch token has expired\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_one_viewer_per_token_whatever_vids_are_sent() {
    let media = TestMedia::start().await;
    let poller = poller(&media).await;
    let secrets = Secrets::new("presence");
    let edge = start_edge(&[
        "--poller",
        &poller.url(),
        "--auth-secret-file",
        p(&secrets.file("s", SECRET)),
        "--heartbeat-interval",
        "100ms",
    ])
    .await;
    let url = stream_url(&edge, "crowd");
    let t = token(SECRET, "ann", &["crowd"], 600);
    let mut streams = Vec::new();
    // Three tabs with the cookie, one with the token in the query and its vid.
    for _ in 0..3 {
        streams.push(SseClient::open_with(&url, &[("cookie", &format!("livepush_token={t}"))]).await);
    }
    streams.push(SseClient::open(&format!("{url}?vid=ann&token={t}")).await);
    for s in &mut streams {
        assert_eq!(s.status, 200);
        s.next_message().await;
    }
    // Made-up vids with the token, and without one: refused, never counted.
    for i in 0..20 {
        let (status, _, _) =
            refusal(&edge, "1.1", &format!("/live/crowd/stream?vid=fake-{i}&token={t}"), None).await;
        assert_eq!(status, 400);
        let (status, _, _) = refusal(&edge, "1.1", &format!("/live/crowd/stream?vid=anon-{i}"), None).await;
        assert_eq!(status, 401);
    }

    let mut client = PresenceClient::connect(poller.url()).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut seen = 0;
    // Several batches in a row say the same: one viewer, ann, nobody anonymous.
    while seen < 5 {
        let p = client.get_presence(PresenceRequest { event_id: "crowd".into() }).await.unwrap().into_inner();
        if p.viewers == 1 {
            assert_eq!(
                (p.vids.as_slice(), p.anonymous, p.identified),
                (&["ann".to_owned()][..], 0, 1),
                "{p:?}"
            );
            seen += 1;
        } else {
            assert!(seen == 0 && p.viewers == 0, "{p:?}");
        }
        assert!(tokio::time::Instant::now() < deadline, "no presence in time: {p:?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_a_short_or_missing_secret_naming_the_flag() {
    use clap::Parser;
    let secrets = Secrets::new("startup");
    let short = secrets.file("short", &[b'x'; 31]);
    let good = secrets.file("good", SECRET);
    let missing = secrets.0.join("missing");
    for (args, flag) in [
        (vec!["--auth-secret-file", p(&short)], "--auth-secret-file"),
        (vec!["--auth-secret-file", p(&missing)], "--auth-secret-file"),
        (
            vec!["--auth-secret-file", p(&good), "--auth-previous-secret-file", p(&short)],
            "--auth-previous-secret-file",
        ),
    ] {
        let config = edge::Config::try_parse_from(["edge"].into_iter().chain(args.iter().copied())).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let run = edge::run(config, listener, std::future::pending());
        let err =
            tokio::time::timeout(PATIENCE, run).await.expect("refused at once").unwrap_err().to_string();
        assert!(err.starts_with(flag) && !err.contains("xxxxxxxx"), "{args:?}: {err}");
    }
    let out = std::process::Command::new(EDGE_BIN).args(["--auth-secret-file", p(&short)]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--auth-secret-file"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_token_endpoint_exists_only_when_asked_for() {
    let media = TestMedia::start().await;
    let poller = poller(&media).await;
    let secrets = Secrets::new("demo");
    let secret = secrets.file("s", SECRET);
    let ask = |edge: &Running| format!("{}/demo/token?event=match&vid=ann", edge.url());

    let plain = start_edge(&["--poller", &poller.url()]).await;
    let with_auth = start_edge(&["--poller", &poller.url(), "--auth-secret-file", p(&secret)]).await;
    for edge in [&plain, &with_auth] {
        assert_eq!(reqwest::get(ask(edge)).await.unwrap().status(), 404);
    }

    let demo =
        start_edge(&["--poller", &poller.url(), "--auth-secret-file", p(&secret), "--demo-tokens", "90s"])
            .await;
    let resp = reqwest::get(ask(&demo)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let minted = resp.text().await.unwrap().trim().to_owned();
    assert_eq!(
        cookie,
        format!("livepush_token={minted}; Path=/live/match/; Max-Age=90; HttpOnly; SameSite=Strict")
    );
    // The cookie opens that event's stream, and no other.
    let as_cookie = format!("livepush_token={minted}");
    let mut s = SseClient::open_with(&stream_url(&demo, "match"), &[("cookie", &as_cookie)]).await;
    assert_eq!(s.status, 200);
    s.next_message().await;
    let (status, _, body) = refusal(&demo, "1.1", "/live/other/stream", Some(&as_cookie)).await;
    assert_eq!((status, body.as_str()), (401, "watch token does not cover this event\n"));
    // Repeated events: one token for them all, as a cookie for the
    // multi-event stream's path.
    let resp = reqwest::get(format!("{}/demo/token?event=match&event=other&event=match&vid=ann", demo.url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("; Path=/live/stream; "), "{cookie}");
    let minted = resp.text().await.unwrap().trim().to_owned();
    let url = format!("{}/live/stream?event=match&event=other", demo.url());
    let mut s = SseClient::open_with(&url, &[("cookie", &format!("livepush_token={minted}"))]).await;
    assert_eq!(s.status, 200);
    s.next_message().await;
    // The endpoint validates what it signs.
    let too_many: String = (0..65).map(|i| format!("event=e{i}&")).collect();
    for bad in
        ["event=a%20b&vid=ann", "event=match&vid=", "event=match", "vid=ann", &format!("{too_many}vid=ann")]
    {
        let resp = reqwest::get(format!("{}/demo/token?{bad}", demo.url())).await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
    }
}

/// Python's `hmac`, `hashlib` and `base64` running the README's own code:
/// `None` (with a notice) when python3 is missing outside CI.
fn python_tokens(inputs: &serde_json::Value) -> Option<Vec<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let code = readme
        .split("```python\n")
        .find(|block| block.contains("def watch_token("))
        .and_then(|block| block.split("\n```").next())
        .expect("README.md has the Python watch_token");
    let driver = "\nimport json, sys\nfor a in json.loads(sys.argv[1]):\n    \
                  print(watch_token(bytes.fromhex(a['secret']), a['iat'], a['exp'], a['vid'], a['events']))\n";
    let out = match std::process::Command::new("python3")
        .arg("-c")
        .arg(format!("{code}{driver}"))
        .arg(inputs.to_string())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "CI must run the Python cross-check: {e}");
            eprintln!("SKIPPED: python3 not found ({e})");
            return None;
        }
    };
    assert!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect())
}

/// `edge token ARGS` with the real binary: its one line of output.
fn edge_token(args: &[&str]) -> String {
    let out = std::process::Command::new(EDGE_BIN).arg("token").args(args).output().unwrap();
    assert!(out.status.success(), "edge token {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    stdout.trim_end().to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn edge_token_matches_an_independent_implementation_and_the_readme_vector() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    assert!(readme.contains(&format!("\n{VECTOR_TOKEN}\n")), "README.md states the test vector");
    let secrets = Secrets::new("cli");
    let vector_secret = secrets.0.join("vector");
    std::fs::write(&vector_secret, VECTOR_SECRET).unwrap();
    // Binary bytes, and a trailing newline that is not part of the secret.
    let random: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(97).wrapping_add(3)).collect();
    let random_file = secrets.file("random", &random);

    let vector = edge_token(&[
        "--secret-file",
        p(&vector_secret),
        "--vid",
        "viewer-42",
        "--event",
        "demo-1",
        "--event",
        "match.final",
        "--issued-at",
        "1767225600",
        "--ttl",
        "10m",
    ]);
    assert_eq!(vector, VECTOR_TOKEN);
    let all = edge_token(&[
        "--secret-file",
        p(&random_file),
        "--vid",
        "v.1~x",
        "--all-events",
        "--issued-at",
        "1",
        "--ttl",
        "1h",
    ]);
    let before = now();
    let fresh =
        edge_token(&["--secret-file", p(&random_file), "--vid", "bob", "--event", "a", "--event", "b.c"]);
    let after = now();
    for t in [&vector, &all, &fresh] {
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)), "{t}");
    }

    let mut inputs = vec![
        serde_json::json!({"secret": hex(VECTOR_SECRET), "iat": 1767225600u64, "exp": 1767226200u64,
            "vid": "viewer-42", "events": ["demo-1", "match.final"]}),
        serde_json::json!({"secret": hex(&random), "iat": 1, "exp": 3601, "vid": "v.1~x", "events": ["*"]}),
    ];
    // `edge token` without --issued-at uses the time it ran, with a 10 min default TTL.
    for iat in before..=after {
        inputs.push(serde_json::json!({"secret": hex(&random), "iat": iat, "exp": iat + 600, "vid": "bob",
            "events": ["a", "b.c"]}));
    }
    let Some(python) = python_tokens(&serde_json::Value::Array(inputs)) else { return };
    assert_eq!(python[0], VECTOR_TOKEN, "the README's Python gives the README's vector");
    assert_eq!(python[1], all);
    assert!(python[2..].contains(&fresh), "edge token {fresh} vs python {:?}", &python[2..]);
}

/// The demo page in headless Chromium: it fetches a token from
/// `/demo/token`, watches with it as a cookie, and when the edge closes the
/// stream after the token's grace and refuses the reconnect (401), fetches a
/// new token and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_demo_page_renews_its_token_after_a_refusal() {
    let Some(browser) = Browser::launch().await else { return };
    let media = TestMedia::start().await;
    media.set_json("page", r#"{"p":1}"#);
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let secrets = Secrets::new("chromium");
    let edge = start_edge(&[
        "--poller",
        &poller.url(),
        "--auth-secret-file",
        p(&secrets.file("s", SECRET)),
        "--demo-tokens",
        "2s",
        "--auth-grace",
        "500ms",
        "--retry",
        "200ms",
    ])
    .await;
    browser.client.goto(&format!("{}/#page", edge.url())).await.unwrap();
    let shows = |data: &str| format!("document.getElementById('latest').textContent.includes({data:?})");
    browser.wait_for("the first value", &shows(r#""p": 1"#)).await;
    assert_eq!(browser.eval("return window.livepush.tokens").await, 1);
    // Expiry (under 2 s) + grace, the refused reconnect, a new token.
    browser
        .wait_for(
            "a new token and a new stream",
            "window.livepush.tokens >= 2 && window.livepush.opens >= 2 && \
             document.getElementById('status').textContent === 'open'",
        )
        .await;
    media.set_json("page", r#"{"p":2}"#);
    browser.wait_for("a value on the new stream", &shows(r#""p": 2"#)).await;
    browser.close().await;
}

/// The demo page's live-events view with tokens on: one token for its 24
/// events, sent as the cookie of `/live/stream`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_demo_grid_gets_one_token_for_all_its_events() {
    let Some(browser) = Browser::launch().await else { return };
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let secrets = Secrets::new("grid");
    let edge = start_edge(&[
        "--poller",
        &poller.url(),
        "--auth-secret-file",
        p(&secrets.file("s", SECRET)),
        "--demo-tokens",
        "60s",
    ])
    .await;
    browser.client.goto(&format!("{}/?grid", edge.url())).await.unwrap();
    browser
        .wait_for(
            "24 events on one stream",
            "Array.from(document.querySelectorAll('#grid .card .value')).filter(v => v.textContent !== 'waiting…').length === 24",
        )
        .await;
    assert_eq!(
        browser.eval("return [window.grid.tokens, window.grid.opens]").await,
        serde_json::json!([1, 1])
    );
    browser.close().await;
}
