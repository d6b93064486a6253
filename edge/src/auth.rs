//! Signed watch tokens. With `--auth-secret-file`, a browser's stream needs a
//! token minted by the platform's backend, so only viewers the platform let in
//! are served, and presence counts the viewer ids the platform vouched for.
//!
//! A token is `base64url(payload) "." base64url(HMAC-SHA256(secret, payload))`
//! (RFC 4648 §5 alphabet, no padding), where the payload is `v1`, the issue
//! time and the expiry (Unix seconds, decimal), the viewer id, then each event
//! id, or a lone `*` for every event, joined by NUL bytes. No field can hold a
//! NUL (ids are allow-listed, numbers are digits), so no field can be shifted
//! into its neighbour, and base64url has no `.`, so the two parts split one
//! way only. README.md ("Browser tokens") has the algorithm and a test vector.
//!
//! The signature is checked first, in constant time (`Mac::verify_slice`),
//! against the current secret and then the previous one (rotation without
//! downtime); every field is then validated as strictly as an id in a URL.
//! Each failure is a [`TokenError`] whose text is the one-line `401` reason.

use crate::config::Config;
use anyhow::anyhow;
use axum::http::{HeaderMap, header};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use livepush::{EventId, ViewerId};
use sha2::Sha256;
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::time::Instant;

/// The first payload field. A change of format gets a new version, and an
/// edge refuses versions it does not know.
pub const VERSION: &str = "v1";
/// Longest token accepted and minted: a cookie or query value has to fit the
/// 16 KiB request head with everything else.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Most event ids one token names (`*` stands for all).
pub const MAX_EVENTS: usize = 64;
/// Shortest secret accepted: 256 bits, the strength of HMAC-SHA256 itself.
pub const MIN_SECRET_LEN: usize = 32;
/// The cookie that carries a token (`EventSource` sends cookies; a cookie
/// keeps the token out of access logs, unlike `?token=`).
pub const COOKIE: &str = "livepush_token";
/// How far ahead of this edge's clock a token's issue time may be: the
/// minting backend's clock differs a little.
pub const MAX_CLOCK_SKEW_SECS: u64 = 60;
/// `livepush_token` cookies tried per request: a browser sends one per
/// matching cookie path, the most specific first.
const MAX_COOKIES: usize = 4;
/// A stream's deadline is at most this far ahead, whatever the token says:
/// no connection lives that long, and the clock arithmetic cannot overflow.
const MAX_DEADLINE: Duration = Duration::from_secs(366 * 24 * 3600);
const ALL_EVENTS: &[u8] = b"*";
const SIGNATURE_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A signing secret, keyed once. Not `Debug`: it can never reach a log.
#[derive(Clone)]
pub struct Secret(HmacSha256);

/// Why a secret is refused at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the secret: {0}")]
    Read(#[from] std::io::Error),
    #[error(
        "the secret is {len} bytes, at least {MIN_SECRET_LEN} are needed (e.g. `head -c 32 /dev/urandom > FILE`)"
    )]
    TooShort { len: usize },
}

impl Secret {
    /// The secret `bytes`, used as they are (raw bytes, any values).
    pub fn new(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort { len: bytes.len() });
        }
        Ok(Self(HmacSha256::new_from_slice(bytes).expect("HMAC takes keys of any length")))
    }

    /// The file's bytes less one trailing line break (`\n` or `\r\n`), so
    /// `echo`ed and editor-saved files work; backends must read it alike.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let bytes = std::fs::read(path)?;
        Self::new(trim_line_break(&bytes))
    }

    fn sign(&self, payload: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut mac = self.0.clone();
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }

    /// Whether `signature` is this secret's for `payload`. `verify_slice`
    /// compares in constant time (`subtle`), so response timing tells an
    /// attacker nothing about how many leading bytes of a forgery were right;
    /// it also refuses any length but 32.
    fn signed(&self, payload: &[u8], signature: &[u8]) -> bool {
        let mut mac = self.0.clone();
        mac.update(payload);
        mac.verify_slice(signature).is_ok()
    }
}

