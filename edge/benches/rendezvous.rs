//! Rendezvous ownership (`edge/src/upstream/pollers.rs`): which live poller
//! owns an event is the member of highest xxh3 weight over (member key,
//! event id). Every edge computes it for each event it subscribes to, and
//! again for every watched event whenever the live set changes, so its cost
//! is O(members) per event and O(members x events) per change.

use divan::{Bencher, black_box, counter::ItemsCount};
use edge::upstream::pollers::{MAX_MEMBERS, rank};

fn main() {
    divan::main();
}

/// Member keys as the edge makes them: the poller's socket address.
fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.0.{}.{}:50051", i / 200, 10 + i % 200)).collect()
}

/// What `Live::owner_index` computes: the owner's position.
fn owner(keys: &[&str], event: &str) -> usize {
    (0..keys.len()).max_by_key(|&i| rank(keys[i], event)).unwrap()
}

/// The owner of one event among 3, 16 and 256 (`MAX_MEMBERS`) pollers.
#[divan::bench(args = [3, 16, MAX_MEMBERS])]
fn owner_of_one_event(bencher: Bencher, members: usize) {
    let keys = keys(members);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    bencher.bench_local(|| owner(black_box(&keys), black_box("match-4821")));
}

/// Every owner of 10,000 watched events among 256 pollers: what a change
/// of the live set costs an edge that watches that many.
#[divan::bench(sample_count = 20)]
fn owners_of_10_000_events_at_256(bencher: Bencher) {
    let keys = keys(MAX_MEMBERS);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let events: Vec<String> = (0..10_000).map(|i| format!("match-{}", 100_000 + i)).collect();
    bencher.counter(ItemsCount::new(events.len())).bench_local(|| {
        let mut per_member = vec![0u32; keys.len()];
        for event in black_box(&events) {
            per_member[owner(&keys, event)] += 1;
        }
        per_member
    });
}
