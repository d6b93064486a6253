use super::{tally::Usage, *};

use livepush::proto::EventViewers;

fn store() -> PresenceStore {
    PresenceStore::new(CancellationToken::new())
}

fn ev(id: &str, vids: &[&str], anonymous: u32) -> EventViewers {
    EventViewers { event_id: id.into(), vids: vids.iter().map(|v| v.to_string()).collect(), anonymous }
}

fn batch(edge: &str, interval_ms: u32, events: Vec<EventViewers>) -> HeartbeatBatch {
    HeartbeatBatch { edge_id: edge.into(), interval_ms, events }
}

fn id(s: &str) -> EventId {
    EventId::parse(s).unwrap()
}

/// (viewers, identified, anonymous, edges)
fn counts(p: &EventPresence) -> (u32, u32, u32, u32) {
    (p.viewers, p.identified, p.anonymous, p.edges)
}

fn invalid(result: Result<HeartbeatAck, BatchError>) -> InvalidBatch {
    match result {
        Err(BatchError::Invalid(e)) => e,
        other => panic!("expected an invalid batch, got {other:?}"),
    }
}

#[test]
fn merges_edges_counting_each_vid_once() {
    let s = store();
    let ack = s.report(batch("e1", 1000, vec![ev("ev", &["a", "b"], 2), ev("other", &["z"], 0)])).unwrap();
    assert_eq!(counts(&ack.presence[0]), (4, 2, 2, 1));
    // "b" on a second edge, "c" listed twice (two tabs): each counts once.
    let ack = s.report(batch("e2", 1000, vec![ev("ev", &["b", "c", "c"], 3)])).unwrap();
    assert_eq!(ack.presence.len(), 1);
    assert_eq!(ack.presence[0].event_id, "ev");
    assert_eq!(counts(&ack.presence[0]), (8, 3, 5, 2));
    assert!(ack.presence[0].vids.is_empty(), "acks carry no vids");
    let got = s.get(&id("ev"));
    assert_eq!(counts(&got), (8, 3, 5, 2));
    assert_eq!(got.vids, ["a", "b", "c"]);
    assert_eq!(counts(&s.get(&id("other"))), (1, 1, 0, 1));
    assert_eq!(s.get(&id("nobody")), EventPresence { event_id: "nobody".into(), ..Default::default() });
}

#[test]
fn vids_are_sorted() {
    let s = store();
    s.report(batch("e1", 1000, vec![ev("ev", &["m", "a", "Z", "b~"], 0)])).unwrap();
    s.report(batch("e2", 1000, vec![ev("ev", &["0", "m"], 0)])).unwrap();
    assert_eq!(s.get(&id("ev")).vids, ["0", "Z", "a", "b~", "m"]);
}

#[test]
fn a_batch_replaces_the_edges_previous_one() {
    let s = store();
    s.report(batch("e1", 1000, vec![ev("x", &["a", "b"], 1), ev("y", &["a"], 0)])).unwrap();
    s.report(batch("e2", 1000, vec![ev("x", &["b"], 0)])).unwrap();
    // e1 now only lists x with "c": "a" is gone from x and y is gone.
    let ack = s.report(batch("e1", 1000, vec![ev("x", &["c"], 0)])).unwrap();
    assert_eq!(counts(&ack.presence[0]), (2, 2, 0, 2));
    assert_eq!(s.get(&id("x")).vids, ["b", "c"]);
    assert_eq!(counts(&s.get(&id("y"))), (0, 0, 0, 0));
    assert_eq!(s.events_with_viewers(), 1);
    // An event listed without viewers is answered but does not count the
    // edge.
    let ack = s.report(batch("e1", 1000, vec![ev("x", &[], 0)])).unwrap();
    assert_eq!(counts(&ack.presence[0]), (1, 1, 0, 1));
    // An empty batch empties the edge, which stays known.
    s.report(batch("e2", 1000, vec![])).unwrap();
    assert_eq!(s.events_with_viewers(), 0);
    assert_eq!(s.edges(), 2);
    assert_eq!(s.lock().stored, 0);
}

