//! Many events on one connection: the body of `GET /live/stream?event=a&…`.
//!
//! A page showing a grid of live events opens one `EventSource` instead of
//! one per event (browsers allow six HTTP/1.1 connections per host). Each
//! event of the stream is an ordinary [`Watch`] on the edge's shared feed of
//! that event, so a 64-event stream costs 64 `watch::Receiver`s and one
//! connection, never another upstream stream. The receivers are polled
//! fairly through one `SelectAll`; whatever is ready when the stream is
//! polled goes out as one chunk.
//!
//! Every frame names its event, so one `onmessage` handler can route it:
//! data frames are unnamed events whose data is the envelope
//! `{"event_id":…,"data":<the media JSON>}`, encoded once per change in the
//! event's [`Snapshot`] (see [`crate::feeds::Tagged`]); `stale`, `live`,
//! `end` and `presence` carry `{"event_id":…,…}` and are shared as well.
//! The only per-connection bytes are each data frame's `id:` line: the
//! [resume id](ResumeId), which says what the browser has of every event,
//! so the last one it received is enough to resume without resending
//! anything it has or missing anything that changed.
//!
//! An event that ends sends its `end` and leaves the stream (its `Watch` is
//! dropped at once); the stream ends when every event has.

use crate::{
    feeds::{Snapshot, Watch},
    pulse::Follower,
    sse,
    stream::pulse_frame,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt, stream, stream::SelectAll};
use livepush::{EventId, metrics::GaugeGuard};
use std::{convert::Infallible, pin::Pin};

/// The default and the most of `--max-events-per-stream`. The most keeps a
/// resume id within 2.7 KiB (see [`ResumeId`]) and a request's query within
/// the 16 KiB head limit.
pub const DEFAULT_MAX_EVENTS: usize = 64;
pub const MAX_EVENTS: usize = 256;

/// A resume id (the SSE `id:` of data frames): what the browser has of each
/// event of its stream, opaque to the page.
///
/// Base64url (no padding) of: a version byte (`1`); a 4-byte check, the
/// XXH3-64 of the rest seeded with the hash of the stream's event ids in
/// order (duplicates removed), so an id from another stream, or altered or
/// cut, is ignored; then per event, in that order, the `seq` of the data the
/// browser has (0: none) as the LEB128 varint of the zigzag difference to
/// the previous event's. The check is no signature: whoever forges a valid
/// id only tells the edge it has values it lacks, and so misses them.
///
/// Seqs are below 2^53 (see `feeds.rs`), so a difference takes at most 8
/// varint bytes: the worst case at `n` events is `5 + 8n` bytes, i.e. 690
/// characters at 64 events (2,742 at 256). Seqs of one edge's feeds are
/// microseconds since 1970 and close together, so a typical id at 64 events
/// is 8 bytes for the first and 3 to 5 for the others, about 400 characters.
pub struct ResumeId;

const RESUME_VERSION: u8 = 1;
/// Seqs at or beyond this are not ours (`feeds::MAX_SEQ`).
const MAX_SEQ: u64 = 1 << 53;

impl ResumeId {
    /// The hash of an event list, which seeds the check of its ids.
    pub fn list(events: &[EventId]) -> u64 {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for (i, id) in events.iter().enumerate() {
            if i > 0 {
                hasher.update(b"\n");
            }
            hasher.update(id.as_str().as_bytes());
        }
        hasher.digest()
    }

    fn check(list: u64, seqs: &[u8]) -> [u8; 4] {
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(seqs, list).to_le_bytes();
        [hash[0], hash[1], hash[2], hash[3]]
    }

