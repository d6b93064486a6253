//! Headless Chromium, the browser our users have: a page on another origin
//! opens several EventSources on the edge (one with credentials) and sees
//! updates, reconnects by itself after the edge restarts, and stops for good
//! after `end`.

use axum::{Router, response::Html, routing::get};
use livepush_tests::{TestMedia, browser::Browser, media::Reply, start_edge_at, start_poller};

/// The page: one EventSource per event, everything it sees kept in
/// `window.log`.
fn page(edge: &str) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>livepush test</title>
<script>
  window.log = [];
  window.opens = {{}};
  window.sources = {{}};
  const open = (id, init) => {{
    const es = new EventSource('{edge}/live/' + id + '/stream', init);
    window.sources[id] = es;
    window.opens[id] = 0;
    es.onopen = () => {{ window.opens[id] += 1; }};
    es.onmessage = (e) => window.log.push({{ id, type: 'message', data: e.data, seq: e.lastEventId }});
    for (const t of ['stale', 'live', 'end']) {{
      es.addEventListener(t, () => window.log.push({{ id, type: t }}));
    }}
  }};
  open('alpha');
  open('beta');
  open('omega', {{ withCredentials: true }});
</script>"#
    )
}

/// A JavaScript expression: the page logged an event of `kind` for `id`
/// (with `data`, when given).
fn has(id: &str, kind: &str, data: Option<&str>) -> String {
    let data = data.map_or("null".to_owned(), |d| serde_json::to_string(d).unwrap());
    format!(
        "window.log.some(e => e.id === {id:?} && e.type === {kind:?} && ({data} === null || e.data === {data}))"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_sees_updates_reconnects_after_an_edge_restart_and_stops_at_end() {
    let Some(browser) = Browser::launch().await else { return };

    let media = TestMedia::start().await;
    media.set_json("alpha", r#"{"a":0}"#);
    media.set_json("beta", r#"{"b":0}"#);
    media.set_json("omega", r#"{"o":0}"#);
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;

    // The page lives on its own origin, so the edge must allow it by CORS.
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
    let edge_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let edge_url = format!("http://{edge_addr}");
    let html = page(&edge_url);
    let app = Router::new().route("/", get(move || async move { Html(html) }));
    tokio::spawn(async move { axum::serve(page_listener, app).await });

    let edge_args = [
        "--poller",
        &poller.url(),
        "--allow-origin",
        &page_origin,
        "--drain-spread",
        "300ms",
        "--retry",
        "300ms",
    ];
    let edge = start_edge_at(edge_addr, &edge_args).await;
    browser.client.goto(&page_origin).await.unwrap();

    // Updates reach onmessage, for every EventSource on the page.
    let first_values = [("alpha", r#"{"a":0}"#), ("beta", r#"{"b":0}"#), ("omega", r#"{"o":0}"#)]
        .map(|(id, data)| has(id, "message", Some(data)))
        .join(" && ");
    browser.wait_for("first values", &first_values).await;
    media.set_json("alpha", r#"{"a":1}"#);
    browser.wait_for("a change", &has("alpha", "message", Some(r#"{"a":1}"#))).await;

    // The edge restarts: the browser reconnects on its own and carries on.
    edge.stop().await.unwrap();
    let _edge = start_edge_at(edge_addr, &edge_args).await;
    browser.wait_for("reconnection", "window.opens.alpha >= 2 && window.opens.beta >= 2").await;
    media.set_json("alpha", r#"{"a":2}"#);
    browser.wait_for("a change after the restart", &has("alpha", "message", Some(r#"{"a":2}"#))).await;
    let seqs = browser
        .eval("return window.log.filter(e => e.id === 'alpha' && e.type === 'message').map(e => e.seq)")
        .await;
    let seqs: Vec<u64> =
        seqs.as_array().unwrap().iter().map(|s| s.as_str().unwrap().parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "no seq twice, in order: {seqs:?}");

    // The event ends: `end` arrives, the browser reconnects once, gets 204
    // and stops for good (readyState CLOSED).
    media.set("omega", Reply::status(404));
    browser.wait_for("end", &has("omega", "end", None)).await;
    browser.wait_for("EventSource closed for good", "window.sources.omega.readyState === 2").await;
    assert_eq!(browser.eval("return window.sources.alpha.readyState").await, 1, "others stay open");

    browser.close().await;
}

/// A page of live events on one EventSource: the latest value of each event,
/// routed by the envelope's `event_id`.
fn grid_page(edge: &str, events: usize) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>livepush grid</title>
<script>
  window.values = {{}};
  window.ended = [];
  const params = new URLSearchParams();
  for (let i = 0; i < {events}; i++) params.append('event', 'grid-' + i);
  const es = new EventSource('{edge}/live/stream?' + params);
  es.onmessage = (e) => {{ const m = JSON.parse(e.data); window.values[m.event_id] = m.data; }};
  es.addEventListener('end', (e) => window.ended.push(JSON.parse(e.data).event_id));
  window.es = es;
</script>"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_gets_thirty_events_on_one_event_source_and_the_host_stays_reachable() {
    let Some(browser) = Browser::launch().await else { return };
    const EVENTS: usize = 30;
    let media = TestMedia::start().await;
    for i in 0..EVENTS {
        media.set_json(&format!("grid-{i}"), r#"{"v":0}"#);
    }
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
    let edge_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let edge_url = format!("http://{edge_addr}");
    let html = grid_page(&edge_url, EVENTS);
    let app = Router::new().route("/", get(move || async move { Html(html) }));
    tokio::spawn(async move { axum::serve(page_listener, app).await });
    // Plain HTTP: the browser speaks HTTP/1.1 to the edge, six connections
    // per host at most.
    let _edge = start_edge_at(edge_addr, &["--poller", &poller.url(), "--allow-origin", &page_origin]).await;
    browser.client.goto(&page_origin).await.unwrap();

    let all = |v: u32| {
        format!(
            "Array.from({{length: {EVENTS}}}, (_, i) => window.values['grid-' + i]).every(d => d && d.v === {v})"
        )
    };
    browser.wait_for("every event's first value", &all(0)).await;
    for i in 0..EVENTS {
        media.set_json(&format!("grid-{i}"), r#"{"v":1}"#);
    }
    browser.wait_for("every event's update", &all(1)).await;
    assert_eq!(browser.eval("return window.es.readyState").await, 1);

    // The same host still answers the page's other requests at once.
    browser
        .eval(&format!(
            "window.fetched = null; fetch('{edge_url}/healthz').then(r => r.text()).then(t => window.fetched = t); return null;"
        ))
        .await;
    browser.wait_for("a fetch beside the stream", "window.fetched === 'ok\\n'").await;

    // One event ends: its `end`, and the others go on.
    media.set("grid-7", Reply::status(404));
    browser.wait_for("end of grid-7", "window.ended.includes('grid-7')").await;
    media.set_json("grid-8", r#"{"v":2}"#);
    browser.wait_for("grid-8 goes on", "window.values['grid-8'].v === 2").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_pages_live_events_view_updates_24_events_in_place() {
    let Some(browser) = Browser::launch().await else { return };
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "50ms"]).await;
    let edge_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let _edge = start_edge_at(edge_addr, &["--poller", &poller.url(), "--heartbeat-interval", "200ms"]).await;
    browser.client.goto(&format!("http://{edge_addr}/?grid")).await.unwrap();

    let cards = "Array.from(document.querySelectorAll('#grid .card'))";
    browser
        .wait_for(
            "24 cards with values and viewer counts",
            &format!(
                "{cards}.length === 24 && {cards}.every(c => c.querySelector('.value').textContent !== 'waiting…' \
                 && c.querySelector('.viewers').textContent === '1 viewer')"
            ),
        )
        .await;
    assert_eq!(browser.eval("return window.grid.opens").await, 1, "one EventSource for the grid");
    media.set_json("demo-5", r#"{"status":"live","version":42}"#);
    let card = |n: u32| format!("{cards}[{n}]");
    browser
        .wait_for(
            "an update in place",
            &format!("{}.querySelector('.value').textContent === 'live · v42'", card(4)),
        )
        .await;
    media.set("demo-5", Reply::status(404));
    browser.wait_for("the ended badge", &format!("{}.classList.contains('ended')", card(4))).await;
    media.set("demo-6", Reply::status(500));
    browser.wait_for("the stale badge", &format!("{}.classList.contains('stale')", card(5))).await;
    browser.close().await;
}