fn trim_line_break(bytes: &[u8]) -> &[u8] {
    match bytes.strip_suffix(b"\n") {
        Some(rest) => rest.strip_suffix(b"\r").unwrap_or(rest),
        None => bytes,
    }
}

/// What a token says: who may watch which events, from when until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the token is valid strictly before it.
    pub expires_at: u64,
    pub vid: ViewerId,
    pub events: Events,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Events {
    /// `*`: every event.
    All,
    /// These events only (1 to [`MAX_EVENTS`]).
    Only(Vec<EventId>),
}

impl Claims {
    pub fn covers(&self, event: &EventId) -> bool {
        match &self.events {
            Events::All => true,
            Events::Only(ids) => ids.contains(event),
        }
    }

    /// `v1 NUL iat NUL exp NUL vid NUL event (NUL event)*`, or `*` for the
    /// events: the bytes the HMAC signs.
    fn payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let mut field = |bytes: &[u8]| {
            if !out.is_empty() {
                out.push(0);
            }
            out.extend_from_slice(bytes);
        };
        field(VERSION.as_bytes());
        field(self.issued_at.to_string().as_bytes());
        field(self.expires_at.to_string().as_bytes());
        field(self.vid.as_str().as_bytes());
        match &self.events {
            Events::All => field(ALL_EVENTS),
            Events::Only(ids) => ids.iter().for_each(|id| field(id.as_str().as_bytes())),
        }
        out
    }
}

/// Why a token cannot be minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("a token names at least one event (or all of them)")]
    NoEvents,
    #[error("a token names at most {MAX_EVENTS} events; use all events instead")]
    TooManyEvents,
    #[error("a token must expire after it is issued")]
    Lifetime,
    #[error("the token would be {len} bytes, more than {MAX_TOKEN_LEN}: name fewer or shorter events")]
    TooLong { len: usize },
}

/// Signs `claims` with `secret`: the token, in `A-Za-z0-9-_.` only.
pub fn mint(secret: &Secret, claims: &Claims) -> Result<String, MintError> {
    match &claims.events {
        Events::Only(ids) if ids.is_empty() => return Err(MintError::NoEvents),
        Events::Only(ids) if ids.len() > MAX_EVENTS => return Err(MintError::TooManyEvents),
        _ => {}
    }
    if claims.expires_at <= claims.issued_at {
        return Err(MintError::Lifetime);
    }
    let payload = claims.payload();
    let token =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(secret.sign(&payload)));
    if token.len() > MAX_TOKEN_LEN {
        return Err(MintError::TooLong { len: token.len() });
    }
    Ok(token)
}

/// Why a stream is refused: the text is the one-line `401` reason. It never
/// echoes the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a watch token is required (the livepush_token cookie or ?token=)")]
    Missing,
    #[error("watch token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("watch token is malformed: {0}")]
    Malformed(&'static str),
    #[error("watch token version is not supported (this edge reads v1)")]
    Version,
    #[error("watch token signature does not match")]
    BadSignature,
    #[error("watch token has expired")]
    Expired,
    #[error("watch token is issued in the future")]
    NotYetValid,
    #[error("watch token does not cover this event")]
    OtherEvent,
}

/// The secrets a token may be signed with: the current one and, while a
/// rotation is under way, the previous one.
#[derive(Clone)]
pub struct Keys {
    current: Secret,
    previous: Option<Secret>,
}

impl Keys {
    pub fn new(current: Secret, previous: Option<Secret>) -> Self {
        Self { current, previous }
    }

