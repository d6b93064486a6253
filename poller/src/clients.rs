//! The poller's gRPC clients: `--clients-file` lists who may call
//! `LiveFeed` and `Presence`, one `TOKEN ROLE NAME` per line (`#` comments
//! and blank lines allowed):
//!
//! ```text
//! # edges subscribe and report viewers; readers subscribe and read presence
//! 6Xq0…long random token…   edge     edge-pool
//! pT9c…long random token…   reader   dashboard
//! ```
//!
//! A call presents its token as `authorization: Bearer TOKEN` (see
//! [`crate::access`]); the client's name then keys what the poller bounds
//! per client (open streams, heartbeat budgets), so one misbehaving client
//! cannot take another's share. Several tokens may carry one name (rotation:
//! list the new token beside the old one, move the clients over, drop the
//! old line), always with the same role.
//!
//! Tokens are never kept: only their SHA-256 digests are, and a presented
//! token is looked up by its digest, so how long a lookup takes says nothing
//! about any token. No log line, metric or error message shows a token, nor
//! any other field of a line that failed to parse (a line with its fields in
//! the wrong order would show the token): errors name the line and the
//! field.
//!
//! The file is read again every [`RELOAD_EVERY`], like the media headers file
//! (`crate::headers`), and a change applies to the next call; a file that
//! turns unreadable or invalid keeps the previous clients and says so in the
//! log. A revoked token ends no stream already open; its next call is
//! refused.

use livepush::{ViewerId, watched_file};
use std::{
    collections::{HashMap, hash_map::Entry},
    sync::Arc,
};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

/// How often the clients file is read again for changes.
pub use livepush::watched_file::RELOAD_EVERY;
/// Largest clients file read: thousands of lines, not a data file.
pub const MAX_FILE: u64 = 1 << 20;

/// What a client may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `Subscribe` and `ReportHeartbeats`: an edge.
    Edge,
    /// `Subscribe`, `GetPresence` and `WatchPresence`: an internal service
    /// that reads.
    Reader,
}

impl Role {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "edge" => Some(Self::Edge),
            "reader" => Some(Self::Reader),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edge => "edge",
            Self::Reader => "reader",
        }
    }
}

/// An authenticated caller: what [`crate::access`] puts in a request's
/// extensions for the services (never the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: Arc<str>,
    pub role: Role,
}

/// A token's SHA-256: what is kept and compared instead of the token.
pub(crate) type Digest = [u8; 32];

pub(crate) fn digest(token: &str) -> Digest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The clients one version of the file lists.
#[derive(Default)]
pub struct ClientTable {
    by_digest: HashMap<Digest, Caller>,
}

impl std::fmt::Debug for ClientTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientTable({} tokens)", self.by_digest.len())
    }
}

impl ClientTable {
    /// Parses the file's text; the error names the line and the field,
    /// never a value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut by_digest: HashMap<Digest, (Caller, usize)> = HashMap::new();
        let mut roles: HashMap<&str, (Role, usize)> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let &[token, role, name] = fields.as_slice() else {
                return Err(format!("line {n}: expected three fields, TOKEN ROLE NAME"));
            };
            if !livepush::bearer::is_valid(token) {
                return Err(format!("line {n}: the token must be {}", livepush::bearer::RULE));
            }
            let role =
                Role::parse(role).ok_or_else(|| format!("line {n}: the role must be `edge` or `reader`"))?;
            if ViewerId::parse(name).is_err() {
                return Err(format!(
                    "line {n}: the name must be 1 to 64 characters from A-Z a-z 0-9 . _ ~ -"
                ));
            }
            match roles.entry(name) {
                Entry::Occupied(o) if o.get().0 != role => {
                    return Err(format!("line {n}: this name has another role on line {}", o.get().1));
                }
                Entry::Occupied(_) => {}
                Entry::Vacant(v) => {
                    v.insert((role, n));
                }
            }
            let caller = Caller { name: Arc::from(name), role };
            match by_digest.entry(digest(token)) {
                Entry::Occupied(o) => return Err(format!("line {n}: the same token as line {}", o.get().1)),
                Entry::Vacant(v) => {
                    v.insert((caller, n));
                }
            }
        }
        let by_digest = by_digest.into_iter().map(|(d, (caller, _))| (d, caller)).collect();
        Ok(Self { by_digest })
    }

    /// The client whose token this is.
    pub fn find(&self, token: &str) -> Option<&Caller> {
        self.by_digest.get(&digest(token))
    }

    /// Tokens listed.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Tokens with `role`.
    pub fn with_role(&self, role: Role) -> usize {
        self.by_digest.values().filter(|c| c.role == role).count()
    }
}

/// `--clients-file`: its path and the clients it held when the flags were
/// parsed (so a bad file stops start-up with the flag and the line).
#[derive(Clone, Debug)]
pub struct ClientsFile {
    pub path: String,
    table: Arc<ClientTable>,
    /// Of the text `table` came from: what the reloads compare with (the
    /// text itself, tokens and all, is not kept).
    text: u64,
}

impl ClientsFile {
    /// Reads and checks the file (the flag's value parser).
    pub fn load(path: &str) -> Result<Self, String> {
        let text = watched_file::read_bounded(path, MAX_FILE)?;
        let table = ClientTable::parse(&text).map_err(|e| format!("{path}: {e}"))?;
        Ok(Self { path: path.to_owned(), table: Arc::new(table), text: watched_file::fingerprint(&text) })
    }
}

/// The clients the file lists now; clones share them.
#[derive(Clone, Debug)]
pub struct Clients {
    current: watch::Receiver<Arc<ClientTable>>,
}

