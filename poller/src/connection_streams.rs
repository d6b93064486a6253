//! `--max-streams`: subscriptions per client connection, enforced by the
//! service so that a call beyond the limit gets an answer.
//!
//! HTTP/2's own `max_concurrent_streams` cannot do this: a client holds
//! calls beyond the peer's SETTINGS in its own queue, silently, with no
//! error and no timeout (an edge with 12,000 events on one connection left
//! 2,000 browsers waiting forever). So the HTTP/2 limit is set
//! [`HEADROOM`] above `--max-streams`, and a `Subscribe` that would exceed
//! `--max-streams` on its connection is refused at once with
//! RESOURCE_EXHAUSTED and `livepush-refusal: connection-streams`. Every
//! `Subscribe` answer carries `livepush-max-streams`, so clients learn the
//! limit and open more connections before they reach it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tonic::{Status, metadata::MetadataValue};

/// HTTP/2 streams allowed per connection beyond `--max-streams`: room for
/// health watches, presence calls, and `Subscribe` calls that are refused
/// with a status rather than queued by the client.
pub const HEADROOM: u32 = 1_024;

/// Metadata key naming the poller's `--max-streams` on every `Subscribe`
/// answer.
pub const MAX_STREAMS_KEY: &str = "livepush-max-streams";
/// Metadata key on a refusal saying which limit refused it.
pub const REFUSAL_KEY: &str = "livepush-refusal";
/// [`REFUSAL_KEY`] value: this connection holds `--max-streams` streams;
/// another connection will be served.
pub const CONNECTION_FULL: &str = "connection-streams";

/// Open subscriptions per client connection (keyed by the peer's address,
/// which names one TCP connection); entries go when their count reaches 0.
#[derive(Clone)]
pub struct ConnectionStreams {
    limit: u32,
    open: Arc<Mutex<HashMap<SocketAddr, u32>>>,
}

impl ConnectionStreams {
    pub fn new(limit: u32) -> Self {
        Self { limit, open: Arc::default() }
    }

    /// The limit, as metadata for an answer.
    pub fn limit_metadata(&self) -> MetadataValue<tonic::metadata::Ascii> {
        MetadataValue::from(self.limit)
    }

    /// Takes a slot on `peer`'s connection (no peer address: a transport
    /// without one, e.g. in-memory tests; not limited), or the refusal.
    pub fn open(&self, peer: Option<SocketAddr>) -> Result<StreamSlot, Box<Status>> {
        let Some(peer) = peer else { return Ok(StreamSlot { owner: None }) };
        let mut open = livepush::sync::lock(&self.open, "streams per connection");
        let n = open.entry(peer).or_default();
        if *n >= self.limit {
            let mut status = Status::resource_exhausted(format!(
                "this connection holds --max-streams ({}) subscriptions; open another connection",
                self.limit
            ));
            status.metadata_mut().insert(REFUSAL_KEY, MetadataValue::from_static(CONNECTION_FULL));
            status.metadata_mut().insert(MAX_STREAMS_KEY, self.limit_metadata());
            return Err(Box::new(status));
        }
        *n += 1;
        Ok(StreamSlot { owner: Some((self.clone(), peer)) })
    }

    /// Connections holding at least one subscription.
    pub fn connections(&self) -> usize {
        livepush::sync::lock(&self.open, "streams per connection").len()
    }

    fn close(&self, peer: SocketAddr) {
        let mut open = livepush::sync::lock(&self.open, "streams per connection");
        if let Some(n) = open.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&peer);
            }
        }
    }
}

/// One subscription's place on its connection, given back on drop.
pub struct StreamSlot {
    owner: Option<(ConnectionStreams, SocketAddr)>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some((streams, peer)) = self.owner.take() {
            streams.close(peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_beyond_the_limit_per_connection_and_forgets_empty_ones() {
        let streams = ConnectionStreams::new(2);
        let (a, b): (SocketAddr, SocketAddr) =
            ("10.0.0.1:1000".parse().unwrap(), "10.0.0.1:1001".parse().unwrap());
        let s1 = streams.open(Some(a)).unwrap();
        let _s2 = streams.open(Some(a)).unwrap();
        let refused = streams.open(Some(a)).err().expect("a third stream on one connection");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(refused.metadata().get(REFUSAL_KEY).unwrap(), CONNECTION_FULL);
        assert_eq!(refused.metadata().get(MAX_STREAMS_KEY).unwrap(), "2");
        let _other = streams.open(Some(b)).expect("another connection has room");
        drop(s1);
        let _again = streams.open(Some(a)).expect("a slot was given back");
        assert_eq!(streams.connections(), 2);
        drop(_again);
        drop(_s2);
        assert_eq!(streams.connections(), 1, "a connection without streams is forgotten");
        assert!(streams.open(None).is_ok());
    }
}
