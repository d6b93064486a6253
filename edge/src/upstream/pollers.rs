//! The pollers this edge may subscribe to, and which of them owns each event.
//!
//! `--poller` names one or more targets; each is a scheme (`http://`, or
//! `https://` for TLS verified for the host's name, see
//! [`crate::upstream::tls`]), a host (an IP address or a
//! DNS name, re-resolved every `--poller-resolve-interval`, so a Kubernetes
//! headless Service works as discovery) and a port. Every address found is a
//! member, and a member is *live* while the standard gRPC health service on
//! it reports `livepush.v1.LiveFeed` as SERVING on an open `Health/Watch`
//! stream. A draining poller says NOT_SERVING; a dead one breaks the stream
//! (or its HTTP/2 keep-alive fails) and a failing subscription makes the
//! member suspect at once, until a fresh `Health/Check` clears it.
//!
//! Ownership is rendezvous (highest-random-weight) hashing of the event id
//! over the live members' addresses: every edge computes the same owner
//! without talking to the others, so the media service still sees one poll
//! per event per interval across the cluster, and when a member comes or goes
//! only the events it wins or held move.

use crate::upstream::channels::{ChannelPool, Dial, Link, PollerChannel};
pub use livepush::target::Target;
use livepush::{EventId, proto::presence_client::PresenceClient};
use rand::Rng;
use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Notify, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tracing::{debug, info, warn};

/// The service whose health decides whether a member is live.
const HEALTH_SERVICE: &str = "livepush.v1.LiveFeed";
/// Longest a `Health/Check` of a suspect member may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Wait between attempts to reach a member that is down: doubling from the
/// first to the last, with jitter.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Longest the first routing waits for every poller's first health answer.
const SETTLE: Duration = Duration::from_secs(2);
/// Longest one name resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most members, whatever DNS returns: a bound on tasks and connections.
pub const MAX_MEMBERS: usize = 256;

/// One poller address with its clients: subscriptions lease a place on one
/// of its [`ChannelPool`]'s connections; health and presence share a control
/// connection of their own.
#[derive(Clone)]
pub struct Member {
    pub addr: SocketAddr,
    /// The ranking key: the same string on every edge for the same poller.
    key: Arc<str>,
    pub feeds: Arc<ChannelPool>,
    pub presence: PresenceClient<PollerChannel>,
    channel: PollerChannel,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

impl PartialEq for Member {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
    }
}

/// The live members at one moment.
#[derive(Clone, Default, Debug)]
pub struct Live {
    members: Vec<Member>,
}

impl Live {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member that owns `event`: the highest weight wins.
    pub fn owner(&self, event: &EventId) -> Option<&Member> {
        self.owner_index(event).map(|i| &self.members[i])
    }

    /// The owner's position in [`Live::members`].
    pub fn owner_index(&self, event: &EventId) -> Option<usize> {
        (0..self.members.len()).max_by_key(|&i| rank(&self.members[i].key, event.as_str()))
    }
}

/// Orders members for `event`: weight first, the key breaks (improbable) ties.
#[doc(hidden)] // Public for the micro-benchmarks (edge/benches) only.
pub fn rank<'a>(key: &'a str, event: &str) -> (u64, &'a str) {
    (weight(key, event), key)
}

/// Rendezvous weight of `event` on the member `key`. xxh3 is specified and
/// stable across versions and platforms, so edges built at different times
/// agree on every owner.
fn weight(key: &str, event: &str) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    hasher.update(key.as_bytes());
    hasher.update(&[0]);
    hasher.update(event.as_bytes());
    hasher.digest()
}

/// Handle to this edge's view of the pollers; clones share it.
#[derive(Clone)]
pub struct Pollers {
    inner: Arc<Inner>,
}

struct Inner {
    live_tx: watch::Sender<Live>,
    /// Until every member found at start-up answered its first health check
    /// (or [`SETTLE`] passed, for members that do not answer), the live set is not published: routing events
    /// to whichever poller answered first would move most of them again a
    /// moment later.
    settled: AtomicBool,
    table: Mutex<BTreeMap<SocketAddr, Entry>>,
    /// How members are reached (TLS, token).
    link: Link,
    tasks: TaskTracker,
    stop: CancellationToken,
}

