//! Small files an operator changes while a process runs (credential
//! headers, the gRPC clients, an edge's poller token): read with a size
//! bound, then read again every [`RELOAD_EVERY`] and handed on whenever
//! their contents change, so a rotated secret needs no restart.
//!
//! Contents are compared, not modification times: a Kubernetes Secret
//! volume swaps a symlink, and editors may keep the mtime. Only a hash of
//! the last contents is kept, so a follower holds no second copy of the
//! secrets. A file that cannot be read keeps whatever it held last (its
//! owner decides what an invalid one means), and says so once per outage.

use std::{
    hash::{Hash, Hasher},
    time::Duration,
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How often a followed file is read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The file at `path` as UTF-8, refused beyond `max` bytes (these are a few
/// lines of secrets, not data files). Errors name the path.
pub fn read_bounded(path: &str, max: u64) -> Result<String, String> {
    let len = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?.len();
    if len > max {
        return Err(format!("{path}: larger than {max} bytes"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    String::from_utf8(bytes).map_err(|_| format!("{path}: not UTF-8"))
}

/// A hash of a file's contents, to tell a change without keeping them.
pub fn fingerprint(text: &str) -> u64 {
    // SipHash with fixed keys: the same text always hashes alike.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Reads `path` (at most `max` bytes) every [`RELOAD_EVERY`] until `stop`,
/// and calls `changed` with its contents whenever they differ from the last
/// ones seen (`loaded`: the fingerprint of what was read at start-up).
/// `what` names the file in the log.
pub async fn follow(
    what: &str,
    path: &str,
    max: u64,
    loaded: Option<u64>,
    stop: CancellationToken,
    mut changed: impl FnMut(&str),
) {
    let mut last = loaded;
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let file = path.to_owned();
        let text = match tokio::task::spawn_blocking(move || read_bounded(&file, max)).await {
            Ok(Ok(text)) => text,
            Ok(Err(error)) => {
                if last.take().is_some() {
                    warn!(%error, "{what} unreadable; keeping what it held before");
                }
                continue;
            }
            Err(_) => continue,
        };
        let now = fingerprint(&text);
        if last != Some(now) {
            changed(&text);
            last = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli_checks::{scratch_dir, scratch_file};

    #[test]
    fn bounded_reads_name_the_path() {
        let file = scratch_file(&scratch_dir("livepush-watched"), "f", "0123456789");
        let path = file.to_str().unwrap();
        assert_eq!(read_bounded(path, 10).unwrap(), "0123456789");
        let err = read_bounded(path, 9).unwrap_err();
        assert!(err.contains(path) && err.contains("larger than 9"), "{err}");
        std::fs::write(&file, b"\xff").unwrap();
        assert!(read_bounded(path, 10).unwrap_err().contains("not UTF-8"));
        assert!(read_bounded("/nonexistent/f", 10).unwrap_err().contains("/nonexistent/f"));
        assert_eq!(fingerprint("a"), fingerprint("a"));
        assert_ne!(fingerprint("a"), fingerprint("b"));
    }

    #[tokio::test]
    async fn changes_are_handed_on_once_each() {
        let file = scratch_file(&scratch_dir("livepush-watched-follow"), "f", "one");
        let path = file.to_str().unwrap().to_owned();
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let follower = tokio::spawn({
            let (path, stop) = (path.clone(), stop.clone());
            async move {
                follow("test file", &path, 64, Some(fingerprint("one")), stop, |t| {
                    tx.send(t.to_owned()).unwrap()
                })
                .await
            }
        });
        tokio::time::sleep(RELOAD_EVERY * 2).await;
        assert!(rx.try_recv().is_err(), "unchanged contents are not handed on");
        std::fs::write(&file, "two").unwrap();
        let next = tokio::time::timeout(RELOAD_EVERY * 5, rx.recv()).await.unwrap().unwrap();
        assert_eq!(next, "two");
        tokio::time::sleep(RELOAD_EVERY * 2).await;
        assert!(rx.try_recv().is_err(), "handed on once");
        stop.cancel();
        follower.await.unwrap();
    }
}
