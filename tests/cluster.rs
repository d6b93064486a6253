//! A cluster on loopback: three pollers and three edges as real processes.
//! Each event is owned by one poller (the same on every edge); killing a
//! poller with SIGKILL moves its events to the others while browsers stay
//! connected and see every value once; when it returns, its events move back.
//!
//! Each poller polls its own counting media server (all three scripted
//! alike), so the test sees which poller polled what, and their sum is what a
//! single media service would see.

use livepush_tests::{
    PATIENCE, TestMedia,
    process::{Process, free_addr, wait_ok},
    sse::SseClient,
};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;

const POLLER_BIN: &str = env!("CARGO_BIN_EXE_livepush-test-poller");
const EDGE_BIN: &str = env!("CARGO_BIN_EXE_livepush-test-edge");
const EVENTS: usize = 30;
const INTERVAL: Duration = Duration::from_secs(1);

/// What one browser received: (`id`, data) of each message, and whether its
/// stream ended.
#[derive(Default)]
struct Seen {
    messages: Vec<(u64, String)>,
    ended: bool,
}

struct Browser {
    event: String,
    seen: Arc<Mutex<Seen>>,
}

impl Browser {
    async fn open(edge: &Process, event: &str) -> Self {
        let mut client = SseClient::open(&format!("{}/live/{event}/stream", edge.url())).await;
        assert_eq!(client.status, 200);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Some(e) = client.next_patiently().await {
                if e.event == "message" {
                    let id = e.id.parse().expect("numeric id");
                    record.lock().unwrap().messages.push((id, e.data));
                }
            }
            record.lock().unwrap().ended = true;
        });
        Self { event: event.to_owned(), seen }
    }

    fn last(&self) -> Option<String> {
        self.seen.lock().unwrap().messages.last().map(|(_, d)| d.clone())
    }
}

fn value(event: &str, version: u32) -> String {
    format!(r#"{{"event":"{event}","v":{version}}}"#)
}

/// Polls of each event per media server (that is, per poller) in a window.
fn polls_in(
    media: &[TestMedia],
    events: &[String],
    from: Instant,
    to: Instant,
) -> BTreeMap<String, Vec<usize>> {
    events
        .iter()
        .map(|e| {
            let counts = media.iter().map(|m| m.times(e).iter().filter(|t| **t >= from && **t < to).count());
            (e.clone(), counts.collect())
        })
        .collect()
}

/// Every event polled by exactly one poller, about once per interval.
fn assert_one_poll_per_interval(polls: &BTreeMap<String, Vec<usize>>, window: Duration, when: &str) {
    let expected = window.as_secs_f64() / INTERVAL.as_secs_f64();
    for (event, counts) in polls {
        let pollers = counts.iter().filter(|c| **c > 0).count();
        assert_eq!(pollers, 1, "{when}: {event} polled by {pollers} pollers: {counts:?}");
        let total: usize = counts.iter().sum();
        assert!(
            (total as f64 - expected).abs() <= 1.5,
            "{when}: {event} polled {total} times in {window:?} at one per {INTERVAL:?}: {counts:?}"
        );
    }
}

/// The poller (index) that polled each event in `polls`.
fn owners(polls: &BTreeMap<String, Vec<usize>>) -> BTreeMap<String, usize> {
    polls.iter().map(|(e, c)| (e.clone(), c.iter().position(|n| *n > 0).expect("polled"))).collect()
}

/// `name` (a counter or gauge without labels) summed over the edges' scrapes.
async fn edge_metric(edges: &[Process], name: &str) -> f64 {
    let mut sum = 0.0;
    for edge in edges {
        let text = reqwest::get(format!("{}/metrics", edge.url())).await.unwrap().text().await.unwrap();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("Prometheus text format");
        let sample = scrape.samples.iter().find(|s| s.metric == name);
        sum += match sample.map(|s| &s.value) {
            Some(prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v)) => *v,
            other => panic!("{name}: {other:?}"),
        };
    }
    sum
}

