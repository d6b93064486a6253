//! The other pollers (`--peers`), for hints about events this poller does
//! not watch: the names are resolved again every `--peers-resolve-interval`
//! (a Kubernetes headless Service lists every poller), and a hint goes to
//! each address found.

use livepush::target::Target;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

/// Most peer addresses, whatever DNS returns (each hint goes to all).
pub const MAX_PEERS: usize = 256;
/// Longest one name resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A `--peers` value: as the edge's `--poller` (`http://host:port`,
/// `https://host:port`), or a bare `host:port` meaning `http://`.
pub fn parse_peer(s: &str) -> Result<Target, String> {
    let s = s.trim();
    if s.contains("://") { Target::parse(s) } else { Target::parse(&format!("http://{s}")) }
}

/// Where a forwarded hint goes: the base URL of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `http://10.0.0.7:50051`, or `https://name:port` for a TLS peer (its
    /// certificate is verified for the name, so a TLS peer is reached by
    /// its name, not by each address).
    pub base: String,
}

/// The peers as last resolved; clones share them.
#[derive(Clone)]
pub struct Peers {
    current: watch::Receiver<Arc<Vec<Peer>>>,
}

impl Peers {
    /// Resolves `targets` now and every `every` until `stop`.
    pub fn start(
        targets: Vec<Target>,
        every: Duration,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let (tx, current) = watch::channel(Arc::new(Vec::new()));
        if !targets.is_empty() {
            tasks.spawn(resolve_loop(targets, every, tx, stop));
        }
        Self { current }
    }

    /// The peers now.
    pub fn current(&self) -> Arc<Vec<Peer>> {
        self.current.borrow().clone()
    }

    /// Waits (at most `timeout`) until the first resolution is done.
    pub async fn ready(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.current.changed()).await;
    }
}

async fn resolve_loop(
    targets: Vec<Target>,
    every: Duration,
    tx: watch::Sender<Arc<Vec<Peer>>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut peers = Vec::new();
        for target in &targets {
            if target.tls {
                peers.push(Peer { base: target.to_string() });
                continue;
            }
            match tokio::time::timeout(RESOLVE_TIMEOUT, target.resolve()).await {
                Ok(Ok(addrs)) => {
                    peers.extend(addrs.into_iter().map(|a: SocketAddr| Peer { base: format!("http://{a}") }))
                }
                Ok(Err(e)) => warn!(peer = %target, error = %e, "cannot resolve a peer"),
                Err(_) => warn!(peer = %target, "resolving a peer timed out"),
            }
        }
        peers.sort_by(|a, b| a.base.cmp(&b.base));
        peers.dedup();
        peers.truncate(MAX_PEERS);
        if **tx.borrow() != peers {
            debug!(peers = peers.len(), "peers resolved");
            tx.send_replace(Arc::new(peers));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_peers_mean_http() {
        assert_eq!(parse_peer("p:7000").unwrap().to_string(), "http://p:7000");
        assert_eq!(parse_peer(" https://p ").unwrap().to_string(), "https://p:50051");
        assert!(parse_peer("ftp://p").is_err() && parse_peer("").is_err() && parse_peer("p:1/x").is_err());
    }

    #[tokio::test]
    async fn addresses_are_resolved_and_bounded() {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let targets = vec![parse_peer("127.0.0.1:9").unwrap(), parse_peer("https://poller.svc:7").unwrap()];
        let mut peers = Peers::start(targets, Duration::from_secs(60), &tasks, stop.clone());
        peers.ready(Duration::from_secs(5)).await;
        let bases: Vec<String> = peers.current().iter().map(|p| p.base.clone()).collect();
        assert_eq!(bases, ["http://127.0.0.1:9", "https://poller.svc:7"]);
        stop.cancel();
    }
}
