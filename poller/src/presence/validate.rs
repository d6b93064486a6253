//! Every check a heartbeat batch passes, before the store's lock is taken:
//! an invalid batch changes nothing.

use super::*;

/// Why a batch was refused as malformed (INVALID_ARGUMENT). One line; it names
/// the offending position, never echoes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBatch {
    #[error("edge_id must be 1 to 64 characters from A-Z a-z 0-9 . _ ~ -")]
    EdgeId,
    #[error("interval_ms must be between {MIN_INTERVAL_MS} and {MAX_INTERVAL_MS}")]
    Interval,
    #[error("a batch may list at most {MAX_EVENTS_PER_BATCH} events")]
    TooManyEvents,
    #[error("a batch may list at most {MAX_VIDS_PER_BATCH} vids in total")]
    TooManyVidsInBatch,
    #[error("events[{index}]: {source}")]
    EventId { index: usize, source: InvalidEventId },
    #[error("events[{index}]: event id already listed earlier in the batch")]
    DuplicateEvent { index: usize },
    #[error("events[{index}]: at most {MAX_VIDS_PER_EVENT} vids per event")]
    TooManyVids { index: usize },
    #[error("events[{index}].vids[{vid}]: {source}")]
    ViewerId { index: usize, vid: usize, source: InvalidViewerId },
    #[error("events[{index}]: anonymous must be at most {MAX_ANONYMOUS}")]
    TooManyAnonymous { index: usize },
}

/// A batch that passed every check, ready to be stored.
pub(super) struct ValidBatch {
    pub(super) edge: ViewerId,
    pub(super) interval: Duration,
    /// Every event listed, in batch order (the ack answers for each).
    pub(super) listed: Vec<EventId>,
    /// The listed events that have viewers.
    pub(super) events: Vec<EdgeEvent>,
}

/// Checks everything about a batch before anything is stored. Counts are
/// checked before any id is parsed, so an oversized batch costs no parsing.
pub(super) fn validate(batch: HeartbeatBatch) -> Result<ValidBatch, InvalidBatch> {
    let edge = ViewerId::parse(&batch.edge_id).map_err(|_| InvalidBatch::EdgeId)?;
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&batch.interval_ms) {
        return Err(InvalidBatch::Interval);
    }
    if batch.events.len() > MAX_EVENTS_PER_BATCH {
        return Err(InvalidBatch::TooManyEvents);
    }
    let mut total_vids = 0usize;
    for (index, event) in batch.events.iter().enumerate() {
        if event.vids.len() > MAX_VIDS_PER_EVENT {
            return Err(InvalidBatch::TooManyVids { index });
        }
        if event.anonymous > MAX_ANONYMOUS {
            return Err(InvalidBatch::TooManyAnonymous { index });
        }
        total_vids += event.vids.len();
    }
    if total_vids > MAX_VIDS_PER_BATCH {
        return Err(InvalidBatch::TooManyVidsInBatch);
    }
    let mut seen = HashSet::with_capacity(batch.events.len());
    let mut listed = Vec::with_capacity(batch.events.len());
    let mut events = Vec::with_capacity(batch.events.len());
    for (index, event) in batch.events.into_iter().enumerate() {
        let id = EventId::parse(&event.event_id).map_err(|source| InvalidBatch::EventId { index, source })?;
        if !seen.insert(id.clone()) {
            return Err(InvalidBatch::DuplicateEvent { index });
        }
        // A vid listed twice is tolerated: it is counted once like any vid
        // on two edges, and refusing the whole batch for it would lose the
        // edge's presence over a harmless redundancy.
        let vids = event
            .vids
            .iter()
            .enumerate()
            .map(|(vid, s)| {
                ViewerId::parse(s).map_err(|source| InvalidBatch::ViewerId { index, vid, source })
            })
            .collect::<Result<Box<[_]>, _>>()?;
        listed.push(id.clone());
        let event = EdgeEvent { id, vids, anonymous: event.anonymous };
        if event.has_viewers() {
            events.push(event);
        }
    }
    let interval = Duration::from_millis(batch.interval_ms.into());
    Ok(ValidBatch { edge, interval, listed, events })
}

/// One event as one edge listed it.
pub(super) struct EdgeEvent {
    pub(super) id: EventId,
    pub(super) vids: Box<[ViewerId]>,
    pub(super) anonymous: u32,
}

impl EdgeEvent {
    pub(super) fn has_viewers(&self) -> bool {
        !self.vids.is_empty() || self.anonymous > 0
    }
}