struct Entry {
    member: Member,
    up: bool,
    /// It answered a health check at least once.
    checked: bool,
    /// Wakes the member's health task to re-check it now.
    suspect: Arc<Notify>,
    cancel: CancellationToken,
}

impl Pollers {
    /// Starts discovery of `targets` (re-resolving names every
    /// `resolve_every`) and the health watch of every member, reached
    /// through `link` (whose token file is followed too), until `stop`.
    pub fn start(targets: Vec<Target>, resolve_every: Duration, link: Link, stop: CancellationToken) -> Self {
        let pollers = Self::empty(link, stop);
        let discovery = pollers.clone().discover(targets, resolve_every);
        pollers.inner.tasks.spawn(discovery);
        let token = pollers.inner.link.token().clone();
        pollers.inner.tasks.spawn(token.follow(pollers.inner.stop.clone()));
        let settle = pollers.clone();
        pollers.inner.tasks.spawn(async move {
            tokio::select! {
                _ = settle.inner.stop.cancelled() => {}
                _ = tokio::time::sleep(SETTLE) => {
                    settle.inner.settled.store(true, Ordering::Relaxed);
                    settle.publish(&settle.lock());
                }
            }
        });
        pollers
    }

    fn empty(link: Link, stop: CancellationToken) -> Self {
        let inner = Inner {
            live_tx: watch::channel(Live::default()).0,
            settled: AtomicBool::new(false),
            table: Mutex::new(BTreeMap::new()),
            link,
            tasks: TaskTracker::new(),
            stop,
        };
        Self { inner: Arc::new(inner) }
    }

    /// The live members now, and every change from here on.
    pub fn watch(&self) -> watch::Receiver<Live> {
        self.inner.live_tx.subscribe()
    }

    pub fn live(&self) -> Live {
        self.inner.live_tx.borrow().clone()
    }

    /// Addresses known from the targets, live or not.
    pub fn known(&self) -> usize {
        self.lock().len()
    }

    /// A call to `addr` failed in a way that suggests the poller is gone:
    /// stop routing to it at once and have its health task check it again.
    pub fn suspect(&self, addr: SocketAddr) {
        let mut table = self.lock();
        if let Some(entry) = table.get_mut(&addr) {
            entry.suspect.notify_one();
            if entry.up {
                entry.up = false;
                warn!(poller = %addr, "poller suspect after a failed call; routing around it");
                self.publish(&table);
            }
        }
    }

    /// Waits (at most `timeout`) for discovery and health tasks to end after `stop`.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.inner.tasks.close();
        tokio::time::timeout(timeout, self.inner.tasks.wait()).await.is_ok()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<SocketAddr, Entry>> {
        livepush::sync::lock(&self.inner.table, "pollers")
    }

    fn publish(&self, table: &BTreeMap<SocketAddr, Entry>) {
        if !self.inner.settled.load(Ordering::Relaxed) {
            if table.is_empty() || table.values().any(|e| !e.checked) {
                return;
            }
            self.inner.settled.store(true, Ordering::Relaxed);
        }
        let members: Vec<Member> = table.values().filter(|e| e.up).map(|e| e.member.clone()).collect();
        let metrics = livepush::metrics::edge_upstream();
        metrics.pollers_up.set(members.len() as f64);
        metrics.pollers_known.set(table.len() as f64);
        self.inner.live_tx.send_replace(Live { members });
    }

    /// Records a member's health; `answered` when the member itself said so
    /// (a refused connection at start-up may be a poller still starting).
    fn set_up(&self, addr: SocketAddr, up: bool, answered: bool) {
        let mut table = self.lock();
        if let Some(entry) = table.get_mut(&addr)
            && (entry.up != up || (answered && !entry.checked))
        {
            entry.checked |= answered;
            entry.up = up;
            if up {
                info!(poller = %addr, "poller serving");
            } else {
                warn!(poller = %addr, "poller not serving");
            }
            self.publish(&table);
        }
    }

