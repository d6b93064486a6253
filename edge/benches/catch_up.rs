//! A browser catching up with an event's snapshot: the frames it lacks,
//! worked out from what it was sent and the snapshot every browser shares
//! (`edge/src/stream.rs`, `edge/src/multi.rs`). This runs once when a
//! browser connects (its opening) and once per browser per change, so it is
//! the per-browser side of the fan-out; the frames themselves are encoded
//! once per update (see `sse.rs` in this folder).

#[allow(dead_code)] // Each benchmark file uses part of it.
mod payload;

use bytes::BytesMut;
use divan::{Bencher, black_box, counter::ItemsCount};
use edge::{
    feeds::Snapshot,
    multi::{self, Members, ResumeId},
    sse, stream,
    upstream::failover::Publisher,
};
use livepush::{
    EventId,
    proto::{LiveUpdate, State},
};
use tokio::sync::watch;

fn main() {
    divan::main();
}

/// A seq as feeds make them: microseconds since 1970.
const SEQ: u64 = 1_764_506_467_123_456;

/// The snapshot of `id` after the poller sent `data` at `seq`, with the
/// viewer count known (as with heartbeats on), built by the same code as
/// the edge's.
fn snapshot(id: &str, data: &str, seq: u64) -> Snapshot {
    let id = EventId::parse(id).unwrap();
    let (tx, rx) = watch::channel(Snapshot::new(&id));
    let mut publisher = Publisher::new(tx, &id);
    let update = LiveUpdate {
        event_id: id.as_str().to_owned(),
        seq,
        data: data.to_owned(),
        fetched_at_unix_ms: 1_764_506_467_123,
        state: State::Live as i32,
    };
    publisher.update(&update);
    let mut snap = rx.borrow().clone();
    // What `Feeds::set_viewers` stores.
    let viewers = 1_234;
    snap.viewers = Some(viewers);
    let data = format!(r#"{{"viewers":{viewers}}}"#);
    snap.presence_frame = Some(sse::Event { id: None, event: Some("presence"), data: &data }.encode());
    let data = format!(r#"{{"event_id":"{}","viewers":{viewers}}}"#, id.as_str());
    snap.tagged.presence = Some(sse::Event { id: None, event: Some("presence"), data: &data }.encode());
    snap
}

fn fresh(resume: Option<u64>) -> stream::Sent {
    stream::Sent { data_seq: 0, stale: false, viewers: None, resume }
}

/// Single-event streams (`GET /live/{id}/stream`).
mod single {
    use super::*;

    /// A new browser: the value and the viewer count, copied into one chunk.
    #[divan::bench(args = ["small_200B", "large_16KiB"])]
    fn opening(bencher: Bencher, name: &str) {
        let data = if name == "small_200B" { payload::small() } else { payload::large() };
        let snap = snapshot("match-4821", &data, SEQ);
        bencher.with_inputs(|| fresh(None)).bench_local_refs(|sent| sent.catch_up(black_box(&snap)));
    }

    /// A new browser before the viewer count is known: the shared data
    /// frame alone, no copy.
    #[divan::bench]
    fn opening_data_only(bencher: Bencher) {
        let mut snap = snapshot("match-4821", &payload::large(), SEQ);
        (snap.viewers, snap.presence_frame) = (None, None);
        bencher.with_inputs(|| fresh(None)).bench_local_refs(|sent| sent.catch_up(black_box(&snap)));
    }

    /// A browser reconnecting with `Last-Event-ID` of the current value: it
    /// gets only the viewer count.
    #[divan::bench]
    fn opening_resumed(bencher: Bencher) {
        let snap = snapshot("match-4821", &payload::large(), SEQ);
        bencher.with_inputs(|| fresh(Some(SEQ))).bench_local_refs(|sent| sent.catch_up(black_box(&snap)));
    }

    /// A connected browser and the next value: the fan-out's per-browser
    /// step (the shared frame, no copy).
    #[divan::bench]
    fn next_value(bencher: Bencher) {
        let snap = snapshot("match-4821", &payload::large(), SEQ + 1);
        bencher
            .with_inputs(|| stream::Sent { data_seq: SEQ, stale: false, viewers: Some(1_234), resume: None })
            .bench_local_refs(|sent| sent.catch_up(black_box(&snap)));
    }
}

/// Multi-event streams (`GET /live/stream?event=a&event=b&…`): every data
/// frame carries a resume id that covers all the stream's events.
mod multi_event {
    use super::*;

    /// Up to `--max-events-per-stream`: 64 by default, 256 at most.
    const EVENTS: &[usize] = &[8, 64, multi::MAX_EVENTS];

    fn stream(n: usize) -> (Vec<EventId>, Vec<Snapshot>, u64) {
        let data = payload::small();
        let ids: Vec<EventId> =
            (0..n).map(|i| EventId::parse(&format!("match-{}", 4_800 + i)).unwrap()).collect();
        // Seqs of one edge's feeds: close together.
        let snaps = ids
            .iter()
            .enumerate()
            .map(|(i, id)| snapshot(id.as_str(), &data, SEQ + i as u64 * 56_250_000))
            .collect();
        let list = ResumeId::list(&ids);
        (ids, snaps, list)
    }

    fn members(list: u64, n: usize) -> Members {
        Members { list, sent: vec![multi::Sent::default(); n] }
    }

    /// A new browser: every event's value and viewer count, in one chunk.
    #[divan::bench(args = EVENTS)]
    fn opening(bencher: Bencher, n: usize) {
        let (_, snaps, list) = stream(n);
        bencher
            .counter(ItemsCount::new(n))
            .with_inputs(|| (members(list, n), BytesMut::new()))
            .bench_local_refs(|(members, out)| {
                for (i, snap) in snaps.iter().enumerate() {
                    members.catch_up(i, black_box(snap), out);
                }
            });
    }

    /// A connected browser and the next value of one of its events: one
    /// tagged frame and a fresh resume id over all `n` events.
    #[divan::bench(args = EVENTS)]
    fn next_value(bencher: Bencher, n: usize) {
        let (ids, snaps, list) = stream(n);
        let mut caught_up = members(list, n);
        for (i, snap) in snaps.iter().enumerate() {
            caught_up.catch_up(i, snap, &mut BytesMut::new());
        }
        let next = snapshot(ids[n / 2].as_str(), &payload::small(), SEQ + n as u64 * 56_250_000);
        bencher
            .with_inputs(|| (Members { list, sent: caught_up.sent.clone() }, BytesMut::new()))
            .bench_local_refs(|(members, out)| members.catch_up(n / 2, black_box(&next), out));
    }
}
