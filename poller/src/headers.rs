//! Extra request headers for the services the poller calls: API keys and
//! bearer tokens, from `--media-header` / `--heartbeat-header` and from a
//! file (`--media-headers-file`), so secrets can stay out of `argv` and `ps`
//! (Kubernetes mounts a Secret there).
//!
//! The file is read again every [`RELOAD_EVERY`] and a change takes effect
//! on the next request, so a rotated token needs no restart and no poll is
//! dropped. A file that turns invalid keeps the previous headers (and says
//! so in the log). Values are secrets: they are marked sensitive (so `Debug`
//! prints `Sensitive` and HTTP/2 never indexes them), and no log line,
//! metric or error message ever shows one: errors name the flag, the line
//! and the header, never the value.

use clap::{Arg, Command, builder::TypedValueParser, error::ErrorKind};
use livepush::watched_file;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::{ffi::OsStr, sync::Arc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a headers file is read again for changes.
pub use livepush::watched_file::RELOAD_EVERY;

/// Largest headers file read: a few tokens, not a data file.
pub const MAX_FILE: u64 = 64 << 10;

/// Headers the poller sets itself (conditional requests) or that belong to
/// the connection, not to the caller.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "if-none-match",
    "if-modified-since",
];

/// One `Name: value` header; `Debug` shows the name only.
#[derive(Clone)]
pub struct Header {
    pub name: HeaderName,
    pub value: HeaderValue,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: <redacted>", self.name)
    }
}

impl Header {
    /// Parses `Name: value`. The error never contains the value.
    pub fn parse(line: &str) -> Result<Self, String> {
        let (name, value) = line.split_once(':').ok_or("expected 'Name: value'")?;
        let name = name.trim();
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", printable(name)))?;
        if RESERVED.contains(&name.as_str()) {
            return Err(format!("header {name} is set by the poller itself"));
        }
        let value = value.trim();
        // Visible ASCII and tabs only: `HeaderValue` would take bytes above
        // 0x7f, which servers disagree about.
        let invalid = || format!("header {name}: invalid value (control characters or non-ASCII)");
        if !value.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
            return Err(invalid());
        }
        let mut value = HeaderValue::from_str(value).map_err(|_| invalid())?;
        if value.is_empty() {
            return Err(format!("header {name}: empty value"));
        }
        value.set_sensitive(true);
        Ok(Self { name, value })
    }
}

/// The value parser of `--media-header` and `--heartbeat-header`: unlike
/// clap's own errors, its errors do not echo the value (it may be a secret).
#[derive(Clone, Copy, Debug)]
pub struct HeaderParser;

impl TypedValueParser for HeaderParser {
    type Value = Header;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<Header, clap::Error> {
        let flag = arg.map_or_else(|| "header".to_owned(), |a| a.to_string());
        let parsed = value.to_str().ok_or_else(|| "not UTF-8".to_owned()).and_then(Header::parse);
        parsed.map_err(|reason| {
            clap::Error::raw(ErrorKind::ValueValidation, format!("invalid value for '{flag}': {reason}\n"))
                .with_cmd(cmd)
        })
    }
}

/// `--media-headers-file` / `--heartbeat-headers-file`: its path and the
/// headers it held when the flags were parsed.
#[derive(Clone, Debug)]
pub struct HeadersFile {
    pub path: String,
    pub headers: Vec<Header>,
}

impl HeadersFile {
    /// Reads and checks the file (the flags' value parser).
    pub fn load(path: &str) -> Result<Self, String> {
        let text = read_bounded(path)?;
        let headers = parse_file(&text).map_err(|e| format!("{path}: {e}"))?;
        Ok(Self { path: path.to_owned(), headers })
    }
}

/// One `Name: value` per line; blank lines and lines starting with `#` are
/// skipped.
fn parse_file(text: &str) -> Result<Vec<Header>, String> {
    let mut headers = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        headers.push(Header::parse(line).map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    Ok(headers)
}

fn read_bounded(path: &str) -> Result<String, String> {
    watched_file::read_bounded(path, MAX_FILE)
}

/// The headers to add to every request of one kind (media or heartbeat),
/// always the latest the file held. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct RequestHeaders {
    current: watch::Receiver<Arc<HeaderMap>>,
}

