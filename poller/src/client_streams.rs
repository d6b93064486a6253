//! Per-client caps on open streams: `--max-streams-per-client` for
//! `LiveFeed/Subscribe` and `--max-watches-per-client` for
//! `Presence/WatchPresence`.
//!
//! `--max-streams` bounds one connection; a client can open many, so this
//! bounds the client. A client is its token's name with `--clients-file`
//! (edges sharing one token share its cap) and its IP address without one
//! (edges behind one address share it). A stream beyond the cap is refused
//! at once with RESOURCE_EXHAUSTED and `livepush-refusal: client-streams`,
//! and counted in `livepush_poller_client_limit_refusals_total{rpc}`.

use crate::{clients::Caller, connection_streams::REFUSAL_KEY};
use livepush::metrics::Counter;
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};
use tonic::{Request, Status, metadata::MetadataValue};

/// [`REFUSAL_KEY`] value: this client holds its cap of streams of this kind.
pub const CLIENT_FULL: &str = "client-streams";

/// Who a cap counts against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An authenticated client's name.
    Name(Arc<str>),
    /// The peer's address, without a clients file.
    Ip(IpAddr),
}

impl ClientKey {
    /// The caller of `request`: its client's name when [`crate::access`]
    /// authenticated it, its IP address otherwise; `None` for a transport
    /// without addresses (in-memory tests), which is not limited.
    pub fn of<T>(request: &Request<T>) -> Option<Self> {
        match request.extensions().get::<Caller>() {
            Some(caller) => Some(Self::Name(caller.name.clone())),
            None => request.remote_addr().map(|a| Self::Ip(a.ip())),
        }
    }
}

/// Open streams of one kind per client; entries go when their count reaches
/// zero, so the table holds only clients with streams open.
#[derive(Clone)]
pub struct ClientStreams {
    flag: &'static str,
    limit: u32,
    refused: Counter,
    open: Arc<Mutex<HashMap<ClientKey, u32>>>,
}

impl ClientStreams {
    /// At most `limit` streams per client; `flag` names the limit in
    /// refusals, `refused` counts them.
    pub fn new(flag: &'static str, limit: u32, refused: Counter) -> Self {
        Self { flag, limit, refused, open: Arc::default() }
    }

    /// Takes a place for one stream of `client`, or the refusal.
    pub fn open(&self, client: Option<ClientKey>) -> Result<ClientSlot, Box<Status>> {
        let Some(client) = client else { return Ok(ClientSlot { owner: None }) };
        let mut open = livepush::sync::lock(&self.open, "streams per client");
        if open.get(&client).copied().unwrap_or(0) >= self.limit {
            drop(open);
            self.refused.increment(1);
            let mut status = Status::resource_exhausted(format!(
                "this client holds {} ({}) streams; close some first",
                self.flag, self.limit
            ));
            status.metadata_mut().insert(REFUSAL_KEY, MetadataValue::from_static(CLIENT_FULL));
            return Err(Box::new(status));
        }
        *open.entry(client.clone()).or_default() += 1;
        drop(open);
        Ok(ClientSlot { owner: Some((self.clone(), client)) })
    }

    /// Clients holding at least one stream.
    pub fn clients(&self) -> usize {
        livepush::sync::lock(&self.open, "streams per client").len()
    }

    fn close(&self, client: &ClientKey) {
        let mut open = livepush::sync::lock(&self.open, "streams per client");
        if let Some(n) = open.get_mut(client) {
            *n -= 1;
            if *n == 0 {
                open.remove(client);
            }
        }
    }
}

/// One stream's place in its client's cap, given back on drop.
pub struct ClientSlot {
    owner: Option<(ClientStreams, ClientKey)>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some((streams, client)) = self.owner.take() {
            streams.close(&client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_client_and_forgets_idle_ones() {
        let streams = ClientStreams::new("--max-streams-per-client", 2, Counter::noop());
        let edge = || Some(ClientKey::Name("edge-pool".into()));
        let other = Some(ClientKey::Ip("10.0.0.7".parse().unwrap()));
        let a = streams.open(edge()).unwrap();
        let _b = streams.open(edge()).unwrap();
        let refused = streams.open(edge()).err().expect("a third stream");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(refused.metadata().get(REFUSAL_KEY).unwrap(), CLIENT_FULL);
        assert!(refused.message().contains("--max-streams-per-client (2)"), "{}", refused.message());
        let _c = streams.open(other.clone()).expect("another client has room");
        drop(a);
        let _d = streams.open(edge()).expect("a place was given back");
        assert_eq!(streams.clients(), 2);
        drop(_c);
        assert_eq!(streams.clients(), 1);
        assert!(streams.open(None).is_ok(), "no address, no cap");
    }
}
