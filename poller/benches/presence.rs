//! Presence (`poller/src/presence/`): one edge's heartbeat batch of
//! 1,000,000 viewer ids (`MAX_VIDS_PER_BATCH`) stored in place of its
//! previous one. `PresenceStore::report` is what the gRPC service calls: it
//! validates the batch (every id parsed), replaces the edge's batch in the
//! tally under the store's lock (add the new, subtract the old) and frees
//! the old batch after the lock. The timings are all of it;
//! `parse_vids` is the parsing alone, for the share of validation.

use divan::{Bencher, black_box, counter::ItemsCount};
use livepush::{
    ViewerId,
    proto::{EventViewers, HeartbeatBatch},
};
use poller::presence::{MAX_VIDS_PER_BATCH, MAX_VIDS_PER_EVENT, PresenceStore};
use tokio_util::sync::CancellationToken;

fn main() {
    divan::main();
}

/// A batch's events: ten at the per-event limit (100,000 ids each).
const EVENTS: usize = MAX_VIDS_PER_BATCH / MAX_VIDS_PER_EVENT;

/// Viewer ids as a player makes them: 18 characters, opaque.
fn vid(i: u64) -> String {
    format!("v-{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// One edge's batch of 1,000,000 viewers; `shift` replaces that many of
/// them (the first ones of every event) with viewers not seen before.
fn batch(shift: usize) -> HeartbeatBatch {
    let per_event = MAX_VIDS_PER_BATCH / EVENTS;
    let events = (0..EVENTS)
        .map(|e| {
            let vids = (0..per_event)
                .map(|i| {
                    let n = (e * per_event + i) as u64;
                    if i < shift / EVENTS { vid(n + (1 << 40)) } else { vid(n) }
                })
                .collect();
            EventViewers { event_id: format!("match-{}", 4_800 + e), vids, anonymous: 250 }
        })
        .collect();
    HeartbeatBatch { edge_id: "edge-eu-west-3".into(), interval_ms: 5_000, events }
}

fn store() -> PresenceStore {
    PresenceStore::new(CancellationToken::new())
}

/// The edge's first batch, into an empty store: every id added.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn report_first_batch(bencher: Bencher) {
    let batch = batch(0);
    bencher
        .counter(ItemsCount::new(MAX_VIDS_PER_BATCH))
        .with_inputs(|| (store(), batch.clone()))
        .bench_local_values(|(store, batch)| {
            store.report(black_box(batch)).unwrap();
            // Returned, so the store is freed outside the timing.
            store
        });
}

/// The steady state: the same 1,000,000 viewers again, every counter bumped
/// and lowered, nothing added or removed.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn report_same_viewers(bencher: Bencher) {
    let batch = batch(0);
    let store = store();
    store.report(batch.clone()).unwrap();
    bencher
        .counter(ItemsCount::new(MAX_VIDS_PER_BATCH))
        .with_inputs(|| batch.clone())
        .bench_local_values(|batch| store.report(black_box(batch)).unwrap());
}

/// 10% of the viewers changed since the last batch (100,000 left, as many
/// came): batches alternate between two sets that differ by that much.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn report_10pct_churn(bencher: Bencher) {
    let batches = [batch(0), batch(MAX_VIDS_PER_BATCH / 10)];
    let store = store();
    store.report(batches[0].clone()).unwrap();
    let mut turn = 0;
    bencher
        .counter(ItemsCount::new(MAX_VIDS_PER_BATCH))
        .with_inputs(|| {
            turn += 1;
            batches[turn % 2].clone()
        })
        .bench_local_values(|batch| store.report(black_box(batch)).unwrap());
}

/// Validation's main work alone: the 1,000,000 ids parsed.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn parse_vids(bencher: Bencher) {
    let batch = batch(0);
    bencher.counter(ItemsCount::new(MAX_VIDS_PER_BATCH)).bench_local(|| {
        black_box(&batch)
            .events
            .iter()
            .map(|e| e.vids.iter().map(|v| ViewerId::parse(v).unwrap()).collect::<Box<[_]>>())
            .collect::<Vec<_>>()
    });
}