impl RequestHeaders {
    /// Headers from flags and, if given, a file that is watched for changes
    /// until `stop` (the watcher is spawned only when there is a file).
    /// `what` names them in the log ("media", "heartbeat").
    pub fn new(
        what: &'static str,
        flags: &[Header],
        file: Option<&HeadersFile>,
        tasks: &tokio_util::task::TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let map = merge(flags, file.map(|f| f.headers.as_slice()).unwrap_or_default());
        if !map.is_empty() {
            info!(headers = ?names(&map), file = file.map(|f| f.path.as_str()), "{what} request headers");
        }
        let (tx, current) = watch::channel(Arc::new(map));
        if let Some(file) = file {
            let watcher = Watcher { what, flags: flags.to_vec(), path: file.path.clone(), tx };
            tasks.spawn(watcher.run(stop));
        }
        Self { current }
    }

    /// No extra headers.
    pub fn none() -> Self {
        Self { current: watch::channel(Arc::new(HeaderMap::new())).1 }
    }

    /// The headers for the request about to be sent.
    pub fn current(&self) -> Arc<HeaderMap> {
        self.current.borrow().clone()
    }
}

/// Flag headers first; a name the file also sets comes from the file only
/// (the file holds the secrets that rotate).
fn merge(flags: &[Header], file: &[Header]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for h in flags.iter().filter(|h| !file.iter().any(|f| f.name == h.name)).chain(file) {
        map.append(h.name.clone(), h.value.clone());
    }
    map
}

fn names(map: &HeaderMap) -> Vec<&str> {
    map.keys().map(HeaderName::as_str).collect()
}

/// An id-like rendering of a header name for an error message: at most 64
/// characters, anything unusual escaped.
fn printable(s: &str) -> String {
    s.chars().take(64).flat_map(char::escape_default).collect()
}

/// Re-reads one headers file and publishes its headers when they change.
struct Watcher {
    what: &'static str,
    flags: Vec<Header>,
    path: String,
    tx: watch::Sender<Arc<HeaderMap>>,
}

impl Watcher {
    async fn run(self, stop: CancellationToken) {
        let loaded = read_bounded(&self.path).ok().map(|t| watched_file::fingerprint(&t));
        let what = format!("{} headers file {}", self.what, self.path);
        watched_file::follow(&what, &self.path, MAX_FILE, loaded, stop, |text| match parse_file(text) {
            Ok(headers) => {
                let map = merge(&self.flags, &headers);
                info!(path = %self.path, headers = ?names(&map), "{} headers file reloaded", self.what);
                self.tx.send_replace(Arc::new(map));
            }
            Err(error) => {
                warn!(path = %self.path, %error, "{} headers file is invalid; keeping the previous headers", self.what)
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let h = Header::parse("X-Api-Key:  s3cr3t ").unwrap();
        assert_eq!(h.name, "x-api-key");
        assert_eq!(h.value, "s3cr3t");
        assert!(h.value.is_sensitive());
        assert!(!format!("{h:?}").contains("s3cr3t"));
        assert!(Header::parse("Authorization: Bearer a:b").is_ok(), "colons in the value");
    }

    #[test]
    fn errors_name_the_problem_not_the_value() {
        for (line, expect) in [
            ("no colon s3cr3t", "expected"),
            ("Bad Name: s3cr3t", "invalid header name"),
            ("X-Key: s3cr3t\u{7}", "invalid value"),
            ("X-Key: s3cr3t\u{e9}", "invalid value"),
            ("X-Key:   ", "empty value"),
            ("Host: s3cr3t", "set by the poller"),
            ("If-None-Match: s3cr3t", "set by the poller"),
        ] {
            let err = Header::parse(line).unwrap_err();
            assert!(err.contains(expect), "{line:?}: {err}");
            assert!(!err.contains("s3cr3t"), "{line:?}: {err}");
        }
    }

    #[test]
    fn file_lines_comments_and_errors() {
        let ok = parse_file("# token\n\nAuthorization: Bearer t1\r\nX-A: 1\n").unwrap();
        assert_eq!(ok.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["authorization", "x-a"]);
        let err = parse_file("X-A: 1\nX-B s3cr3t\n").unwrap_err();
        assert!(err.starts_with("line 2:") && !err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn the_file_wins_over_flags_for_one_name() {
        let flags = [Header::parse("X-Key: flag").unwrap(), Header::parse("X-Other: o").unwrap()];
        let file = [Header::parse("X-Key: file").unwrap()];
        let map = merge(&flags, &file);
        assert_eq!(map.get_all("x-key").iter().collect::<Vec<_>>(), ["file"]);
        assert_eq!(map["x-other"], "o");
    }
}
