//! The body of one browser's SSE response.
//!
//! It holds no queue: each time the stream is polled it writes what the
//! browser lacks compared with the event's latest [`Snapshot`] (new data, a
//! change of staleness, the end), a keep-alive comment when idle, or ends.
//! Data frames are shared `Bytes` encoded once per update, so fan-out costs a
//! reference count per browser, not a copy; a browser that reads slowly
//! simply skips to the latest value.

use crate::{
    feeds::{Snapshot, Watch},
    pulse::{Due, Follower},
    sse,
};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, stream};
use livepush::metrics::GaugeGuard;
use std::convert::Infallible;

/// Named events that `onmessage` ignores: the data may be outdated, it is
/// fresh again, the event is over. (`presence` frames, `{"viewers":N}`, are
/// encoded per change in the snapshot.) They carry no `id`, so they never move a
/// browser's `Last-Event-ID`.
pub const STALE: Bytes = Bytes::from_static(b"event: stale\ndata: {\"state\":\"stale\"}\n\n");
pub const LIVE: Bytes = Bytes::from_static(b"event: live\ndata: {\"state\":\"live\"}\n\n");
pub const END: Bytes = Bytes::from_static(b"event: end\ndata: {\"state\":\"ended\"}\n\n");

/// What [`Sent::catch_up`] has for the browser.
#[derive(Debug)]
#[doc(hidden)] // Public for the micro-benchmarks (edge/benches) only.
pub struct CatchUp {
    /// The frames to write, as one chunk.
    pub bytes: Option<Bytes>,
    /// How many SSE events `bytes` holds.
    pub frames: u64,
    /// The stream is over after them.
    pub done: bool,
}

/// What this browser has been sent so far.
#[doc(hidden)] // Public for the micro-benchmarks (edge/benches) only.
pub struct Sent {
    /// `seq` of the last data written; only newer data is written, so no
    /// `seq` reaches a browser twice, even across upstream resubscriptions.
    pub data_seq: u64,
    pub stale: bool,
    pub viewers: Option<u32>,
    /// The browser's `Last-Event-ID`: the first data this connection would
    /// send is skipped when it is exactly that `seq` (the browser has it).
    /// Checked against the first data whenever it comes, because after an
    /// edge restart the browser often reconnects before the feed has a value.
    pub resume: Option<u64>,
}

impl Sent {
    /// The frames that bring this browser from what it has to `snap`, and
    /// whether the stream is over after them.
    pub fn catch_up(&mut self, snap: &Snapshot) -> CatchUp {
        let new_data = snap.data_seq > self.data_seq;
        let has_it = self.data_seq == 0 && self.resume == Some(snap.data_seq);
        let data = snap.data_frame.clone().filter(|_| new_data && !has_it);
        self.data_seq = self.data_seq.max(snap.data_seq);
        let marker =
            (snap.stale != self.stale && !snap.ended).then_some(if snap.stale { STALE } else { LIVE });
        self.stale = snap.stale;
        let presence = snap.presence_frame.clone().filter(|_| snap.viewers != self.viewers && !snap.ended);
        self.viewers = snap.viewers;
        let end = snap.ended.then_some(END);
        let parts = [data, marker, presence, end];
        let frames = parts.iter().flatten().count() as u64;
        let mut parts = parts.into_iter().flatten();
        let bytes = match (parts.next(), parts.next()) {
            (None, _) => None,
            // The common case: one shared frame, no copy.
            (Some(only), None) => Some(only),
            (Some(a), Some(b)) => {
                let mut buf = BytesMut::from(&a[..]);
                buf.extend_from_slice(&b);
                parts.for_each(|p| buf.extend_from_slice(&p));
                Some(buf.freeze())
            }
        };
        CatchUp { bytes, frames, done: snap.ended }
    }
}

struct Conn {
    watch: Watch,
    sent: Sent,
    pulse: Follower,
    /// Nothing written yet: the opening (`retry:` and the current value) is
    /// due. Built when first polled rather than kept from the start: every
    /// stream's state is held for its whole life.
    fresh: bool,
    done: bool,
    /// Counts the stream in `livepush_edge_streams_open` while it lives.
    _open: GaugeGuard,
}

