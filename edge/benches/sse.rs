//! The SSE wire format: what the edge pays once per update (never per
//! browser, see `edge/src/sse.rs`). `encode` is one frame; `publish` is the
//! whole per-update step of an event's upstream task, both frames (the
//! single-event one with its `id:` and the tagged multi-event envelope)
//! encoded and stored in the event's snapshot.

mod payload;

use divan::{Bencher, black_box, counter::BytesCount};
use edge::{feeds::Snapshot, sse, upstream::failover::Publisher};
use livepush::{
    EventId,
    proto::{LiveUpdate, State},
};
use tokio::sync::watch;

fn main() {
    divan::main();
}

/// Payload name and its document.
fn document(name: &str) -> String {
    match name {
        "small_200B" => payload::small(),
        "large_16KiB" => payload::large(),
        "large_16KiB_multiline" => payload::large_multiline(),
        _ => unreachable!("{name}"),
    }
}

const DOCUMENTS: &[&str] = &["small_200B", "large_16KiB", "large_16KiB_multiline"];

/// One unnamed event with its `id:` (a `seq`): the single-event data frame.
#[divan::bench(args = DOCUMENTS)]
fn encode(bencher: Bencher, name: &str) {
    let data = document(name);
    bencher.counter(BytesCount::of_str(&data)).bench_local(|| {
        sse::Event { id: Some(black_box("1764506467123456")), event: None, data: black_box(&data) }.encode()
    });
}

/// The tagged frame of multi-event streams: the envelope
/// `{"event_id":…,"data":<json>}` built, then encoded without an `id:`.
#[divan::bench(args = DOCUMENTS)]
fn encode_tagged(bencher: Bencher, name: &str) {
    let data = document(name);
    let prefix = r#"{"event_id":"match-4821","data":"#;
    bencher.counter(BytesCount::of_str(&data)).bench_local(|| {
        let envelope = format!("{}{}}}", black_box(prefix), black_box(&data));
        sse::Event { id: None, event: None, data: &envelope }.encode()
    });
}

/// One changed value from the poller, as the edge's upstream task handles
/// it: both frames encoded and swapped into the event's snapshot.
#[divan::bench(args = DOCUMENTS)]
fn publish(bencher: Bencher, name: &str) {
    let id = EventId::parse("match-4821").unwrap();
    let (tx, _rx) = watch::channel(Snapshot::new(&id));
    let mut publisher = Publisher::new(tx, &id);
    // Two values taking turns, so every update is a change.
    let data = document(name);
    let other = data.replacen("\"minute\":67", "\"minute\":68", 1);
    let mut updates = [&data, &other].map(|d| LiveUpdate {
        event_id: id.as_str().to_owned(),
        seq: 0,
        data: d.clone(),
        fetched_at_unix_ms: 1_764_506_467_123,
        state: State::Live as i32,
    });
    let mut seq = 1_764_506_467_000_000u64;
    bencher.counter(BytesCount::of_str(&data)).bench_local(|| {
        seq += 1;
        let update = &mut updates[(seq % 2) as usize];
        update.seq = seq;
        publisher.update(black_box(update));
    });
}
