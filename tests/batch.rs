//! Batch polling (`--media-batch-url`): watched events are asked for in
//! batches of at most `--batch-size` ids, each batch once per interval, and
//! every outcome of a batch answer reaches exactly the events it concerns:
//! a missing id fails that event alone, `null` ends it alone, an answer that
//! is not a JSON object fails its own batch and no other.
//!
//! Metrics are process-wide and tests of this file run concurrently, so
//! counters are compared as "moved at least by", never as exact values.

use livepush::proto::{LiveUpdate, State, SubscribeRequest};
use livepush_tests::{
    PATIENCE, TestMedia, eventually, feed_client,
    media::{BatchSeen, Reply},
    metric, next_update,
    sse::SseClient,
    start_edge, start_poller,
};
use std::{collections::HashSet, time::Duration};
use tokio::time::Instant;
use tonic::Streaming;

/// A poller polling `media` only through its batch endpoint, with `args`.
async fn batch_poller(media: &TestMedia, args: &[&str]) -> livepush_tests::Running {
    let (template, batch) = (media.template(), media.batch_template());
    let mut all = vec!["--media-url", template.as_str(), "--media-batch-url", batch.as_str()];
    all.extend_from_slice(args);
    start_poller(&all).await
}

/// Subscribes to every id at once (one channel, concurrent calls) and waits
/// for each first value, which must be the media double's default answer.
async fn subscribe_all(addr: std::net::SocketAddr, ids: &[String]) -> Vec<Streaming<LiveUpdate>> {
    let client = feed_client(addr).await;
    let streams = futures_util::future::join_all(ids.iter().map(|id| {
        let mut c = client.clone();
        let request = SubscribeRequest { event_id: id.clone() };
        async move { c.subscribe(request).await.expect("subscribe").into_inner() }
    }))
    .await;
    let mut out = Vec::new();
    for (mut s, id) in streams.into_iter().zip(ids) {
        let first = next_update(&mut s).await;
        assert_eq!(first.state, State::Live as i32, "{id}: {first:?}");
        out.push(s);
    }
    out
}