/// The SSE body for one browser: `retry:` and the latest value at once (so
/// `onopen` fires without waiting for a change), then whatever changes.
/// `last_event_id` is the browser's `Last-Event-ID`: when it is the current
/// data's `seq`, the browser has that value and it is not sent again.
pub fn body(
    watch: Watch,
    last_event_id: Option<u64>,
    pulse: Follower,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let metrics = livepush::metrics::edge();
    let conn = Conn {
        watch,
        sent: Sent { data_seq: 0, stale: false, viewers: None, resume: last_event_id },
        pulse,
        fresh: true,
        done: false,
        _open: GaugeGuard::new(&metrics.streams_open),
    };

    stream::unfold(conn, move |mut c| async move {
        if std::mem::take(&mut c.fresh) {
            let snap = c.watch.rx.borrow_and_update().clone();
            let first = c.sent.catch_up(&snap);
            c.done = first.done;
            let mut opening = BytesMut::from(&sse::retry(c.pulse.retry_ms())[..]);
            if let Some(bytes) = &first.bytes {
                opening.extend_from_slice(bytes);
            }
            metrics.updates_delivered.increment(first.frames);
            return Some((Ok(opening.freeze()), c));
        }
        if c.done {
            return None;
        }
        loop {
            tokio::select! {
                due = c.pulse.due() => return Some((Ok(pulse_frame(due, &mut c.done)), c)),
                changed = c.watch.rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let snap = c.watch.rx.borrow_and_update().clone();
                    let CatchUp { bytes, frames, done } = c.sent.catch_up(&snap);
                    c.done = done;
                    if let Some(bytes) = bytes {
                        c.pulse.wrote();
                        metrics.updates_delivered.increment(frames);
                        return Some((Ok(bytes), c));
                    }
                    if done {
                        return None;
                    }
                }
            }
        }
    })
}

/// The frame a beat of the clock asks for; `done` when the stream ends
/// after it.
pub fn pulse_frame(due: Due, done: &mut bool) -> Bytes {
    match due {
        Due::KeepAlive => sse::KEEPALIVE,
        Due::Deadline(retry) => {
            *done = true;
            sse::retry(retry)
        }
        Due::Drain(retry) => {
            *done = true;
            livepush::metrics::edge().drain_closed.increment(1);
            sse::retry(retry)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(data_seq: u64, stale: bool, ended: bool) -> Snapshot {
        let data_frame = (data_seq > 0).then(|| Bytes::from(format!("id: {data_seq}\ndata: x\n\n")));
        Snapshot { data_seq, data_frame, stale, ended, ..Snapshot::default() }
    }

    #[test]
    fn catch_up_sends_each_seq_once_and_markers_on_change() {
        let mut sent = Sent { data_seq: 0, stale: false, viewers: None, resume: None };
        let out = sent.catch_up(&snap(5, false, false)).bytes;
        assert_eq!(out.unwrap(), "id: 5\ndata: x\n\n");
        assert_eq!(sent.catch_up(&snap(5, false, false)).bytes, None, "same seq is not resent");
        assert_eq!(sent.catch_up(&snap(5, true, false)).bytes.unwrap(), STALE);
        assert_eq!(sent.catch_up(&snap(5, true, false)).bytes, None);
        let out = sent.catch_up(&snap(7, false, false));
        assert_eq!(out.bytes.unwrap(), [&b"id: 7\ndata: x\n\n"[..], &LIVE[..]].concat());
        assert_eq!(out.frames, 2, "data and marker are two frames in one chunk");
        let out = sent.catch_up(&snap(7, false, true));
        assert_eq!((out.bytes.unwrap(), out.frames, out.done), (END, 1, true));
    }

    #[test]
    fn last_event_id_skips_only_that_seq_even_when_it_arrives_late() {
        // Reconnected before the feed had a value; the value is the one the
        // browser already has.
        let mut sent = Sent { data_seq: 0, stale: false, viewers: None, resume: Some(8) };
        assert_eq!(sent.catch_up(&snap(0, false, false)).bytes, None);
        assert_eq!(sent.catch_up(&snap(8, false, false)).bytes, None, "the browser has seq 8");
        assert_eq!(sent.catch_up(&snap(9, false, false)).bytes.unwrap(), "id: 9\ndata: x\n\n");
        // An older Last-Event-ID gets the latest value.
        let mut older = Sent { data_seq: 0, stale: false, viewers: None, resume: Some(7) };
        assert_eq!(older.catch_up(&snap(8, false, false)).bytes.unwrap(), "id: 8\ndata: x\n\n");
    }

    #[test]
    fn presence_is_sent_on_change_only() {
        let mut sent = Sent { data_seq: 5, stale: false, viewers: None, resume: None };
        let mut s = snap(5, false, false);
        s.viewers = Some(3);
        s.presence_frame = Some(Bytes::from_static(b"event: presence\ndata: {\"viewers\":3}\n\n"));
        assert_eq!(sent.catch_up(&s).bytes, s.presence_frame);
        assert_eq!(sent.catch_up(&s).bytes, None);
    }

    #[test]
    fn the_common_case_shares_the_frame() {
        let s = snap(9, false, false);
        let mut sent = Sent { data_seq: 3, stale: false, viewers: None, resume: None };
        let out = sent.catch_up(&s).bytes.unwrap();
        assert_eq!(out.as_ptr(), s.data_frame.unwrap().as_ptr(), "no per-browser copy");
    }
}
