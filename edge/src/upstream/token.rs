//! The edge's bearer token for pollers started with `--clients-file`:
//! `--poller-token-file` holds it (a Kubernetes Secret mounted as a file,
//! so it is not in `argv` or `ps`), and every call to a poller carries it as
//! `authorization: Bearer TOKEN` (Subscribe, ReportHeartbeats, and health
//! watches, which do not need it).
//!
//! The file is read again every [`RELOAD_EVERY`] and a change applies to the
//! next call, so a rotated token needs no restart (streams already open
//! stay open: the poller checks tokens when a call starts). A file that
//! turns unreadable or invalid keeps the previous token and says so in the
//! log. The token never appears in a log line or error message, and is
//! marked sensitive so HTTP/2 never indexes it.
//!
//! File format: the token on a line of its own; blank lines and lines
//! starting with `#` are skipped; surrounding whitespace is ignored.

use livepush::watched_file;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::Interceptor,
};
use tracing::{info, warn};

/// How often the token file is read again for changes.
pub use livepush::watched_file::RELOAD_EVERY;
/// Largest token file read: one token and some comments.
pub const MAX_FILE: u64 = 16 << 10;

type Header = MetadataValue<Ascii>;

/// `--poller-token-file`: its path and what it held when the flags were
/// parsed. `Debug` never shows the token.
#[derive(Clone)]
pub struct TokenFile {
    pub path: String,
    /// Of the text read at start-up (the token itself is kept only as the
    /// header).
    text: u64,
    header: Header,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenFile({:?}, <redacted>)", self.path)
    }
}

impl TokenFile {
    /// Reads and checks the file (the flag's value parser).
    pub fn load(path: &str) -> Result<Self, String> {
        let text = read_bounded(path)?;
        let header = parse(&text).map_err(|e| format!("{path}: {e}"))?;
        Ok(Self { path: path.to_owned(), text: watched_file::fingerprint(&text), header })
    }
}

/// The `authorization` value for the token the file holds; the error never
/// shows any of the file.
fn parse(text: &str) -> Result<Header, String> {
    let token = livepush::bearer::from_file(text)?;
    let mut header: Header =
        format!("Bearer {token}").parse().map_err(|_| "the token is not a valid header value".to_owned())?;
    header.set_sensitive(true);
    Ok(header)
}

fn read_bounded(path: &str) -> Result<String, String> {
    watched_file::read_bounded(path, MAX_FILE)
}

/// The token every poller call carries (none without a file); clones share
/// it. As a tonic [`Interceptor`], it adds the header to each call.
#[derive(Clone)]
pub struct PollerToken {
    current: watch::Receiver<Option<Header>>,
    source: Option<Arc<Source>>,
}

struct Source {
    path: String,
    loaded: u64,
    tx: watch::Sender<Option<Header>>,
}

impl PollerToken {
    /// The token of `file`, if one is given; [`follow`](Self::follow)
    /// keeps it current.
    pub fn new(file: Option<&TokenFile>) -> Self {
        let (tx, current) = watch::channel(file.map(|f| f.header.clone()));
        let source = file.map(|f| Arc::new(Source { path: f.path.clone(), loaded: f.text, tx }));
        if let Some(file) = file {
            info!(path = %file.path, "calls to pollers carry the token from this file");
        }
        Self { current, source }
    }

    /// Reads the file again every [`RELOAD_EVERY`] until `stop`, publishing
    /// a changed token (returns at once without a file).
    pub async fn follow(self, stop: CancellationToken) {
        let Some(source) = self.source else { return };
        let what = format!("poller token file {}", source.path);
        watched_file::follow(&what, &source.path, MAX_FILE, Some(source.loaded), stop, |text| match parse(text) {
            Ok(header) => {
                info!(path = %source.path, "poller token file reloaded");
                source.tx.send_replace(Some(header));
            }
            Err(error) => {
                warn!(path = %source.path, %error, "poller token file is invalid; keeping the previous token")
            }
        })
        .await;
    }
}

impl Interceptor for PollerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = self.current.borrow().as_ref() {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TOKEN: &str = "edge-token-0123456789";

    fn header(token: &PollerToken) -> Option<String> {
        let request = token.clone().call(Request::new(())).unwrap();
        request.metadata().get("authorization").map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn parses_one_token_and_never_shows_it() {
        let h = parse(&format!("# for the pollers\n\n  {TOKEN}  \r\n")).unwrap();
        assert_eq!(h, format!("Bearer {TOKEN}").as_str());
        assert!(h.is_sensitive());
        for (text, expect) in [
            ("", "no token"),
            ("# only\n", "no token"),
            ("s3cr3t-s3cr3t-s3cr3t\ns3cr3t-s3cr3t-s3cr3t\n", "more than one line"),
            ("s3cr3t", "the token must be"),
            ("s3cr3t s3cr3t s3cr3t s3cr3t", "the token must be"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with(expect) && !err.contains("s3cr3t"), "{text:?}: {err}");
        }
        assert_eq!(header(&PollerToken::new(None)), None, "no file, no header");
    }

    #[tokio::test]
    async fn the_file_is_followed_and_a_bad_version_keeps_the_last_token() {
        let dir = std::env::temp_dir().join(format!("livepush-poller-token-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        let file = TokenFile::load(path.to_str().unwrap()).unwrap();
        assert!(!format!("{file:?}").contains(TOKEN));
        let token = PollerToken::new(Some(&file));
        assert_eq!(header(&token), Some(format!("Bearer {TOKEN}")));
        let stop = CancellationToken::new();
        let follower = tokio::spawn(token.clone().follow(stop.clone()));
        std::fs::write(&path, "rotated-token-0123456789\n").unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while header(&token).as_deref() != Some("Bearer rotated-token-0123456789") {
            assert!(tokio::time::Instant::now() < deadline, "the rotated token was not read");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::write(&path, "").unwrap();
        tokio::time::sleep(RELOAD_EVERY * 2).await;
        assert_eq!(header(&token).as_deref(), Some("Bearer rotated-token-0123456789"), "kept");
        stop.cancel();
        follower.await.unwrap();
    }
}