#[test]
fn gauges_follow_edges_events_viewers_and_watches() {
    // This store's share of the process-wide gauges.
    let sizes = |s: &PresenceStore| {
        let g = s.lock().gauged;
        (g.edges, g.events, g.viewers, g.watched)
    };
    let s = store();
    s.report(batch("e1", 1000, vec![ev("x", &["a", "b"], 1), ev("y", &["a"], 0)])).unwrap();
    s.report(batch("e2", 1000, vec![ev("x", &["b", "c"], 2)])).unwrap();
    // x: a, b, c and 3 anonymous; y: a.
    assert_eq!(sizes(&s), (2, 2, 7, 0));
    let w = s.watch(id("x")).unwrap();
    assert_eq!(sizes(&s), (2, 2, 7, 1));
    s.report(batch("e1", 1000, vec![])).unwrap();
    // x: b, c and 2 anonymous; e1 stays known with nothing.
    assert_eq!(sizes(&s), (2, 1, 4, 1));
    assert_eq!(u64::from(s.get(&id("x")).viewers), s.lock().viewers);
    drop(w);
    assert_eq!(sizes(&s), (2, 1, 4, 0));
    assert_eq!(s.expire_at(Instant::now() + Duration::from_secs(3)), 2);
    assert_eq!(sizes(&s), (0, 0, 0, 0));
}

#[test]
fn edges_expire_after_three_of_their_intervals() {
    let s = store();
    let t0 = Instant::now();
    s.report_at(batch("slow", 1000, vec![ev("x", &["a"], 1)]), t0).unwrap();
    s.report_at(batch("fast", 100, vec![ev("x", &["b"], 0)]), t0).unwrap();
    assert_eq!(s.expire_at(t0 + Duration::from_millis(299)), 0);
    assert_eq!(counts(&s.get(&id("x"))), (3, 2, 1, 2));
    assert_eq!(s.expire_at(t0 + Duration::from_millis(300)), 1);
    assert_eq!(counts(&s.get(&id("x"))), (2, 1, 1, 1));
    // A new batch pushes the deadline back.
    s.report_at(batch("slow", 1000, vec![ev("x", &["a"], 1)]), t0 + Duration::from_millis(2000)).unwrap();
    assert_eq!(s.expire_at(t0 + Duration::from_millis(4999)), 0);
    assert_eq!(s.expire_at(t0 + Duration::from_millis(5000)), 1);
    assert_eq!(counts(&s.get(&id("x"))), (0, 0, 0, 0));
    assert_eq!((s.edges(), s.events_with_viewers(), s.lock().stored), (0, 0, 0));
}

#[tokio::test]
async fn the_sweep_expires_edges_and_tells_watchers() {
    let stop = CancellationToken::new();
    let s = PresenceStore::new(stop.clone());
    let sweeper = tokio::spawn(s.clone().sweep());
    let mut w = s.watch(id("x")).unwrap();
    s.report(batch("e1", 100, vec![ev("x", &["a"], 0)])).unwrap();
    assert!(w.rx.has_changed().unwrap());
    assert_eq!(counts(&w.rx.borrow_and_update()), (1, 1, 0, 1));
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(2), w.rx.changed()).await.unwrap().unwrap();
    assert_eq!(counts(&w.rx.borrow()), (0, 0, 0, 0));
    assert!(started.elapsed() >= Duration::from_millis(250), "expired early: {:?}", started.elapsed());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(1), sweeper).await.unwrap().unwrap();
}