async fn wait_listening(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_all(browsers: &[Browser], what: &str, patience: Duration, check: impl Fn(&Browser) -> bool) {
    let deadline = Instant::now() + patience;
    loop {
        let behind: Vec<&str> = browsers.iter().filter(|b| !check(b)).map(|b| b.event.as_str()).collect();
        if behind.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; behind: {behind:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_poller_moves_its_events_and_browsers_see_every_value_once() {
    let media = [TestMedia::start().await, TestMedia::start().await, TestMedia::start().await];
    let events: Vec<String> = (0..EVENTS).map(|i| format!("match-{i}")).collect();
    let set_all = |version| {
        for m in &media {
            for e in &events {
                m.set_json(e, &value(e, version));
            }
        }
    };
    set_all(1);

    let poller_addrs = [free_addr(), free_addr(), free_addr()];
    let interval = format!("{}ms", INTERVAL.as_millis());
    let start_poller = |i: usize| {
        let template = media[i].template();
        let args = ["--media-url", &template, "--interval", &interval, "--linger", "1s"];
        Process::start(POLLER_BIN, poller_addrs[i], &args)
    };
    let mut pollers: Vec<Option<Process>> = (0..3).map(|i| Some(start_poller(i))).collect();
    for addr in poller_addrs {
        wait_listening(addr).await;
    }
    let poller_list = poller_addrs.iter().map(|a| format!("http://{a}")).collect::<Vec<_>>().join(",");
    let edge_args = ["--poller", &poller_list, "--poller-resolve-interval", "500ms"];
    let edges: Vec<Process> = (0..3).map(|_| Process::start(EDGE_BIN, free_addr(), &edge_args)).collect();
    for edge in &edges {
        wait_ok(&format!("{}/readyz", edge.url())).await;
    }

    // Two browsers per event, on different edges.
    let mut browsers = Vec::new();
    for (i, e) in events.iter().enumerate() {
        browsers.push(Browser::open(&edges[i % 3], e).await);
        browsers.push(Browser::open(&edges[(i + 1) % 3], e).await);
    }
    wait_all(&browsers, "the first value", PATIENCE, |b| b.last() == Some(value(&b.event, 1))).await;

    // Every edge picked the same owner: each event is polled by one poller,
    // once per interval, and all three pollers have a share.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = Duration::from_secs(5);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let before = polls_in(&media, &events, t0, t0 + window);
    assert_one_poll_per_interval(&before, window, "before the kill");
    let owned = owners(&before);
    let shares: Vec<usize> = (0..3).map(|p| owned.values().filter(|o| **o == p).count()).collect();
    assert!(shares.iter().all(|s| *s > 0), "ownership not spread: {shares:?}");
    let victim = (0..3).max_by_key(|p| shares[*p]).unwrap();
    let victims_events: Vec<String> =
        owned.iter().filter(|(_, o)| **o == victim).map(|(e, _)| e.clone()).collect();

    // SIGKILL the poller that owns the most events, then change every value.
    pollers[victim].take().unwrap().kill().await;
    set_all(2);
    wait_all(&browsers, "the value after the kill", PATIENCE, |b| b.last() == Some(value(&b.event, 2))).await;

    // The survivors poll everything, still once per event per interval.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t1 = Instant::now();
    tokio::time::sleep(window).await;
    let after = polls_in(&media, &events, t1, t1 + window);
    assert_one_poll_per_interval(&after, window, "after the kill");
    let moved = owners(&after);
    for e in &events {
        assert_ne!(moved[e], victim, "{e} still polled by the killed poller");
        if !victims_events.contains(e) {
            assert_eq!(moved[e], owned[e], "{e} moved although its poller lives");
        }
    }

    // Each edge saw two pollers left and moved each of its streams of the
    // victim's events once (every event has browsers on two edges).
    assert_eq!(edge_metric(&edges, "livepush_edge_pollers_up").await, 6.0);
    let moves = 2.0 * victims_events.len() as f64;
    assert_eq!(edge_metric(&edges, "livepush_edge_upstream_failovers_total").await, moves);
    assert_eq!(edge_metric(&edges, "livepush_edge_upstream_streams").await, 2.0 * EVENTS as f64);

    // The poller returns on its address: its events move back to it.
    let victim_polls = |m: &TestMedia| victims_events.iter().map(|e| m.count(e)).sum::<usize>();
    let polled_before_return = victim_polls(&media[victim]);
    pollers[victim] = Some(start_poller(victim));
    // Settled: for a few intervals, the victim's events were polled by it
    // and by no one else (every edge moved them, the old owners' linger
    // ended).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now = Instant::now();
        let recent = polls_in(&media, &victims_events, now - INTERVAL * 3, now);
        if recent.values().all(|c| c.iter().enumerate().all(|(p, n)| (p == victim) == (*n > 0))) {
            break;
        }
        assert!(now < deadline, "events did not move back to the returning poller: {recent:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(victim_polls(&media[victim]) > polled_before_return);
    set_all(3);
    wait_all(&browsers, "the value after the return", PATIENCE, |b| b.last() == Some(value(&b.event, 3)))
        .await;
    let t2 = Instant::now();
    tokio::time::sleep(window).await;
    let back = polls_in(&media, &events, t2, t2 + window);
    assert_one_poll_per_interval(&back, window, "after the return");
    assert_eq!(owners(&back), owned, "ownership after the return differs from before the kill");
    assert_eq!(edge_metric(&edges, "livepush_edge_pollers_up").await, 9.0);
    assert_eq!(edge_metric(&edges, "livepush_edge_upstream_failovers_total").await, 2.0 * moves);

    // Browsers never lost their stream, saw each value exactly once, in
    // order, with increasing ids.
    for b in &browsers {
        let seen = b.seen.lock().unwrap();
        assert!(!seen.ended, "{}: stream ended", b.event);
        let data: Vec<&str> = seen.messages.iter().map(|(_, d)| d.as_str()).collect();
        let expected: Vec<String> = (1..=3).map(|v| value(&b.event, v)).collect();
        assert_eq!(data, expected, "{}: values seen", b.event);
        assert!(seen.messages.windows(2).all(|w| w[0].0 < w[1].0), "{}: ids {:?}", b.event, seen.messages);
    }
    drop(edges);
}

/// A poller that drains (SIGTERM) says NOT_SERVING and ends its streams; its
/// events move to the other poller with no `stale` blip in browsers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_poller_hands_its_events_over_without_a_stale_blip() {
    use livepush_tests::{start_edge, start_poller};
    let media = [TestMedia::start().await, TestMedia::start().await];
    let events: Vec<String> = (0..6).map(|i| format!("drain-{i}")).collect();
    for m in &media {
        for e in &events {
            m.set_json(e, &value(e, 1));
        }
    }
    let interval = format!("{}ms", INTERVAL.as_millis());
    let mut pollers = Vec::new();
    for m in &media {
        pollers.push(Some(start_poller(&["--media-url", &m.template(), "--interval", &interval]).await));
    }
    let list = pollers.iter().map(|p| p.as_ref().unwrap().url()).collect::<Vec<_>>().join(",");
    let edge = start_edge(&["--poller", &list]).await;
    wait_ok(&format!("{}/readyz", edge.url())).await;
    let mut clients = Vec::new();
    for e in &events {
        let mut c = SseClient::open(&format!("{}/live/{e}/stream", edge.url())).await;
        assert_eq!(c.next_message().await.data, value(e, 1));
        clients.push(c);
    }
    // Drain the poller that polls the first event.
    let owner = media.iter().position(|m| m.count(&events[0]) > 0).unwrap();
    pollers[owner].take().unwrap().stop().await.unwrap();
    for m in &media {
        for e in &events {
            m.set_json(e, &value(e, 2));
        }
    }
    for (e, c) in events.iter().zip(&mut clients) {
        let next = c.next().await.expect("still connected");
        assert_eq!(
            (next.event.as_str(), next.data),
            ("message", value(e, 2)),
            "{e}: the next value, nothing else"
        );
    }
    let survivor = 1 - owner;
    let polled_by_survivor = events.iter().filter(|e| media[survivor].count(e) > 0).count();
    assert_eq!(polled_by_survivor, events.len(), "the survivor polls every event");
}