/// Reads updates until one is in `state`.
async fn until_state(stream: &mut Streaming<LiveUpdate>, state: State) -> LiveUpdate {
    loop {
        let u = next_update(stream).await;
        if u.state == state as i32 {
            return u;
        }
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Every batch request is well-formed: at most `max` ids, none twice, all
/// of them watched ids.
fn assert_well_formed(batches: &[BatchSeen], max: usize, watched: &[String]) {
    let watched: HashSet<&str> = watched.iter().map(String::as_str).collect();
    for b in batches {
        assert!(!b.ids.is_empty() && b.ids.len() <= max, "a batch of {} ids: {:?}", b.ids.len(), b.ids);
        let distinct: HashSet<&str> = b.ids.iter().map(String::as_str).collect();
        assert_eq!(distinct.len(), b.ids.len(), "an id twice in one request: {:?}", b.ids);
        assert!(distinct.is_subset(&watched), "unwatched ids polled: {:?}", b.ids);
    }
}

/// Each id's batch in the last batch request that named it.
fn last_batch_of<'a>(batches: &'a [BatchSeen], id: &str) -> &'a BatchSeen {
    batches.iter().rev().find(|b| b.ids.iter().any(|i| i == id)).expect("polled at least once")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_in_one_batch_per_interval_and_no_batch_is_over_the_size() {
    const INTERVAL: Duration = Duration::from_secs(1);
    const INTERVALS: u32 = 5;
    let media = TestMedia::start().await;
    let poller = batch_poller(&media, &["--batch-size", "100", "--interval", "1s"]).await;
    // Nothing is watched yet, so nothing of this poller is counted yet.
    let requests_before = metric(&poller.url(), "livepush_poller_batch_requests_total").await;
    let sizes_before = metric(&poller.url(), "livepush_poller_batch_size_count").await;
    let events = ids("b", 250);
    let _streams = subscribe_all(poller.addr, &events).await;

    // Warm-up: the first fetches (immediate batches) and the first round of
    // regular batches; then a window of whole intervals.
    tokio::time::sleep(INTERVAL * 2 + INTERVAL / 2).await;
    let from = Instant::now();
    tokio::time::sleep(INTERVAL * INTERVALS).await;
    let to = Instant::now();

    let all = media.batches();
    assert_well_formed(&all, 100, &events);
    assert_eq!(media.total(), 0, "with --media-batch-url no event is polled on its own");
    let window: Vec<&BatchSeen> = all.iter().filter(|b| b.at >= from && b.at < to).collect();
    let expected = 3 * INTERVALS as usize; // 250 ids in batches of at most 100
    assert!(
        window.len().abs_diff(expected) <= 1,
        "{} batch requests in {INTERVALS} intervals, expected {expected}: sizes {:?}",
        window.len(),
        window.iter().map(|b| b.ids.len()).collect::<Vec<_>>()
    );
    for id in &events {
        let n = window.iter().filter(|b| b.ids.contains(id)).count();
        assert!(
            n.abs_diff(INTERVALS as usize) <= 1,
            "{id} polled {n} times in {INTERVALS} intervals of {INTERVAL:?}"
        );
    }

    // The metrics saw the requests (they may count a request in flight at
    // the scrape either way, and other tests add to the same counters).
    let seen = media.batch_count() as f64;
    let requests = metric(&poller.url(), "livepush_poller_batch_requests_total").await - requests_before;
    assert!(requests >= seen - 2.0, "batch_requests_total moved by {requests}, the media saw {seen}");
    let sizes = metric(&poller.url(), "livepush_poller_batch_size_count").await - sizes_before;
    assert!(sizes >= seen - 2.0, "batch_size_count moved by {sizes}, the media saw {seen}");
    assert!(metric(&poller.url(), "livepush_poller_batch_size_sum").await >= 250.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_id_goes_stale_alone_and_null_ends_only_its_event() {
    let media = TestMedia::start().await;
    let poller =
        batch_poller(&media, &["--batch-size", "100", "--interval", "300ms", "--max-backoff", "600ms"]).await;
    let edge = start_edge(&["--poller", &poller.url()]).await;
    let events = ids("m", 6);
    let mut streams = subscribe_all(poller.addr, &events).await;
    let mut browser = SseClient::open(&format!("{}/live/m2/stream", edge.url())).await;
    assert_eq!(browser.next_message().await.data, r#"{"event":"m2"}"#);
    let mut neighbour = SseClient::open(&format!("{}/live/m3/stream", edge.url())).await;
    assert_eq!(neighbour.next_message().await.data, r#"{"event":"m3"}"#);

    // m1 left out of the answers: m1 alone goes stale, keeping its value.
    media.set("m1", Reply::missing());
    let stale = until_state(&mut streams[1], State::Stale).await;
    assert_eq!(stale.data, r#"{"event":"m1"}"#, "the last good value stays");
    // Its batch-mates were polled in the same requests and stayed live: the
    // next update of each is its new value, with no stale before it.
    for i in [0, 4, 5] {
        media.set_json(&format!("m{i}"), &format!(r#"{{"v":{i}}}"#));
        let u = next_update(&mut streams[i]).await;
        assert_eq!((u.state, u.data.as_str()), (State::Live as i32, format!(r#"{{"v":{i}}}"#).as_str()));
    }
    // Back in the answers: m1 is fresh again.
    media.set_json("m1", r#"{"back":1}"#);
    let fresh = until_state(&mut streams[1], State::Live).await;
    assert_eq!(fresh.data, r#"{"back":1}"#);

    // m2 answered with null: it ends (subscribers and browsers), nobody else.
    media.set("m2", Reply::status(404));
    let ended = until_state(&mut streams[2], State::Ended).await;
    assert_eq!(ended.data, r#"{"event":"m2"}"#);
    let closed = tokio::time::timeout(PATIENCE, streams[2].message()).await.expect("the stream ends");
    assert!(matches!(closed, Ok(None)), "{closed:?}");
    let end = loop {
        let e = browser.next().await.expect("an end event before the stream closes");
        if e.event != "message" {
            break e;
        }
    };
    assert_eq!(end.event, "end", "{end:?}");
    assert!(browser.next().await.is_none(), "the browser's stream closes after end");

    media.set_json("m3", r#"{"still":"here"}"#);
    let u = next_update(&mut streams[3]).await;
    assert_eq!((u.state, u.data.as_str()), (State::Live as i32, r#"{"still":"here"}"#));
    assert_eq!(neighbour.next_message().await.data, r#"{"still":"here"}"#);

    // An ended event is not asked for again (one request may have been
    // under way when the answer came).
    let asked = media.batch_appearances("m2");
    let polled_m3 = media.batch_appearances("m3");
    eventually("three more polls of m3", || media.batch_appearances("m3") >= polled_m3 + 3).await;
    assert!(media.batch_appearances("m2") <= asked + 1, "m2 still polled after it ended");
    assert_well_formed(&media.batches(), 100, &events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_a_json_object_fails_its_batch_and_no_other() {
    let media = TestMedia::start().await;
    let poller =
        batch_poller(&media, &["--batch-size", "10", "--interval", "300ms", "--max-backoff", "600ms"]).await;
    let events = ids("g", 30);
    let mut streams = subscribe_all(poller.addr, &events).await;
    // Let the first fetches join their regular batches.
    let regular = media.batch_count();
    eventually("two rounds of regular batches", || media.batch_count() >= regular + 6).await;
    assert_well_formed(&media.batches(), 10, &events);

    let victim = "g0";
    let mates: Vec<String> = last_batch_of(&media.batches(), victim).ids.clone();
    let others: Vec<usize> = (0..events.len()).filter(|i| !mates.contains(&events[*i])).collect();
    assert!(others.len() >= 20, "30 events in batches of at most 10: {mates:?}");

    let bad_answers = [
        ("not JSON", Reply::json("<html>busy</html>")),
        ("a JSON array", Reply::json(r#"[{"event":"g0"}]"#)),
        ("a JSON string", Reply::json(r#""g0""#)),
        ("a 503", Reply::status(503).body("{}")),
    ];
    for (round, (what, reply)) in bad_answers.into_iter().enumerate() {
        media.set_batch_override(victim, reply);
        // Every event of the failing batch goes stale, keeping its value.
        for id in &mates {
            let i = events.iter().position(|e| e == id).unwrap();
            let stale = until_state(&mut streams[i], State::Stale).await;
            assert!(!stale.data.is_empty(), "{what}: {id} kept no value");
        }
        // Recovery.
        media.clear_batch_override(victim);
        for id in &mates {
            let i = events.iter().position(|e| e == id).unwrap();
            until_state(&mut streams[i], State::Live).await;
        }
        // Every other batch went on: each other event's next update is its
        // new value, with no stale before it.
        let value = format!(r#"{{"round":{round}}}"#);
        for &i in &others {
            media.set_json(&events[i], &value);
        }
        for &i in &others {
            let u = next_update(&mut streams[i]).await;
            assert_eq!(
                (u.state, u.data.as_str()),
                (State::Live as i32, value.as_str()),
                "{what}: {}",
                events[i]
            );
        }
    }
    assert_well_formed(&media.batches(), 10, &events);
    assert_eq!(media.total(), 0, "failures are not retried event by event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_events_get_their_first_value_at_once_in_grouped_batches() {
    let media = TestMedia::start().await;
    let poller = batch_poller(&media, &["--batch-size", "100", "--interval", "1h"]).await;

    // One event: its value comes at once, not an hour later.
    let first = subscribe_all(poller.addr, &["solo".to_owned()]).await;
    assert_eq!(media.batch_appearances("solo"), 1);

    // 150 at once: grouped into a few requests of at most 100 ids, each id
    // asked for once.
    let events = ids("n", 150);
    let _streams = subscribe_all(poller.addr, &events).await;
    let batches = media.batches();
    let mut watched = events.clone();
    watched.push("solo".into());
    assert_well_formed(&batches, 100, &watched);
    let firsts: Vec<&BatchSeen> =
        batches.iter().filter(|b| b.ids.iter().any(|id| id.starts_with('n'))).collect();
    assert!(firsts.len() < 75, "150 simultaneous first fetches took {} requests", firsts.len());
    for id in &events {
        // A regular batch may be due soon after the first fetch; an hour
        // interval allows no more than that.
        let n = media.batch_appearances(id);
        assert!((1..=2).contains(&n), "{id} asked for {n} times");
    }
    assert_eq!(media.total(), 0);
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_batches_are_asked_conditionally_and_304_keeps_the_values() {
    let media = TestMedia::start().await;
    let events = ids("t", 3);
    for id in &events {
        media.set(id, Reply::json(&format!(r#"{{"{id}":1}}"#)).header("etag", "\"v1\""));
    }
    let poller = batch_poller(&media, &["--batch-size", "100", "--interval", "200ms"]).await;
    let mut streams = subscribe_all(poller.addr, &events).await;
    // From here on every request is a regular one (the first fetches are
    // done); whether a regular batch reuses the validator of a first-fetch
    // batch with the same ids is left open.
    let regular = media.batch_count();
    eventually("six more batch requests", || media.batch_count() >= regular + 6).await;

    // Each regular request for the same ids as the previous regular answer
    // with an ETag carries that ETag, and is answered 304.
    let batches = media.batches()[regular..].to_vec();
    let mut conditional = 0;
    for (i, b) in batches.iter().enumerate() {
        let previous = batches[..i].iter().rev().find(|p| p.ids == b.ids);
        if let Some(etag) = previous.and_then(|p| p.etag.clone()) {
            assert_eq!(b.header("if-none-match").as_deref(), Some(etag.as_str()), "request {i}: {b:?}");
            assert_eq!(b.status, 304);
            conditional += 1;
        }
    }
    assert!(conditional >= 4, "{conditional} conditional batch requests of {}", batches.len());

    // A 304 changed nothing: the next update of each event is its real
    // change, never a stale.
    let old_etags: HashSet<String> = media.batches().iter().filter_map(|b| b.etag.clone()).collect();
    for (i, id) in events.iter().enumerate() {
        let value = format!(r#"{{"{id}":2}}"#);
        media.set(id, Reply::json(&value).header("etag", "\"v2\""));
        let u = next_update(&mut streams[i]).await;
        assert_eq!((u.state, u.data.as_str()), (State::Live as i32, value.as_str()), "{id}");
    }
    // The changed batch's new ETag is the one sent from then on.
    eventually("a 304 for the changed batch", || {
        let batches = media.batches();
        batches.iter().any(|b| b.status == 304 && b.etag.as_ref().is_some_and(|e| !old_etags.contains(e)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_flags_are_checked_at_start_up() {
    use clap::Parser;
    let parse = |args: &[&str]| {
        poller::Config::try_parse_from(std::iter::once("poller").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    };
    let ok = "http://media.test/batch?ids={event_ids}";
    assert!(parse(&["--media-batch-url", ok]).is_ok());
    assert!(
        parse(&["--media-batch-url", "http://media.test/batch/{event_ids}", "--batch-size", "1000"]).is_ok()
    );
    for (args, flag) in [
        (&["--media-batch-url", "http://media.test/batch"][..], "--media-batch-url"),
        (&["--media-batch-url", "http://{event_ids}.media.test/batch"][..], "--media-batch-url"),
        (&["--media-batch-url", "ftp://media.test/?ids={event_ids}"][..], "--media-batch-url"),
        (&["--media-batch-url", ok, "--batch-size", "0"][..], "--batch-size"),
        (&["--media-batch-url", ok, "--batch-size", "1001"][..], "--batch-size"),
    ] {
        let err = parse(args).expect_err(&format!("{args:?} accepted"));
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}