#[test]
fn watchers_see_changes_only() {
    let s = store();
    s.report(batch("e1", 1000, vec![ev("x", &["a"], 0)])).unwrap();
    let mut w = s.watch(id("x")).unwrap();
    assert_eq!(counts(&w.rx.borrow_and_update()), (1, 1, 0, 1), "the current value at once");
    // The same counts again (other vid, same numbers): nothing to send.
    s.report(batch("e1", 1000, vec![ev("x", &["b"], 0)])).unwrap();
    assert!(!w.rx.has_changed().unwrap());
    // Other events do not wake this watcher.
    s.report(batch("e2", 1000, vec![ev("y", &["a"], 0)])).unwrap();
    assert!(!w.rx.has_changed().unwrap());
    s.report(batch("e2", 1000, vec![ev("x", &["a"], 0)])).unwrap();
    assert!(w.rx.has_changed().unwrap());
    assert_eq!(counts(&w.rx.borrow_and_update()), (2, 2, 0, 2));
    // The edge dropping the event is a change too.
    s.report(batch("e1", 1000, vec![])).unwrap();
    assert_eq!(counts(&w.rx.borrow_and_update()), (1, 1, 0, 1));
}

#[test]
fn watch_channels_go_with_their_last_watcher() {
    let s = store();
    let a = s.watch(id("x")).unwrap();
    let b = s.watch(id("x")).unwrap();
    assert_eq!(s.watched_events(), 1);
    drop(a);
    assert_eq!(s.watched_events(), 1);
    drop(b);
    assert_eq!(s.watched_events(), 0);
    // A later watcher gets a fresh channel with the current value.
    s.report(batch("e1", 1000, vec![ev("x", &[], 4)])).unwrap();
    let c = s.watch(id("x")).unwrap();
    assert_eq!(counts(&c.rx.borrow()), (4, 0, 4, 1));
}

#[test]
fn watched_events_are_bounded() {
    let s = store();
    let watches: Vec<_> = (0..MAX_WATCHED_EVENTS).map(|i| s.watch(id(&format!("w{i}"))).unwrap()).collect();
    assert_eq!(s.watch(id("one-more")).unwrap_err(), WatchError::TooManyWatched(MAX_WATCHED_EVENTS));
    // Already watched events still take watchers.
    let again = s.watch(id("w0")).unwrap();
    drop(watches);
    assert_eq!(s.watched_events(), 1);
    drop(again);
    assert!(s.watch(id("one-more")).is_ok());
}

#[test]
fn the_1025th_edge_is_refused_until_one_expires() {
    let s = store();
    let t0 = Instant::now();
    for i in 0..MAX_EDGES {
        let interval = if i == 7 { 100 } else { 60_000 };
        s.report_at(batch(&format!("edge-{i}"), interval, vec![]), t0).unwrap();
    }
    let extra = || batch("edge-extra", 1000, vec![ev("x", &["a"], 0)]);
    assert_eq!(s.report_at(extra(), t0).unwrap_err(), BatchError::TooManyEdges(MAX_EDGES));
    assert_eq!(counts(&s.get(&id("x"))), (0, 0, 0, 0), "nothing stored");
    // Known edges keep reporting.
    s.report_at(batch("edge-3", 1000, vec![]), t0).unwrap();
    // Once edge-7 is past its deadline its slot is reused at once.
    s.report_at(extra(), t0 + Duration::from_millis(300)).unwrap();
    assert_eq!(s.edges(), MAX_EDGES);
}

fn owner(name: &str) -> Owner {
    Some(Arc::from(name))
}