    /// Makes the members exactly `addrs`, each reached as its [`Dial`] says
    /// (bounded by [`MAX_MEMBERS`]).
    fn set_members(&self, addrs: &BTreeMap<SocketAddr, Dial>) {
        let mut table = self.lock();
        let before = table.len();
        table.retain(|addr, entry| {
            let keep = addrs.contains_key(addr);
            if !keep {
                info!(poller = %addr, "poller address gone from discovery");
                entry.cancel.cancel();
            }
            keep
        });
        let mut changed = table.len() != before;
        for (&addr, dial) in addrs {
            if table.len() >= MAX_MEMBERS {
                warn!(limit = MAX_MEMBERS, "too many poller addresses; ignoring the rest");
                break;
            }
            if table.contains_key(&addr) {
                continue;
            }
            let entry = self.new_entry(dial);
            let health = self.clone().health(addr, entry.suspect.clone(), entry.cancel.clone());
            self.inner.tasks.spawn(health);
            info!(poller = %addr, "poller address discovered");
            table.insert(addr, entry);
            changed = true;
        }
        if changed {
            self.publish(&table);
        }
    }

    fn new_entry(&self, dial: &Dial) -> Entry {
        let (addr, link) = (dial.addr, &self.inner.link);
        let channel = link.connect(dial);
        let member = Member {
            addr,
            key: addr.to_string().into(),
            feeds: ChannelPool::new(dial.clone(), link.clone()),
            presence: PresenceClient::new(channel.clone()),
            channel,
        };
        Entry {
            member,
            up: false,
            checked: false,
            suspect: Arc::new(Notify::new()),
            cancel: self.inner.stop.child_token(),
        }
    }

