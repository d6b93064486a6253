//! The HTTP/2 connections ("channels") this edge holds to one poller for
//! `Subscribe` streams.
//!
//! One connection per poller cannot carry any number of events: the poller
//! serves at most `--max-streams` subscriptions per connection, and a call
//! beyond a connection's HTTP/2 limit would wait in the client's queue with
//! no error. So streams are leased from a pool that opens another channel
//! when every open one is at the per-channel budget, and closes a channel
//! once its last stream is gone (one idle channel is kept warm). The budget
//! is the poller's limit, learned from the `livepush-max-streams` metadata
//! of its answers, capped at [`MAX_PER_CHANNEL`] so that one dropped
//! connection never takes every event with it.
//!
//! Health watches and presence reports use a channel of their own, so churn
//! on subscriptions cannot take the poller's health down with it.
//!
//! Every channel is made by one [`Link`]: plain h2c for `http://` pollers,
//! TLS for `https://` ones ([`crate::upstream::tls`]), and every call carries
//! the edge's bearer token when it has one ([`crate::upstream::token`]).

use crate::upstream::{
    tls::{self as poller_tls, PollerCa, TlsConnector},
    token::PollerToken,
};
use livepush::{metrics::Gauge, proto::live_feed_client::LiveFeedClient};
use rustls::pki_types::ServerName;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::Duration,
};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

/// Most subscriptions on one channel, whatever the poller allows.
pub const MAX_PER_CHANNEL: usize = 1_000;

/// HTTP/2 PINGs on poller connections find a peer that vanished without
/// closing its sockets (a partition, a frozen host) within about
/// `KEEPALIVE + KEEPALIVE_TIMEOUT`, even while no update flows.
const KEEPALIVE: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel to a poller: every call on it carries the edge's token.
pub type PollerChannel = InterceptedService<Channel, PollerToken>;

/// One poller address and how to greet it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dial {
    pub addr: SocketAddr,
    /// For an `https://` poller, the name its certificate must carry (the
    /// `--poller` URL's host); `None` for `http://`.
    pub tls_name: Option<ServerName<'static>>,
}

impl Dial {
    /// A poller reached without TLS.
    pub fn plain(addr: SocketAddr) -> Self {
        Self { addr, tls_name: None }
    }
}

/// How this edge reaches pollers: the TLS trust for `https://` ones (built
/// on first use, so an all-`http://` edge never loads a trust store) and
/// the bearer token. Clones share both.
#[derive(Clone)]
pub struct Link {
    ca: Option<PollerCa>,
    tls: Arc<OnceLock<Arc<rustls::ClientConfig>>>,
    token: PollerToken,
}

impl Link {
    /// Trusting the system's roots plus `ca` for `https://` pollers, and
    /// sending `token` on every call.
    pub fn new(ca: Option<PollerCa>, token: PollerToken) -> Self {
        Self { ca, tls: Arc::default(), token }
    }

    /// No extra CA, no token.
    pub fn plain() -> Self {
        Self::new(None, PollerToken::new(None))
    }

    /// The token source (its reload task belongs to whoever runs the edge's
    /// background tasks).
    pub fn token(&self) -> &PollerToken {
        &self.token
    }

    /// A lazily connecting channel to `dial`.
    pub fn connect(&self, dial: &Dial) -> PollerChannel {
        let channel = match &dial.tls_name {
            None => endpoint(format!("http://{}", dial.addr)).connect_lazy(),
            // tonic's own TLS features are off (see livepush::tls), so an
            // https:// endpoint goes straight to this connector; the connect
            // timeout covers the handshake too.
            Some(name) => {
                let tls = self.tls.get_or_init(|| poller_tls::client_config(self.ca.as_ref())).clone();
                let connector = TlsConnector::new(dial.addr, name.clone(), tls);
                endpoint(format!("https://{}", dial.addr)).connect_with_connector_lazy(connector)
            }
        };
        InterceptedService::new(channel, self.token.clone())
    }
}