impl Clients {
    /// The clients of `file`, read again every [`RELOAD_EVERY`] by a task
    /// spawned on `tasks` until `stop`.
    pub fn watch(file: &ClientsFile, tasks: &TaskTracker, stop: CancellationToken) -> Self {
        log_loaded(&file.path, &file.table, "gRPC clients file loaded");
        let (tx, current) = watch::channel(file.table.clone());
        tasks.spawn(reload(file.path.clone(), file.text, tx, stop));
        Self { current }
    }

    /// A fixed table (tests).
    pub fn fixed(table: ClientTable) -> Self {
        Self { current: watch::channel(Arc::new(table)).1 }
    }

    /// The client whose token this is, as of now.
    pub fn identify(&self, token: &str) -> Option<Caller> {
        self.current.borrow().find(token).cloned()
    }
}

fn log_loaded(path: &str, table: &ClientTable, message: &str) {
    let (edges, readers) = (table.with_role(Role::Edge), table.with_role(Role::Reader));
    info!(path, tokens = table.len(), edges, readers, "{message}");
    if table.is_empty() {
        warn!(path, "the clients file lists no client: every LiveFeed and Presence call is refused");
    }
}

/// Re-reads the file and publishes its clients when its contents change,
/// starting from what the flag parser read (so a change made since is not
/// missed).
async fn reload(path: String, loaded: u64, tx: watch::Sender<Arc<ClientTable>>, stop: CancellationToken) {
    let what = format!("clients file {path}");
    watched_file::follow(&what, &path, MAX_FILE, Some(loaded), stop, |text| match ClientTable::parse(text) {
        Ok(table) => {
            log_loaded(&path, &table, "gRPC clients file reloaded");
            tx.send_replace(Arc::new(table));
        }
        Err(error) => warn!(%path, %error, "clients file is invalid; keeping the previous clients"),
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use livepush::cli_checks::{scratch_dir, scratch_file};
    use std::time::Duration;

    const T1: &str = "tok-edge-0123456789abcdef";
    const T2: &str = "tok-read-0123456789abcdef";

    #[test]
    fn parses_lines_comments_and_roles() {
        let text = format!("# clients\n\n{T1} edge edge-pool\r\n  {T2}\treader  dashboard \n");
        let table = ClientTable::parse(&text).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table.find(T1), Some(&Caller { name: "edge-pool".into(), role: Role::Edge }));
        assert_eq!(table.find(T2).unwrap().role, Role::Reader);
        assert_eq!(table.find("tok-edge-0123456789abcdeF"), None);
        assert_eq!(table.find(""), None);
        assert!(!format!("{table:?}").contains("tok-"), "Debug shows no token");
        assert!(ClientTable::parse("# nobody\n").unwrap().is_empty());
    }

    #[test]
    fn one_name_may_have_several_tokens_of_one_role() {
        let ok = format!("{T1} edge pool\n{T2} edge pool\n");
        assert_eq!(ClientTable::parse(&ok).unwrap().len(), 2);
        let err = ClientTable::parse(&format!("{T1} edge pool\n{T2} reader pool\n")).unwrap_err();
        assert_eq!(err, "line 2: this name has another role on line 1");
    }

    #[test]
    fn errors_name_the_line_and_field_never_a_value() {
        let secret = "s3cr3t-s3cr3t-s3cr3t";
        for (text, expect) in [
            (format!("{secret} edge"), "line 1: expected three fields"),
            (format!("{secret} edge a b"), "line 1: expected three fields"),
            ("short edge a".to_owned(), "line 1: the token must be"),
            (format!("{secret}\u{e9} edge a"), "line 1: the token must be"),
            ("=================== edge a".to_owned(), "line 1: the token must be"),
            (format!("{T1} edge a\n{secret} admin a"), "line 2: the role must be"),
            (format!("edge-pool edge {secret}x!"), "line 1: the token must be"),
            (format!("{T1} edge {secret}!"), "line 1: the name must be"),
            (format!("{secret} edge a\n# x\n{secret} edge b"), "line 3: the same token as line 1"),
            // Fields in the wrong order: nothing echoed.
            (format!("edge {secret} pool"), "line 1: the token must be"),
            (format!("{T1} {secret} edge"), "line 1: the role must be"),
        ] {
            let err = ClientTable::parse(&text).unwrap_err();
            assert!(err.starts_with(expect), "{text:?}: {err}");
            assert!(!err.contains("s3cr3t"), "{text:?}: {err}");
        }
    }

    #[tokio::test]
    async fn the_file_is_read_again_and_a_bad_version_keeps_the_last_good_one() {
        let path = scratch_file(&scratch_dir("livepush-clients-unit"), "clients", format!("{T1} edge a\n"));
        let file = ClientsFile::load(path.to_str().unwrap()).unwrap();
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        let clients = Clients::watch(&file, &tasks, stop.clone());
        assert_eq!(clients.identify(T1).unwrap().name.as_ref(), "a");
        std::fs::write(&path, format!("{T2} reader b\n")).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while clients.identify(T2).is_none() {
            assert!(tokio::time::Instant::now() < deadline, "the new file was not read");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(clients.identify(T1), None, "the old token is gone");
        std::fs::write(&path, "not a clients line\n").unwrap();
        tokio::time::sleep(RELOAD_EVERY * 2).await;
        assert_eq!(clients.identify(T2).unwrap().role, Role::Reader, "kept");
        stop.cancel();
        tasks.close();
        tasks.wait().await;
        assert!(ClientsFile::load("/nonexistent/clients").unwrap_err().contains("/nonexistent/clients"));
    }
}