#[test]
fn a_client_inventing_edge_ids_fills_only_its_own_budget() {
    let s = store();
    let t0 = Instant::now();
    s.report_for(owner("edges"), batch("edge-a", 60_000, vec![ev("x", &["ann"], 0)])).unwrap();
    let mut refused = 0;
    for i in 0..2_000 {
        let fake = batch(&format!("fake-{i}"), 60_000, vec![ev("x", &[], 1)]);
        match s.report_owned_at(owner("evil"), fake, t0) {
            Ok(_) => {}
            Err(BatchError::TooManyEdges(MAX_EDGES)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused, 2_000 - MAX_EDGES);
    // The real edge keeps reporting, and a new edge of another client is
    // still admitted.
    s.report_for(owner("edges"), batch("edge-a", 60_000, vec![ev("x", &["ann", "bob"], 0)])).unwrap();
    s.report_for(owner("edges"), batch("edge-b", 60_000, vec![ev("x", &["carl"], 0)])).unwrap();
    let p = s.get(&id("x"));
    assert_eq!(p.vids, ["ann", "bob", "carl"]);
    assert_eq!((p.identified, p.edges), (3, 2 + MAX_EDGES as u32));
    // The same edge id under another client is another edge: nobody else
    // can replace (or empty) edge-a's batch.
    assert_eq!(
        s.report_for(owner("evil"), batch("edge-a", 60_000, vec![])).unwrap_err(),
        BatchError::TooManyEdges(MAX_EDGES)
    );
    s.report_for(owner("other"), batch("edge-a", 60_000, vec![])).unwrap();
    s.report_for(owner("edges"), batch("fake-0", 60_000, vec![])).unwrap();
    assert_eq!(s.get(&id("x")).vids, ["ann", "bob", "carl"]);
    assert_eq!(s.edges(), 3 + MAX_EDGES + 1);
}

#[test]
fn each_client_has_its_own_share_of_entries() {
    let s = store();
    s.lock().usage.insert(owner("evil"), Usage { edges: 0, stored: MAX_STORED_ENTRIES - 1 });
    let err = s.report_for(owner("evil"), batch("e", 1000, vec![ev("x", &["a", "b"], 0)])).unwrap_err();
    assert_eq!(err, BatchError::Full(MAX_STORED_ENTRIES));
    s.report_for(owner("edges"), batch("e", 1000, vec![ev("x", &["a", "b"], 0)])).unwrap();
    assert_eq!(s.get(&id("x")).identified, 2);
}

#[test]
fn owners_budgets_follow_expiry() {
    let s = store();
    let t0 = Instant::now();
    s.report_owned_at(owner("a"), batch("e1", 100, vec![ev("x", &["v"], 0)]), t0).unwrap();
    s.report_owned_at(owner("a"), batch("e2", 1000, vec![ev("x", &["w"], 0)]), t0).unwrap();
    s.report_owned_at(owner("b"), batch("e1", 100, vec![ev("x", &[], 2)]), t0).unwrap();
    let usage = |s: &PresenceStore, o: &str| {
        let u = s.lock().usage(&owner(o));
        (u.edges, u.stored)
    };
    assert_eq!((usage(&s, "a"), usage(&s, "b")), ((2, 4), (1, 1)));
    assert_eq!(s.expire_at(t0 + Duration::from_millis(300)), 2);
    assert_eq!((usage(&s, "a"), usage(&s, "b")), ((1, 2), (0, 0)));
    assert_eq!(s.lock().usage.len(), 1, "an owner without edges is forgotten");
    assert_eq!(counts(&s.get(&id("x"))), (1, 1, 0, 1));
}

#[test]
fn get_at_most_bounds_the_ids_and_keeps_the_counts_exact() {
    let s = store();
    let vids: Vec<String> = (0..1_000).map(|i| format!("v{i:04}")).collect();
    let refs: Vec<&str> = vids.iter().map(String::as_str).collect();
    s.report(batch("e1", 1000, vec![ev("x", &refs, 3)])).unwrap();
    let p = s.get_at_most(&id("x"), 10);
    assert_eq!((p.viewers, p.identified, p.anonymous), (1_003, 1_000, 3));
    assert_eq!(p.vids.len(), 10);
    assert!(p.truncated);
    assert!(p.vids.windows(2).all(|w| w[0] < w[1]), "sorted: {:?}", p.vids);
    assert!(p.vids.iter().all(|v| vids.contains(v)), "real viewer ids");
    let all = s.get_at_most(&id("x"), 1_000);
    assert_eq!((all.vids, all.truncated), (vids.clone(), false));
    let none = s.get_at_most(&id("x"), 0);
    assert!(none.vids.is_empty() && none.truncated && none.identified == 1_000);
    assert!(!s.get_at_most(&id("nobody"), 0).truncated);
}

#[test]
fn the_store_is_bounded_in_entries() {
    let s = store();
    {
        // Pretend other edges already hold almost everything.
        s.lock().usage.insert(None, Usage { edges: 0, stored: MAX_STORED_ENTRIES - 3 });
    }
    s.report(batch("e1", 1000, vec![ev("x", &["a", "b"], 0)])).unwrap();
    let err = s.report(batch("e2", 1000, vec![ev("y", &[], 1)])).unwrap_err();
    assert_eq!(err, BatchError::Full(MAX_STORED_ENTRIES));
    // An edge may still shrink or keep its own share.
    s.report(batch("e1", 1000, vec![ev("x", &["c"], 1)])).unwrap();
    s.report(batch("e2", 1000, vec![ev("y", &[], 1)])).unwrap();
}

#[test]
fn invalid_batches_change_nothing() {
    let s = store();
    s.report(batch("e1", 1000, vec![ev("x", &["a"], 1)])).unwrap();
    // The second event is bad: the first must not be applied either.
    let err = invalid(s.report(batch("e1", 1000, vec![ev("y", &["b"], 0), ev("../x", &[], 0)])));
    assert_eq!(err, InvalidBatch::EventId { index: 1, source: InvalidEventId::BadCharacter });
    assert_eq!(counts(&s.get(&id("x"))), (2, 1, 1, 1));
    assert_eq!(counts(&s.get(&id("y"))), (0, 0, 0, 0));
    assert_eq!(s.edges(), 1);
    invalid(s.report(batch("e2", 1000, vec![ev("y", &["bad vid"], 0)])));
    assert_eq!(s.edges(), 1, "an invalid batch does not register its edge");
}

#[test]
fn hostile_ids_are_refused() {
    let s = store();
    for edge in ["", &"e".repeat(65), "a/b", "a b", "é", "a\nb", "e\0"] {
        assert_eq!(invalid(s.report(batch(edge, 1000, vec![]))), InvalidBatch::EdgeId, "{edge:?}");
    }
    assert!(s.report(batch(&"e".repeat(64), 1000, vec![])).is_ok());
    for (event, why) in [
        ("", InvalidEventId::Empty),
        ("..", InvalidEventId::OnlyDots),
        ("a?b", InvalidEventId::BadCharacter),
        (&"x".repeat(129), InvalidEventId::TooLong),
    ] {
        let err = invalid(s.report(batch("e", 1000, vec![ev("ok", &[], 0), ev(event, &[], 0)])));
        assert_eq!(err, InvalidBatch::EventId { index: 1, source: why }, "{event:?}");
    }
    for (vid, why) in [
        ("", InvalidViewerId::Empty),
        ("<script>", InvalidViewerId::BadCharacter),
        (&"v".repeat(65), InvalidViewerId::TooLong),
    ] {
        let err = invalid(s.report(batch("e", 1000, vec![ev("x", &["ok", vid], 0)])));
        assert_eq!(err, InvalidBatch::ViewerId { index: 0, vid: 1, source: why }, "{vid:?}");
        assert!(!err.to_string().contains("script") && !err.to_string().contains('\n'), "{err}");
    }
    let err = invalid(s.report(batch("e", 1000, vec![ev("x", &[], 0), ev("y", &[], 0), ev("x", &[], 1)])));
    assert_eq!(err, InvalidBatch::DuplicateEvent { index: 2 });
}

#[test]
fn intervals_are_bounded() {
    let s = store();
    for ms in [0, 99, 600_001, u32::MAX] {
        assert_eq!(invalid(s.report(batch("e", ms, vec![]))), InvalidBatch::Interval, "{ms}");
    }
    for ms in [100, 600_000] {
        assert!(s.report(batch("e", ms, vec![])).is_ok(), "{ms}");
    }
}

#[test]
fn counts_per_batch_are_bounded() {
    let s = store();
    let too_many_events = (0..=MAX_EVENTS_PER_BATCH).map(|_| EventViewers::default()).collect();
    assert_eq!(invalid(s.report(batch("e", 1000, too_many_events))), InvalidBatch::TooManyEvents);

    let vids = |n: usize| (0..n).map(|i| format!("v{i}")).collect::<Vec<_>>();
    let event = |id: &str, vids: Vec<String>| EventViewers { event_id: id.into(), vids, anonymous: 0 };
    let err = invalid(s.report(batch(
        "e",
        1000,
        vec![event("a", vec![]), event("b", vids(MAX_VIDS_PER_EVENT + 1))],
    )));
    assert_eq!(err, InvalidBatch::TooManyVids { index: 1 });
    let at_limit = s.report(batch("e", 1000, vec![event("a", vids(MAX_VIDS_PER_EVENT))])).unwrap();
    assert_eq!(at_limit.presence[0].identified as usize, MAX_VIDS_PER_EVENT);

    // Eleven events of 100,000 vids each: every event is fine, the batch
    // is not. Vids are never parsed (they would be valid anyway).
    let per_event = vids(MAX_VIDS_PER_EVENT);
    let events = (0..=MAX_VIDS_PER_BATCH / MAX_VIDS_PER_EVENT)
        .map(|i| event(&format!("ev{i}"), per_event.clone()))
        .collect();
    assert_eq!(invalid(s.report(batch("e", 1000, events))), InvalidBatch::TooManyVidsInBatch);

    let err = invalid(s.report(batch("e", 1000, vec![ev("x", &[], MAX_ANONYMOUS + 1)])));
    assert_eq!(err, InvalidBatch::TooManyAnonymous { index: 0 });
    let ack = s.report(batch("e", 1000, vec![ev("x", &[], MAX_ANONYMOUS)])).unwrap();
    assert_eq!(ack.presence[0].viewers, MAX_ANONYMOUS);
    assert_eq!(s.get(&id("a")).viewers, 0, "the valid batch replaced the one at the limit");
}

#[test]
fn shutting_down_refuses_batches_and_watches() {
    let stop = CancellationToken::new();
    let s = PresenceStore::new(stop.clone());
    stop.cancel();
    assert_eq!(s.report(batch("e", 1000, vec![])).unwrap_err(), BatchError::ShuttingDown);
    assert_eq!(s.watch(id("x")).unwrap_err(), WatchError::ShuttingDown);
}

#[test]
fn forward_rounds_include_events_that_just_lost_their_viewers_once() {
    let s = store();
    s.report(batch("e1", 1000, vec![ev("x", &["a"], 0), ev("y", &[], 1)])).unwrap();
    let sorted = |mut v: Vec<EventId>| {
        v.sort();
        v
    };
    assert_eq!(sorted(s.forward_round()), [id("x"), id("y")]);
    s.report(batch("e1", 1000, vec![ev("x", &["a"], 0)])).unwrap();
    assert_eq!(sorted(s.forward_round()), [id("x"), id("y")], "y once more, with zero");
    assert_eq!(sorted(s.forward_round()), [id("x")]);
    // Lost and found again between two rounds: listed once.
    s.report(batch("e1", 1000, vec![])).unwrap();
    s.report(batch("e1", 1000, vec![ev("x", &["b"], 0)])).unwrap();
    assert_eq!(sorted(s.forward_round()), [id("x")]);
}

#[test]
fn big_batches_replace_incrementally() {
    // Not a benchmark: checks that replacing a large batch with an
    // overlapping one leaves exactly the new state.
    let s = store();
    let vids = |from: usize, to: usize| (from..to).map(|i| format!("v{i}")).collect::<Vec<_>>();
    let big = |vids| batch("e1", 1000, vec![EventViewers { event_id: "x".into(), vids, anonymous: 0 }]);
    s.report(big(vids(0, 50_000))).unwrap();
    s.report(batch("e2", 1000, vec![EventViewers { event_id: "x".into(), vids: vids(0, 10), anonymous: 0 }]))
        .unwrap();
    let ack = s.report(big(vids(40_000, 60_000))).unwrap();
    assert_eq!(ack.presence[0].identified, 20_010);
    assert_eq!(s.lock().stored, 1 + 20_000 + 1 + 10);
    s.report(big(vec![])).unwrap();
    assert_eq!(s.get(&id("x")).identified, 10);
}