/// The settings of every channel to a poller.
fn endpoint(uri: String) -> Endpoint {
    Endpoint::from_shared(uri)
        .expect("a socket address is a valid URI")
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        // After a failover every moved event's first value arrives at
        // once as small DATA frames; h2 closes a connection holding more
        // of them than half its window allows, so offer a large one
        // (credit, not memory allocated up front).
        .initial_connection_window_size(16 << 20)
}

/// The subscription channels to one poller.
pub struct ChannelPool {
    dial: Dial,
    link: Link,
    state: Mutex<State>,
    gauge: Gauge,
}

struct State {
    slots: Vec<Slot>,
    per_channel: usize,
    next_id: u64,
}

struct Slot {
    id: u64,
    client: LiveFeedClient<PollerChannel>,
    streams: usize,
}

impl ChannelPool {
    pub fn new(dial: Dial, link: Link) -> Arc<Self> {
        let state = State { slots: Vec::new(), per_channel: MAX_PER_CHANNEL, next_id: 0 };
        let gauge = livepush::metrics::edge_upstream_channels(&dial.addr.to_string());
        Arc::new(Self { dial, link, state: Mutex::new(state), gauge })
    }

    /// A place for one stream: on the fullest channel that still has room
    /// (packing keeps the channel count low), or on a new channel.
    pub fn lease(self: &Arc<Self>) -> Lease {
        let mut state = self.lock();
        let per_channel = state.per_channel;
        let room = state.slots.iter().enumerate().filter(|(_, s)| s.streams < per_channel);
        let i = match room.max_by_key(|(_, s)| s.streams).map(|(i, _)| i) {
            Some(i) => i,
            None => {
                let id = state.next_id;
                state.next_id += 1;
                let client = LiveFeedClient::new(self.link.connect(&self.dial));
                state.slots.push(Slot { id, client, streams: 0 });
                self.gauge.set(state.slots.len() as f64);
                state.slots.len() - 1
            }
        };
        let slot = &mut state.slots[i];
        slot.streams += 1;
        Lease { pool: self.clone(), id: slot.id, client: slot.client.clone() }
    }

    /// The poller's per-connection limit, as its answers state it.
    pub fn learn_limit(&self, limit: usize) {
        let budget = limit.clamp(1, MAX_PER_CHANNEL);
        self.lock().per_channel = budget;
    }

    /// Channels open now.
    pub fn channels(&self) -> usize {
        self.lock().slots.len()
    }

    fn release(&self, id: u64) {
        let mut state = self.lock();
        let Some(i) = state.slots.iter().position(|s| s.id == id) else { return };
        state.slots[i].streams -= 1;
        // Close an idle channel (dropping its last client handle closes the
        // connection), keeping one warm for the next subscription.
        if state.slots[i].streams == 0 && state.slots.len() > 1 {
            state.slots.swap_remove(i);
            self.gauge.set(state.slots.len() as f64);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update keeps the state consistent before it can panic, so
        // a poisoned lock still holds a usable table (said once in the log
        // and the metrics).
        livepush::sync::lock(&self.state, "upstream channels")
    }
}

impl Drop for ChannelPool {
    fn drop(&mut self) {
        self.gauge.set(0.0);
    }
}

/// One stream's place on a channel, given back on drop.
pub struct Lease {
    pool: Arc<ChannelPool>,
    id: u64,
    pub client: LiveFeedClient<PollerChannel>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_channels_at_the_budget_and_closes_idle_ones() {
        let pool = ChannelPool::new(Dial::plain("127.0.0.1:1".parse().unwrap()), Link::plain());
        pool.learn_limit(2);
        let leases: Vec<Lease> = (0..5).map(|_| pool.lease()).collect();
        assert_eq!(pool.channels(), 3, "5 streams at 2 per channel");
        let ids: Vec<u64> = leases.iter().map(|l| l.id).collect();
        assert_eq!(ids, [0, 0, 1, 1, 2]);
        drop(leases);
        assert_eq!(pool.channels(), 1, "idle channels close, one stays warm");
        pool.learn_limit(1_000_000);
        let many: Vec<Lease> = (0..MAX_PER_CHANNEL + 1).map(|_| pool.lease()).collect();
        assert_eq!(pool.channels(), 2, "capped at MAX_PER_CHANNEL per channel");
        drop(many);
    }
}