    /// The id for `seqs` (one per event, in order) of the list `list`.
    pub fn encode(list: u64, seqs: impl IntoIterator<Item = u64>) -> String {
        let mut raw = vec![RESUME_VERSION, 0, 0, 0, 0];
        let mut previous = 0i64;
        for seq in seqs {
            let seq = seq.min(MAX_SEQ - 1) as i64;
            let delta = seq - previous;
            previous = seq;
            let mut zigzag = ((delta << 1) ^ (delta >> 63)) as u64;
            loop {
                let byte = (zigzag & 0x7f) as u8;
                zigzag >>= 7;
                if zigzag == 0 {
                    raw.push(byte);
                    break;
                }
                raw.push(byte | 0x80);
            }
        }
        let check = Self::check(list, &raw[5..]);
        raw[1..5].copy_from_slice(&check);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The seqs of an id for the `n` events of `list`; `None` for anything
    /// malformed, foreign or out of range (the browser then gets everything).
    pub fn decode(id: &str, list: u64, n: usize) -> Option<Vec<u64>> {
        if id.len() > (5 + 8 * n).div_ceil(3) * 4 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(id.trim()).ok()?;
        let (head, mut rest) = raw.split_at_checked(5)?;
        if head[0] != RESUME_VERSION || head[1..] != Self::check(list, rest) {
            return None;
        }
        let mut seqs = Vec::with_capacity(n);
        let mut previous = 0i64;
        for _ in 0..n {
            let mut zigzag = 0u64;
            let mut shift = 0;
            loop {
                let (&byte, tail) = rest.split_first()?;
                rest = tail;
                if shift > 56 {
                    return None;
                }
                zigzag |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            let delta = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
            let seq = previous.checked_add(delta)?;
            if !(0..MAX_SEQ as i64).contains(&seq) {
                return None;
            }
            previous = seq;
            seqs.push(seq as u64);
        }
        rest.is_empty().then_some(seqs)
    }
}

/// What one event's browser has been sent on this connection.
#[derive(Debug, Clone, Default)]
#[doc(hidden)] // Public for the micro-benchmarks (edge/benches) only.
pub struct Sent {
    /// `seq` of the last data written (0: none yet).
    data_seq: u64,
    /// From the resume id: the browser already has this `seq` (skipped when
    /// it is the first data this connection would send, as for single-event
    /// streams).
    resume: Option<u64>,
    stale: bool,
    viewers: Option<u32>,
    ended: bool,
}

impl Sent {
    /// The `seq` the browser has of this event.
    fn has(&self) -> u64 {
        if self.data_seq > 0 { self.data_seq } else { self.resume.unwrap_or(0) }
    }
}

/// What this connection sent of every event.
#[doc(hidden)] // Public for the micro-benchmarks (edge/benches) only.
pub struct Members {
    /// [`ResumeId::list`] of the stream's events.
    pub list: u64,
    pub sent: Vec<Sent>,
}

impl Members {
    /// Appends to `out` what brings the browser from what it has of event
    /// `i` to `snap`; returns the number of SSE events appended.
    pub fn catch_up(&mut self, i: usize, snap: &Snapshot, out: &mut BytesMut) -> u64 {
        let sent = &mut self.sent[i];
        if sent.ended {
            return 0;
        }
        let mut frames = 0;
        let new_data = snap.data_seq > sent.data_seq;
        let has_it = sent.data_seq == 0 && sent.resume == Some(snap.data_seq);
        let data = snap.tagged.data.as_ref().filter(|_| new_data && !has_it);
        sent.data_seq = sent.data_seq.max(snap.data_seq);
        if let Some(data) = data {
            // The id says what the browser has once this frame is in, of
            // every event: the last id it got is all it needs to resume.
            let id = ResumeId::encode(self.list, self.sent.iter().map(Sent::has));
            out.put_slice(b"id: ");
            out.put_slice(id.as_bytes());
            out.put_u8(b'\n');
            out.put_slice(data);
            frames += 1;
        }
        let sent = &mut self.sent[i];
        let markers = snap.tagged.markers.as_deref();
        if snap.stale != sent.stale && !snap.ended {
            if let Some(m) = markers {
                out.put_slice(if snap.stale { &m.stale } else { &m.live });
                frames += 1;
            }
        }
        sent.stale = snap.stale;
        if snap.viewers != sent.viewers && !snap.ended {
            if let Some(presence) = &snap.tagged.presence {
                out.put_slice(presence);
                frames += 1;
            }
        }
        sent.viewers = snap.viewers;
        if snap.ended {
            sent.ended = true;
            if let Some(m) = markers {
                out.put_slice(&m.end);
                frames += 1;
            }
        }
        frames
    }
}

/// `end` for an event this edge knows has ended before the stream opened
/// (its feed is gone, so there is no shared frame): rare, encoded here.
fn end_frame(id: &EventId) -> Bytes {
    let data = format!(r#"{{"event_id":"{}","state":"ended"}}"#, id.as_str());
    sse::Event { id: None, event: Some("end"), data: &data }.encode()
}

type Changes = Pin<Box<dyn Stream<Item = (usize, Snapshot)> + Send>>;

/// The changes of event `i`, until it ends (its `Watch` is then dropped, so
/// the feed may close) or its feed goes away.
fn follow(i: usize, watch: Watch) -> Changes {
    Box::pin(stream::unfold(Some(watch), move |watch| async move {
        let mut watch = watch?;
        watch.rx.changed().await.ok()?;
        let snap = watch.rx.borrow_and_update().clone();
        let watch = (!snap.ended).then_some(watch);
        Some(((i, snap), watch))
    }))
}

/// Hands `first` and whatever other change is ready now to `each`, at most
/// `round` in all (one round over the events, so no event waits long
/// behind a busy one); whether every event's changes are over. A change is
/// taken from `changes` only when it is handed on: one taken past the
/// round and dropped would be lost to its browser for good if its event
/// then stayed quiet (a 24-event page once kept one card at "waiting…").
fn ready_round(
    first: Option<(usize, Snapshot)>,
    changes: &mut SelectAll<Changes>,
    round: usize,
    mut each: impl FnMut(usize, &Snapshot),
) -> bool {
    let round = round.max(1);
    let mut next = first;
    for taken in 1..=round {
        let Some((i, snap)) = next else { return true };
        each(i, &snap);
        if taken == round {
            break;
        }
        match changes.next().now_or_never() {
            Some(more) => next = more,
            None => break,
        }
    }
    false
}

struct Conn {
    members: Members,
    changes: SelectAll<Changes>,
    pulse: Follower,
    opening: Option<(Bytes, u64)>,
    done: bool,
    _open: GaugeGuard,
}

/// The SSE body of a multi-event stream: `retry:` and every event's latest
/// value at once, then whatever changes, tagged with its event.
///
/// `events` are the stream's events in order (duplicates removed), each with
/// its `Watch`, or `None` for an event known to have ended; `last_event_id`
/// is the browser's `Last-Event-ID`.
pub fn body(
    events: Vec<(EventId, Option<Watch>)>,
    last_event_id: Option<&str>,
    pulse: Follower,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + use<> {
    let ids: Vec<EventId> = events.iter().map(|(id, _)| id.clone()).collect();
    let list = ResumeId::list(&ids);
    let resume = last_event_id.and_then(|id| ResumeId::decode(id, list, ids.len()));
    let sent = (0..ids.len())
        .map(|i| Sent { resume: resume.as_ref().map(|r| r[i]).filter(|&s| s > 0), ..Sent::default() })
        .collect();
    let mut members = Members { list, sent };
    let mut opening = BytesMut::from(&sse::retry(pulse.retry_ms())[..]);
    let mut frames = 0;
    let mut changes = SelectAll::new();
    for (i, (id, watch)) in events.into_iter().enumerate() {
        let Some(mut watch) = watch else {
            members.sent[i].ended = true;
            opening.extend_from_slice(&end_frame(&id));
            frames += 1;
            continue;
        };
        let snap = watch.rx.borrow_and_update().clone();
        frames += members.catch_up(i, &snap, &mut opening);
        if !snap.ended {
            changes.push(follow(i, watch));
        }
    }
    let metrics = livepush::metrics::edge();
    let done = changes.is_empty();
    let conn = Conn {
        members,
        changes,
        pulse,
        opening: Some((opening.freeze(), frames)),
        done,
        _open: GaugeGuard::new(&metrics.streams_open),
    };

    stream::unfold(conn, move |mut c| async move {
        if let Some((opening, frames)) = c.opening.take() {
            metrics.updates_delivered.increment(frames);
            return Some((Ok(opening), c));
        }
        if c.done {
            return None;
        }
        loop {
            tokio::select! {
                due = c.pulse.due() => return Some((Ok(pulse_frame(due, &mut c.done)), c)),
                change = c.changes.next() => {
                    let mut out = BytesMut::new();
                    let mut frames = 0;
                    let round = c.members.sent.len();
                    let members = &mut c.members;
                    c.done = ready_round(change, &mut c.changes, round, |i, snap| {
                        frames += members.catch_up(i, snap, &mut out);
                    });
                    if !out.is_empty() {
                        c.pulse.wrote();
                        metrics.updates_delivered.increment(frames);
                        return Some((Ok(out.freeze()), c));
                    }
                    if c.done {
                        return None;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<EventId> {
        names.iter().map(|n| EventId::parse(n).unwrap()).collect()
    }

    #[test]
    fn resume_ids_round_trip_and_foreign_or_malformed_ones_are_ignored() {
        let list = ids(&["a", "b", "c"]);
        let tag = ResumeId::list(&list);
        let seqs = [1_764_064_800_000_001, 0, 1_764_064_799_000_000];
        let id = ResumeId::encode(tag, seqs);
        assert_eq!(ResumeId::decode(&id, tag, 3).unwrap(), seqs);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{id}");
        // Another list (other ids, other order, one more): foreign.
        for other in [ids(&["a", "b", "d"]), ids(&["b", "a", "c"])] {
            assert_eq!(ResumeId::decode(&id, ResumeId::list(&other), 3), None);
        }
        assert_eq!(ResumeId::decode(&id, tag, 4), None, "too few seqs");
        assert_eq!(ResumeId::decode(&id, tag, 2), None, "trailing bytes");
        for junk in ["", "5", "abc", "!!!!", &"A".repeat(10_000), &id[..id.len() - 2]] {
            assert_eq!(ResumeId::decode(junk, tag, 3), None, "{junk:?}");
        }
        // Out of range: a seq at 2^53 (or a varint that overflows).
        let mut raw = vec![RESUME_VERSION, 0, 0, 0, 0];
        raw.extend_from_slice(&[0xff; 10]);
        let check = ResumeId::check(tag, &raw[5..]);
        raw[1..5].copy_from_slice(&check);
        assert_eq!(ResumeId::decode(&URL_SAFE_NO_PAD.encode(&raw), tag, 1), None);
        // Any one character changed: the check fails.
        for i in 0..id.len() {
            let mut forged = id.clone().into_bytes();
            forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(forged).unwrap();
            assert_eq!(ResumeId::decode(&forged, tag, 3), None, "{forged}");
        }
    }

    #[tokio::test]
    async fn a_burst_of_changes_beyond_one_round_loses_none() {
        let id = EventId::parse("e").unwrap();
        // 30 events with a change ready each, rounds of 24: 24, then 6.
        let mut changes: SelectAll<Changes> =
            (0..30usize).map(|i| Box::pin(stream::iter([(i, Snapshot::new(&id))])) as Changes).collect();
        let mut seen = Vec::new();
        let first = changes.next().await;
        assert!(!ready_round(first, &mut changes, 24, |i, _| seen.push(i)));
        assert_eq!(seen.len(), 24, "one round");
        // These streams end after their one change: the round that takes
        // the last says every event is over.
        let first = changes.next().await;
        assert!(ready_round(first, &mut changes, 24, |i, _| seen.push(i)));
        seen.sort_unstable();
        assert_eq!(seen, (0..30).collect::<Vec<_>>(), "every change handed on once");
    }

    #[test]
    fn the_worst_case_resume_id_at_64_events_is_690_characters() {
        let list: Vec<EventId> = (0..64).map(|i| EventId::parse(&format!("e{i}")).unwrap()).collect();
        let tag = ResumeId::list(&list);
        // Alternating between the extremes: every difference is maximal.
        let seqs: Vec<u64> = (0..64).map(|i| if i % 2 == 0 { MAX_SEQ - 1 } else { 0 }).collect();
        let id = ResumeId::encode(tag, seqs.iter().copied());
        assert_eq!(id.len(), 690);
        assert_eq!(ResumeId::decode(&id, tag, 64).unwrap(), seqs);
        // Typical: seqs of one edge, microseconds apart by up to an hour.
        let now = 1_764_064_800_000_000u64;
        let seqs: Vec<u64> = (0..64).map(|i| now + i * 56_250_000).collect();
        assert!(ResumeId::encode(tag, seqs).len() < 420);
    }

    fn snap(id: &EventId, data_seq: u64, stale: bool, ended: bool) -> Snapshot {
        let mut s = Snapshot::new(id);
        s.data_seq = data_seq;
        s.stale = stale;
        s.ended = ended;
        if data_seq > 0 {
            s.tagged.data = Some(Bytes::from(format!(
                "data: {{\"event_id\":\"{}\",\"data\":{data_seq}}}\n\n",
                id.as_str()
            )));
        }
        s
    }

    #[test]
    fn catch_up_tags_frames_and_each_id_says_what_the_browser_has_of_every_event() {
        let list = ids(&["a", "b"]);
        let tag = ResumeId::list(&list);
        let mut m =
            Members { list: tag, sent: vec![Sent::default(), Sent { resume: Some(7), ..Sent::default() }] };
        let mut out = BytesMut::new();
        assert_eq!(m.catch_up(0, &snap(&list[0], 5, false, false), &mut out), 1);
        let text = String::from_utf8(out.to_vec()).unwrap();
        let id = text.strip_prefix("id: ").unwrap().split('\n').next().unwrap();
        assert_eq!(ResumeId::decode(id, tag, 2).unwrap(), [5, 7], "b's resumed seq is kept");
        assert!(text.ends_with("data: {\"event_id\":\"a\",\"data\":5}\n\n"), "{text}");
        // b's current value is the one the browser has: nothing.
        let mut out = BytesMut::new();
        assert_eq!(m.catch_up(1, &snap(&list[1], 7, false, false), &mut out), 0);
        // stale, live, end: tagged, once each.
        let mut out = BytesMut::new();
        assert_eq!(m.catch_up(1, &snap(&list[1], 7, true, false), &mut out), 1);
        assert_eq!(m.catch_up(1, &snap(&list[1], 7, true, false), &mut out), 0);
        assert_eq!(m.catch_up(1, &snap(&list[1], 7, false, true), &mut out), 1);
        assert_eq!(m.catch_up(1, &snap(&list[1], 9, false, true), &mut out), 0, "nothing after end");
        assert_eq!(
            String::from_utf8(out.to_vec()).unwrap(),
            "event: stale\ndata: {\"event_id\":\"b\",\"state\":\"stale\"}\n\n\
             event: end\ndata: {\"event_id\":\"b\",\"state\":\"ended\"}\n\n"
        );
    }
}