    /// The claims of `token` if one of the secrets signed it and it is valid
    /// at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        use TokenError::Malformed;
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let (payload, signature) =
            token.split_once('.').ok_or(Malformed("expected two base64url parts joined by a dot"))?;
        // The engine refuses padding, other alphabets and non-canonical
        // trailing bits, so one payload has exactly one spelling.
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| Malformed("payload is not base64url"))?;
        let signature =
            URL_SAFE_NO_PAD.decode(signature).map_err(|_| Malformed("signature is not base64url"))?;
        if signature.len() != SIGNATURE_LEN {
            return Err(Malformed("signature is not 32 bytes"));
        }
        let mut fields = payload.split(|&b| b == 0);
        if fields.next() != Some(VERSION.as_bytes()) {
            return Err(TokenError::Version);
        }
        let signed = self.current.signed(&payload, &signature)
            || self.previous.as_ref().is_some_and(|previous| previous.signed(&payload, &signature));
        if !signed {
            return Err(TokenError::BadSignature);
        }
        // Signed by us, so only a buggy minter gets past here with bad
        // fields; they are checked all the same.
        let claims = parse_fields(fields)?;
        if claims.issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(TokenError::NotYetValid);
        }
        if now >= claims.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

fn parse_fields<'a>(mut fields: impl Iterator<Item = &'a [u8]>) -> Result<Claims, TokenError> {
    use TokenError::Malformed;
    let issued_at = fields.next().and_then(number).ok_or(Malformed("issue time is not a number"))?;
    let expires_at = fields.next().and_then(number).ok_or(Malformed("expiry is not a number"))?;
    let vid = fields
        .next()
        .and_then(|f| ViewerId::parse(std::str::from_utf8(f).ok()?).ok())
        .ok_or(Malformed("viewer id is invalid"))?;
    let rest: Vec<&[u8]> = fields.take(MAX_EVENTS + 1).collect();
    let events = match rest.as_slice() {
        [] => return Err(Malformed("names no event")),
        [all] if *all == ALL_EVENTS => Events::All,
        ids if ids.len() > MAX_EVENTS => return Err(Malformed("names too many events")),
        ids => Events::Only(
            ids.iter()
                .map(|f| EventId::parse(std::str::from_utf8(f).ok()?).ok())
                .collect::<Option<_>>()
                .ok_or(Malformed("event id is invalid"))?,
        ),
    };
    if expires_at <= issued_at {
        return Err(Malformed("expires before it is issued"));
    }
    Ok(Claims { issued_at, expires_at, vid, events })
}

/// Decimal digits without a leading zero (one spelling per number).
fn number(field: &[u8]) -> Option<u64> {
    let canonical = matches!(field, [b'0'] | [b'1'..=b'9', ..]) && field.iter().all(u8::is_ascii_digit);
    canonical.then(|| std::str::from_utf8(field).ok()?.parse().ok()).flatten()
}

/// The tokens a request presents, in the order tried: `?token=` alone when
/// given (an explicit token wins), else its `livepush_token` cookies (a
/// browser sends the one with the most specific path first).
pub fn presented<'a>(query: Option<&'a str>, headers: &'a HeaderMap) -> impl Iterator<Item = &'a str> {
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter(move |_| query.is_none())
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let value = value.trim();
            // RFC 6265 allows a quoted cookie value.
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            (name.trim() == COOKIE).then_some(value)
        })
        .take(MAX_COOKIES);
    query.into_iter().chain(cookies)
}

/// The edge's token checks, built from the config; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    keys: Arc<Keys>,
    grace: Duration,
    demo_ttl: Option<Duration>,
}

/// A stream a token lets in.
#[derive(Debug)]
pub struct Admitted {
    /// The token's viewer id: the stream's, whatever `?vid=` says.
    pub vid: ViewerId,
    /// The token's expiry plus `--auth-grace`: the stream is closed then.
    pub deadline: Instant,
}