    /// Resolves the targets now and every `every`; a name that fails to
    /// resolve keeps the addresses it had (DNS hiccups do not empty the
    /// cluster).
    async fn discover(self, targets: Vec<Target>, every: Duration) {
        let mut last: Vec<Vec<SocketAddr>> = vec![Vec::new(); targets.len()];
        let mut failing = vec![false; targets.len()];
        loop {
            for (i, target) in targets.iter().enumerate() {
                // A hung resolver must not stall discovery of the others.
                let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, target.resolve())
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
                match resolved {
                    Ok(addrs) if !addrs.is_empty() => {
                        last[i] = addrs;
                        if std::mem::take(&mut failing[i]) {
                            info!(%target, "poller name resolves again");
                        }
                    }
                    Ok(_) => debug!(%target, "poller name resolved to no address; keeping the last ones"),
                    Err(e) if !failing[i] => {
                        failing[i] = true;
                        warn!(%target, error = %e, "cannot resolve poller name; keeping the last addresses");
                    }
                    Err(e) => debug!(%target, error = %e, "cannot resolve poller name again"),
                }
            }
            // An address two targets resolve to is reached as the first says.
            let mut dials = BTreeMap::new();
            for (target, addrs) in targets.iter().zip(&last) {
                for &addr in addrs {
                    dials.entry(addr).or_insert_with(|| Dial { addr, tls_name: target.tls_name() });
                }
            }
            self.set_members(&dials);
            tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Follows `Health/Watch` on one member until it leaves discovery or the
    /// edge stops; reconnects with backoff while the member is down.
    async fn health(self, addr: SocketAddr, suspect: Arc<Notify>, cancel: CancellationToken) {
        let mut client = match self.lock().get(&addr) {
            Some(entry) => HealthClient::new(entry.member.channel.clone()),
            None => return,
        };
        let request = || HealthCheckRequest { service: HEALTH_SERVICE.into() };
        let mut failures = 0u32;
        loop {
            let watched = tokio::select! {
                _ = cancel.cancelled() => return,
                r = client.watch(request()) => r,
            };
            match watched {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    loop {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            () = suspect.notified() => {
                                let checked = tokio::time::timeout(CHECK_TIMEOUT, client.check(request())).await;
                                let serving = matches!(&checked, Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32);
                                let answered = matches!(checked, Ok(Ok(_)));
                                self.set_up(addr, serving, answered);
                                if !answered {
                                    break;
                                }
                            }
                            message = stream.message() => match message {
                                Ok(Some(status)) => {
                                    let serving = status.status == ServingStatus::Serving as i32;
                                    self.set_up(addr, serving, true);
                                    if !serving {
                                        // A draining poller waits for its
                                        // streams to end: let go of this one
                                        // and ask again later.
                                        break;
                                    }
                                    failures = 0;
                                }
                                Ok(None) => break,
                                Err(status) => {
                                    debug!(poller = %addr, %status, "health watch ended");
                                    break;
                                }
                            },
                        }
                    }
                }
                Err(status) => debug!(poller = %addr, %status, "health watch refused"),
            }
            self.set_up(addr, false, false);
            failures = failures.saturating_add(1);
            let wait = RETRY_MIN.saturating_mul(1 << failures.min(6)).min(RETRY_MAX);
            let wait = wait.mul_f64(rand::rng().random_range(0.5..=1.0));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner<'a>(keys: &[&'a str], event: &str) -> &'a str {
        keys.iter().copied().max_by_key(|k| rank(k, event)).unwrap()
    }

    #[test]
    fn adding_a_member_moves_about_one_nth_of_the_events_and_only_to_it() {
        let three = ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"];
        let four = ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051", "10.0.0.4:50051"];
        let events: Vec<String> = (0..10_000).map(|i| format!("event-{i}")).collect();
        let mut moved = 0;
        let mut per_owner = std::collections::HashMap::<&str, usize>::new();
        for e in &events {
            let (before, after) = (owner(&three, e), owner(&four, e));
            *per_owner.entry(after).or_default() += 1;
            if before != after {
                moved += 1;
                assert_eq!(after, "10.0.0.4:50051", "{e} moved between old members");
            }
        }
        // 1/4 of 10,000 is 2,500; allow for hashing noise.
        assert!((2_200..=2_800).contains(&moved), "{moved} events moved");
        for (k, n) in per_owner {
            assert!((2_200..=2_800).contains(&n), "{k} owns {n}");
        }
    }

    #[test]
    fn removing_a_member_moves_only_its_events() {
        let three = ["a:1", "b:1", "c:1"];
        let two = ["a:1", "c:1"];
        for i in 0..5_000 {
            let e = format!("e{i}");
            let before = owner(&three, &e);
            if before != "b:1" {
                assert_eq!(owner(&two, &e), before, "{e} moved although its owner stayed");
            }
        }
    }

    #[test]
    fn ownership_does_not_depend_on_member_order() {
        let a = ["x:1", "y:1", "z:1"];
        let b = ["z:1", "x:1", "y:1"];
        for i in 0..1_000 {
            let e = format!("e{i}");
            assert_eq!(owner(&a, &e), owner(&b, &e));
        }
        // Pinned: a change of hash would split ownership across edge versions.
        // An independent xxh3 (Python's xxhash) gave this value.
        assert_eq!(weight("127.0.0.1:50051", "match-42"), 14_127_173_975_049_704_396);
    }

    #[tokio::test]
    async fn members_follow_discovery_and_stay_bounded() {
        let stop = CancellationToken::new();
        let pollers = Pollers::empty(Link::plain(), stop.clone());
        let many: BTreeMap<SocketAddr, Dial> = (0..(MAX_MEMBERS as u16 + 50))
            .map(|p| SocketAddr::from(([127, 0, 0, 1], 20_000 + p)))
            .map(|a| (a, Dial::plain(a)))
            .collect();
        pollers.set_members(&many);
        assert_eq!(pollers.known(), MAX_MEMBERS);
        let few: BTreeMap<SocketAddr, Dial> = many.iter().take(3).map(|(a, d)| (*a, d.clone())).collect();
        pollers.set_members(&few);
        assert_eq!(pollers.known(), 3);
        // Nothing answers on those ports: none is live.
        assert!(pollers.live().is_empty());
        stop.cancel();
        assert!(pollers.drain(Duration::from_secs(5)).await);
    }
}
