//! What every browser of an event reads: the latest [`Snapshot`], its
//! frames encoded once for all of them. The upstream task writes it
//! ([`crate::upstream::failover`]), the event table holds it
//! ([`crate::feeds`]) and the streams read it ([`crate::stream`],
//! [`crate::multi`]).

use crate::sse;
use bytes::Bytes;
use livepush::EventId;
use std::sync::Arc;

/// What browsers of an event should have, encoded once for all of them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `seq` of the update that last changed the data (0: no data yet). It is
    /// the SSE `id` of `data_frame`.
    pub data_seq: u64,
    /// `id: <data_seq>` + `data: <json>`: an unnamed event, so
    /// `EventSource.onmessage` gets the JSON exactly as polling fetched it.
    pub data_frame: Option<Bytes>,
    /// The data may be outdated: the poller says the media service fails, or
    /// this edge lost its upstream stream.
    pub stale: bool,
    /// The poller said the event is over.
    pub ended: bool,
    /// Cluster-wide viewer count, once known, and its `presence` event.
    pub viewers: Option<u32>,
    pub presence_frame: Option<Bytes>,
    /// The same, tagged with the event id, for multi-event streams.
    pub tagged: Tagged,
}

/// Frames of multi-event streams ([`crate::multi`]), encoded once per change
/// like the untagged ones: each carries `{"event_id": …}` so one `onmessage`
/// handler can route it.
#[derive(Debug, Clone, Default)]
pub struct Tagged {
    /// `data: {"event_id":…,"data":<json>}` and the blank line, without an
    /// `id:` line: each connection writes its own resume id before it.
    pub data: Option<Bytes>,
    /// `event: presence` with `{"event_id":…,"viewers":N}`.
    pub presence: Option<Bytes>,
    /// `stale`, `live` and `end` of this event: fixed, encoded when its feed
    /// is created and shared by every snapshot.
    pub markers: Option<Arc<Markers>>,
}

#[derive(Debug)]
pub struct Markers {
    pub stale: Bytes,
    pub live: Bytes,
    pub end: Bytes,
}

impl Snapshot {
    /// The empty snapshot a new feed of `id` starts with.
    pub fn new(id: &EventId) -> Self {
        let marker = |event, state| {
            let data = format!(r#"{{"event_id":"{}","state":"{state}"}}"#, id.as_str());
            sse::Event { id: None, event: Some(event), data: &data }.encode()
        };
        let markers = Markers {
            stale: marker("stale", "stale"),
            live: marker("live", "live"),
            end: marker("end", "ended"),
        };
        Self { tagged: Tagged { markers: Some(Arc::new(markers)), ..Tagged::default() }, ..Self::default() }
    }
}