impl Auth {
    /// `None` without `--auth-secret-file`; an error naming the flag when a
    /// secret cannot be read or is too short.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Self>> {
        let Some(current) = &config.auth_secret_file else { return Ok(None) };
        let load = |flag: &str, path: &Path| {
            Secret::from_file(path).map_err(|e| anyhow!("{flag} {}: {e}", path.display()))
        };
        let current = load("--auth-secret-file", current)?;
        let previous = match &config.auth_previous_secret_file {
            Some(path) => Some(load("--auth-previous-secret-file", path)?),
            None => None,
        };
        Ok(Some(Self::new(Keys::new(current, previous), config.auth_grace, config.demo_tokens)))
    }

    pub fn new(keys: Keys, grace: Duration, demo_ttl: Option<Duration>) -> Self {
        Self { keys: Arc::new(keys), grace, demo_ttl }
    }

    /// Checks the tokens the request presents (see [`presented`]) for
    /// `events` (one, or every event of a multi-event stream): the first
    /// that is valid and covers them all admits the stream; otherwise the
    /// first token's error (or [`TokenError::Missing`]).
    pub fn admit(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        events: &[EventId],
    ) -> Result<Admitted, TokenError> {
        let now = SystemTime::now();
        let now_secs = unix_secs(now);
        let mut refusal = None;
        for token in presented(query, headers) {
            let checked = self.keys.verify(token, now_secs).and_then(|claims| {
                if events.iter().all(|event| claims.covers(event)) {
                    Ok(claims)
                } else {
                    Err(TokenError::OtherEvent)
                }
            });
            match checked {
                Ok(claims) => {
                    let deadline = deadline(claims.expires_at, self.grace, now);
                    return Ok(Admitted { vid: claims.vid, deadline });
                }
                Err(e) => {
                    refusal.get_or_insert(e);
                }
            }
        }
        Err(refusal.unwrap_or(TokenError::Missing))
    }

    /// `--demo-tokens`: how long the tokens of `GET /demo/token` last, when
    /// that endpoint is on.
    pub fn demo_ttl(&self) -> Option<Duration> {
        self.demo_ttl
    }

    /// A token signed with the current secret, issued now.
    pub fn mint_now(&self, vid: ViewerId, events: Events, ttl: Duration) -> Result<String, MintError> {
        let issued_at = unix_secs(SystemTime::now());
        let claims = Claims { issued_at, expires_at: issued_at.saturating_add(ttl.as_secs()), vid, events };
        mint(&self.keys.current, &claims)
    }
}

/// When a stream admitted at `now` by a token expiring at `expires_at` must
/// close, on the runtime's clock.
fn deadline(expires_at: u64, grace: Duration, now: SystemTime) -> Instant {
    let end = UNIX_EPOCH.checked_add(Duration::from_secs(expires_at)).and_then(|t| t.checked_add(grace));
    let left = end.map_or(MAX_DEADLINE, |end| end.duration_since(now).unwrap_or_default());
    Instant::now() + left.min(MAX_DEADLINE)
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `edge token …`: mints one token with the platform's secret and prints it,
/// for backends, scripts and the demo.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["events", "all_events"])))]
pub struct MintArgs {
    /// File holding the secret (the edge's --auth-secret-file).
    #[arg(long, env = "EDGE_AUTH_SECRET_FILE")]
    pub secret_file: PathBuf,

    /// The viewer id the token fixes (`[A-Za-z0-9._~-]{1,64}`).
    #[arg(long, value_parser = parse_vid)]
    pub vid: ViewerId,

    /// An event the token may watch; repeat for several (at most 64).
    #[arg(long = "event", value_name = "ID", value_parser = parse_event)]
    pub events: Vec<EventId>,

    /// The token may watch every event.
    #[arg(long, conflicts_with = "events")]
    pub all_events: bool,

    /// How long the token is valid (whole seconds, at least 1s).
    #[arg(long, default_value = "10m", value_parser = parse_ttl)]
    pub ttl: Duration,

    /// Issue time in Unix seconds instead of now: reproducible tokens (tests,
    /// the README's test vector).
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub issued_at: Option<u64>,
}

impl MintArgs {
    /// The token these arguments ask for.
    pub fn mint(&self) -> anyhow::Result<String> {
        let secret = Secret::from_file(&self.secret_file)
            .map_err(|e| anyhow!("--secret-file {}: {e}", self.secret_file.display()))?;
        let issued_at = self.issued_at.unwrap_or_else(|| unix_secs(SystemTime::now()));
        let expires_at = issued_at
            .checked_add(self.ttl.as_secs())
            .ok_or_else(|| anyhow!("--ttl: the expiry overflows"))?;
        let events = if self.all_events { Events::All } else { Events::Only(self.events.clone()) };
        Ok(mint(&secret, &Claims { issued_at, expires_at, vid: self.vid.clone(), events })?)
    }
}

fn parse_vid(s: &str) -> Result<ViewerId, String> {
    ViewerId::parse(s).map_err(|e| e.to_string())
}

fn parse_event(s: &str) -> Result<EventId, String> {
    EventId::parse(s).map_err(|e| e.to_string())
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(Duration::from_secs(d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_767_225_600;

    fn secret(bytes: &[u8]) -> Secret {
        Secret::new(bytes).unwrap()
    }

    fn claims(events: &[&str]) -> Claims {
        Claims {
            issued_at: NOW,
            expires_at: NOW + 600,
            vid: ViewerId::parse("viewer-42").unwrap(),
            events: Events::Only(events.iter().map(|e| EventId::parse(e).unwrap()).collect()),
        }
    }

    fn keys() -> Keys {
        Keys::new(secret(SECRET), None)
    }

    fn ev(s: &str) -> EventId {
        EventId::parse(s).unwrap()
    }

    /// `token` with its payload replaced (the signature kept).
    fn with_payload(token: &str, payload: &[u8]) -> String {
        let signature = token.split_once('.').unwrap().1;
        format!("{}.{signature}", URL_SAFE_NO_PAD.encode(payload))
    }

    fn payload_of(token: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(token.split_once('.').unwrap().0).unwrap()
    }

    #[test]
    fn the_readme_test_vector() {
        let readme = include_str!("../../README.md");
        let claims = Claims {
            issued_at: 1_767_225_600,
            expires_at: 1_767_226_200,
            vid: ViewerId::parse("viewer-42").unwrap(),
            events: Events::Only(vec![ev("demo-1"), ev("match.final")]),
        };
        let token = mint(&secret(b"livepush-test-vector-secret-32-bytes"), &claims).unwrap();
        assert!(readme.contains(&format!("\n{token}\n")), "README.md lacks the test vector {token}");
        assert_eq!(
            payload_of(&token),
            b"v1\x001767225600\x001767226200\x00viewer-42\x00demo-1\x00match.final"
        );
    }

    #[test]
    fn a_token_round_trips_in_url_safe_characters() {
        for events in [Events::All, claims(&["a", "b.c", "~x_-y"]).events] {
            let c = Claims { events, ..claims(&[]) };
            let token = mint(&secret(SECRET), &c).unwrap();
            assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "{token}");
            assert_eq!(keys().verify(&token, NOW + 1).unwrap(), c);
        }
        let all = Claims { events: Events::All, ..claims(&[]) };
        assert!(all.covers(&ev("anything")));
        assert!(claims(&["a", "b"]).covers(&ev("b")) && !claims(&["a", "b"]).covers(&ev("c")));
    }

    #[test]
    fn expiry_and_issue_time_are_enforced() {
        let token = mint(&secret(SECRET), &claims(&["e"])).unwrap();
        assert!(keys().verify(&token, NOW + 599).is_ok());
        assert_eq!(keys().verify(&token, NOW + 600), Err(TokenError::Expired));
        assert_eq!(keys().verify(&token, NOW + 10_000), Err(TokenError::Expired));
        assert!(keys().verify(&token, NOW - MAX_CLOCK_SKEW_SECS).is_ok(), "a little clock skew is fine");
        assert_eq!(keys().verify(&token, NOW - MAX_CLOCK_SKEW_SECS - 1), Err(TokenError::NotYetValid));
    }

    #[test]
    fn any_tampered_field_breaks_the_signature() {
        let token = mint(&secret(SECRET), &claims(&["demo-1"])).unwrap();
        let payload = payload_of(&token);
        let swaps: [(&[u8], &[u8]); 5] = [
            (b"1767225600", b"1767225601"),
            (b"1767226200", b"9767226200"),
            (b"viewer-42", b"viewer-43"),
            (b"demo-1", b"demo-2"),
            // Shifting a field boundary: vid `viewer-42` + event `demo-1`
            // becomes vid `viewer-42` + events `demo`, `1`.
            (b"demo-1", b"demo\x001"),
        ];
        for (from, to) in swaps {
            let at = payload.windows(from.len()).position(|w| w == from).unwrap();
            let forged = [&payload[..at], to, &payload[at + from.len()..]].concat();
            assert_eq!(
                keys().verify(&with_payload(&token, &forged), NOW),
                Err(TokenError::BadSignature),
                "{}",
                String::from_utf8_lossy(to)
            );
        }
        // One flipped bit anywhere in the signature.
        let (p, s) = token.split_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(s).unwrap();
        sig[31] ^= 1;
        let forged = format!("{p}.{}", URL_SAFE_NO_PAD.encode(&sig));
        assert_eq!(keys().verify(&forged, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn wrong_secret_refused_previous_secret_accepted_during_rotation() {
        let old = secret(b"the-old-secret-the-old-secret-the-old");
        let new = secret(b"the-new-secret-the-new-secret-the-new");
        let by_old = mint(&old, &claims(&["e"])).unwrap();
        let by_new = mint(&new, &claims(&["e"])).unwrap();
        let rotating = Keys::new(new.clone(), Some(old.clone()));
        assert!(rotating.verify(&by_old, NOW).is_ok() && rotating.verify(&by_new, NOW).is_ok());
        let rotated = Keys::new(new, None);
        assert_eq!(rotated.verify(&by_old, NOW), Err(TokenError::BadSignature));
        assert_eq!(keys().verify(&by_new, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn malformed_tokens_say_why_without_echoing_them() {
        let good = mint(&secret(SECRET), &claims(&["e"])).unwrap();
        let (p, s) = good.split_once('.').unwrap();
        let signed = |payload: &[u8]| {
            format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(payload),
                URL_SAFE_NO_PAD.encode(secret(SECRET).sign(payload))
            )
        };
        let too_many = format!("v1\x00{NOW}\x00{}\x00v{}", NOW + 9, "\x00e".repeat(MAX_EVENTS + 1));
        let cases: Vec<(String, TokenError)> = vec![
            (String::new(), TokenError::Malformed("expected two base64url parts joined by a dot")),
            (p.to_owned(), TokenError::Malformed("expected two base64url parts joined by a dot")),
            (format!("{p}.{s}.x"), TokenError::Malformed("signature is not base64url")),
            (format!("{p}=.{s}"), TokenError::Malformed("payload is not base64url")),
            (format!("{p}+/.{s}"), TokenError::Malformed("payload is not base64url")),
            (format!("{p}.{}", &s[..20]), TokenError::Malformed("signature is not 32 bytes")),
            (format!("{p}.{s}AAAA"), TokenError::Malformed("signature is not 32 bytes")),
            ("x".repeat(MAX_TOKEN_LEN + 1), TokenError::TooLong),
            (signed(b"v2\x001\x002\x00v\x00e"), TokenError::Version),
            (signed(b""), TokenError::Version),
            (signed(b"v1\x00-1\x002\x00v\x00e"), TokenError::Malformed("issue time is not a number")),
            (signed(b"v1\x0001\x002\x00v\x00e"), TokenError::Malformed("issue time is not a number")),
            (signed(b"v1\x001\x00\x00v\x00e"), TokenError::Malformed("expiry is not a number")),
            (
                signed(b"v1\x001\x0099999999999999999999\x00v\x00e"),
                TokenError::Malformed("expiry is not a number"),
            ),
            (signed(b"v1\x001\x002\x00a b\x00e"), TokenError::Malformed("viewer id is invalid")),
            (signed(b"v1\x001\x002"), TokenError::Malformed("viewer id is invalid")),
            (signed(b"v1\x001\x002\x00v"), TokenError::Malformed("names no event")),
            (signed(b"v1\x001\x002\x00v\x00e\x00"), TokenError::Malformed("event id is invalid")),
            (signed(b"v1\x001\x002\x00v\x00e\x00*"), TokenError::Malformed("event id is invalid")),
            (signed(b"v1\x001\x002\x00v\x00.."), TokenError::Malformed("event id is invalid")),
            (signed(b"v1\x002\x002\x00v\x00e"), TokenError::Malformed("expires before it is issued")),
            (signed(too_many.as_bytes()), TokenError::Malformed("names too many events")),
        ];
        for (token, want) in cases {
            let got = keys().verify(&token, 1);
            assert_eq!(got, Err(want), "{token:?}");
            let reason = want.to_string();
            assert!(!reason.contains('\n') && (token.len() < 8 || !reason.contains(&token[..8])), "{reason}");
        }
        // Non-canonical base64 (trailing bits set) has one spelling only.
        let last = p.chars().last().unwrap();
        let twin = p[..p.len() - 1].to_owned() + if last == 'A' { "B" } else { "A" };
        assert!(keys().verify(&format!("{twin}.{s}"), NOW).is_err());
    }

    #[test]
    fn signatures_are_compared_in_constant_time() {
        let token = mint(&secret(SECRET), &claims(&["e"])).unwrap();
        let (p, s) = token.split_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(s).unwrap();
        // A prefix of the right MAC is refused (a truncating comparison such
        // as `verify_truncated_left` or `starts_with` would let it in), and
        // so is a right MAC with a byte more.
        for forged in [&sig[..16], &sig[..31], &[&sig[..], &[0]].concat()] {
            let payload = payload_of(&token);
            assert!(!secret(SECRET).signed(&payload, forged));
            assert!(keys().verify(&format!("{p}.{}", URL_SAFE_NO_PAD.encode(forged)), NOW).is_err());
        }
        // The only comparison of a signature is `Mac::verify_slice`
        // (constant time, through `subtle`); a `==` on MAC bytes would let
        // response times tell how much of a forgery is right.
        let code = include_str!("auth.rs").split("#[cfg(test)]").next().unwrap();
        let signed = code.split("fn signed(").nth(1).unwrap().split("\n    }\n").next().unwrap();
        assert!(signed.contains("mac.verify_slice(signature)") && !signed.contains("=="), "{signed}");
        let verify = code.split("pub fn verify(").nth(1).unwrap().split("\n    }\n").next().unwrap();
        assert!(verify.contains(".signed(&payload, &signature)"), "verify goes through `signed`");
        assert!(!verify.contains("sign(") && !verify.contains("finalize"), "verify never computes a MAC");
        assert_eq!(code.matches("finalize()").count(), 1, "one MAC computation: `sign`, for minting");
    }

    #[test]
    fn minting_is_bounded() {
        let s = secret(SECRET);
        assert_eq!(mint(&s, &claims(&[])), Err(MintError::NoEvents));
        let many: Vec<String> = (0..=MAX_EVENTS).map(|i| format!("e{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(mint(&s, &claims(&many)), Err(MintError::TooManyEvents));
        let long: Vec<String> = (0..MAX_EVENTS).map(|i| format!("{i}{}", "x".repeat(120))).collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        assert!(matches!(mint(&s, &claims(&long)), Err(MintError::TooLong { .. })));
        let backwards = Claims { expires_at: NOW, ..claims(&["e"]) };
        assert_eq!(mint(&s, &backwards), Err(MintError::Lifetime));
        // The longest token that fits still verifies.
        let most: Vec<String> = (0..MAX_EVENTS).map(|i| format!("event-{i:02}-{}", "y".repeat(30))).collect();
        let most: Vec<&str> = most.iter().map(String::as_str).collect();
        let token = mint(&s, &claims(&most)).unwrap();
        assert!(token.len() > 3000 && token.len() <= MAX_TOKEN_LEN);
        assert_eq!(keys().verify(&token, NOW).unwrap().events, claims(&most).events);
    }

    #[test]
    fn secrets_are_at_least_32_bytes_less_one_line_break() {
        assert!(matches!(Secret::new(&[7; 31]), Err(SecretError::TooShort { len: 31 })));
        let dir = std::env::temp_dir().join(format!("livepush-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        // 31 bytes and a newline: too short once the newline is gone.
        let short = write("short", &[b"x".repeat(31), b"\n".to_vec()].concat());
        assert!(matches!(Secret::from_file(&short), Err(SecretError::TooShort { len: 31 })));
        // The same secret with LF, CRLF or no line break signs alike.
        let bare = Secret::from_file(&write("bare", SECRET)).unwrap();
        let lf = Secret::from_file(&write("lf", &[SECRET, b"\n"].concat())).unwrap();
        let crlf = Secret::from_file(&write("crlf", &[SECRET, b"\r\n"].concat())).unwrap();
        assert_eq!(bare.sign(b"x"), lf.sign(b"x"));
        assert_eq!(bare.sign(b"x"), crlf.sign(b"x"));
        // Only one line break goes.
        let two = Secret::from_file(&write("two", &[SECRET, b"\n\n"].concat())).unwrap();
        assert_ne!(bare.sign(b"x"), two.sign(b"x"));
        assert!(matches!(Secret::from_file(&dir.join("missing")), Err(SecretError::Read(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn query_token_wins_else_cookies_in_order() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "a=1; livepush_token=first; b=2".parse().unwrap());
        headers.append(header::COOKIE, "livepush_token=\"second\"".parse().unwrap());
        assert_eq!(presented(None, &headers).collect::<Vec<_>>(), ["first", "second"]);
        assert_eq!(presented(Some("q"), &headers).collect::<Vec<_>>(), ["q"]);
        let many = (0..10).map(|i| format!("livepush_token=t{i}")).collect::<Vec<_>>().join("; ");
        headers.insert(header::COOKIE, many.parse().unwrap());
        assert_eq!(presented(None, &headers).count(), MAX_COOKIES);
        assert_eq!(presented(None, &HeaderMap::new()).count(), 0);
    }

    #[tokio::test]
    async fn the_first_token_that_covers_the_event_admits() {
        let s = secret(SECRET);
        let auth = Auth::new(Keys::new(s.clone(), None), Duration::from_secs(300), None);
        let now = unix_secs(SystemTime::now());
        let token = |events: &[&str], vid: &str| {
            let c = Claims {
                issued_at: now,
                expires_at: now + 60,
                vid: ViewerId::parse(vid).unwrap(),
                ..claims(events)
            };
            mint(&s, &c).unwrap()
        };
        let (other, mine) = (token(&["other"], "a"), token(&["mine"], "b"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("livepush_token={other}; livepush_token={mine}").parse().unwrap(),
        );
        let admitted = auth.admit(None, &headers, &[ev("mine")]).unwrap();
        assert_eq!(admitted.vid.as_str(), "b");
        let left = admitted.deadline - Instant::now();
        assert!(left > Duration::from_secs(350) && left <= Duration::from_secs(361), "{left:?}");
        // Nothing covers it: the first token's reason.
        assert_eq!(auth.admit(None, &headers, &[ev("third")]).unwrap_err(), TokenError::OtherEvent);
        assert_eq!(
            auth.admit(Some("junk"), &headers, &[ev("mine")]).unwrap_err(),
            TokenError::Malformed("expected two base64url parts joined by a dot")
        );
        assert_eq!(auth.admit(None, &HeaderMap::new(), &[ev("mine")]).unwrap_err(), TokenError::Missing);
        // A multi-event stream: one token must cover every event of it.
        let both = token(&["mine", "other"], "c");
        let admitted = auth.admit(Some(&both), &HeaderMap::new(), &[ev("mine"), ev("other")]).unwrap();
        assert_eq!(admitted.vid.as_str(), "c");
        assert_eq!(
            auth.admit(None, &headers, &[ev("mine"), ev("other")]).unwrap_err(),
            TokenError::OtherEvent
        );
    }

    #[test]
    fn deadlines_never_overflow() {
        let far = deadline(u64::MAX, Duration::from_secs(u64::MAX), SystemTime::now());
        assert!(far > Instant::now() + Duration::from_secs(365 * 24 * 3600));
    }
}
