//! Scenario `hints`: how long a change at the media service takes to reach
//! browsers with regular polls alone, a change hint, or a direct publish
//! (issue 16). The media service is served here, so the harness knows the
//! instant of each change and stamps it as `served_at_ms`: the load
//! generator's latencies are then "change → browser". One real poller and
//! one real edge run as processes; all variants run in one session.

use crate::{
    arrivals::{self, Arrivals},
    httpc, procstat,
    push::LoadArgs,
    report::{self, Report},
    sse_load::{self, Counters, Load, Plan, micros},
    stack::{self, BinArgs},
};
use anyhow::{Context, bail, ensure};
use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};
use tokio::{net::TcpListener, task::JoinSet, time::Instant};

/// The one event every browser watches.
const EVENT: &str = "hinted-1";
/// Targets from the issue.
const TARGET_HINT_P99_MS: f64 = 100.0;
/// The poller's default `--min-hint-gap`: a hint's poll waits until this
/// long after the previous hint's poll.
const HINT_GAP: Duration = Duration::from_millis(250);
/// How long a POST to the poller may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the harness looks whether every browser has a change.
const CHECK_EVERY: Duration = Duration::from_millis(2);

#[derive(Debug, clap::Args, serde::Serialize)]
pub struct Args {
    /// SSE browsers, all on one event, on one edge.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=18_000))]
    browsers: u32,

    /// Changes made in each variant.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    changes: u32,

    /// The poller's --interval.
    #[arg(long, default_value = "5s", value_parser = crate::push::at_least_1s)]
    #[serde(rename = "interval_s", serialize_with = "crate::report::secs")]
    interval: Duration,

    /// Variants, in order: `none` (regular polls only), `hint` (empty POST:
    /// poll now), `publish` (POST of the new document).
    #[arg(long, value_delimiter = ',', default_value = "none,hint,publish", value_parser = parse_variant)]
    variants: Vec<Variant>,

    /// Shortest wait before a change (after the previous one reached every
    /// browser): waits are uniform in `[min-change-gap, interval)`. The
    /// poller holds a hint's poll until `--min-hint-gap` (250 ms) after the
    /// previous hint's poll, so shorter waits measure that coalescing.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    #[serde(rename = "min_change_gap_s", serialize_with = "crate::report::secs")]
    min_change_gap: Duration,

    /// Seed of the random waits before changes [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,

    #[command(flatten)]
    load: LoadArgs,

    #[command(flatten)]
    bins: BinArgs,
}

/// What the media service does after changing the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    None,
    Hint,
    Publish,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::None => "no hint",
            Self::Hint => "hint",
            Self::Publish => "publish",
        }
    }
}

fn parse_variant(s: &str) -> Result<Variant, String> {
    match s.trim() {
        "none" => Ok(Variant::None),
        "hint" => Ok(Variant::Hint),
        "publish" => Ok(Variant::Publish),
        other => Err(format!("{other:?}: one of none, hint, publish")),
    }
}

/// The media service's document for [`EVENT`]: a handle over the current
/// version, changed by the harness and read by the routes.
#[derive(Clone)]
struct Media {
    doc: Arc<Mutex<Doc>>,
}

#[derive(Clone)]
struct Doc {
    version: u64,
    /// Unix ms of the change that made this version (also in the body).
    changed_at_ms: u64,
    body: String,
}

impl Doc {
    fn new(version: u64, changed_at_ms: u64) -> Self {
        let body = format!(r#"{{"event":"{EVENT}","version":{version},"served_at_ms":{changed_at_ms}}}"#);
        Self { version, changed_at_ms, body }
    }

    fn etag(&self) -> String {
        format!("\"v{}\"", self.version)
    }
}

impl Media {
    fn new() -> Self {
        Self { doc: Arc::new(Mutex::new(Doc::new(0, sse_load::unix_micros() / 1000))) }
    }

    fn current(&self) -> Doc {
        // Replacing a value cannot leave it half-updated.
        self.doc.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Makes a new version, stamped now, and returns it.
    fn change(&self) -> Doc {
        let mut doc = self.doc.lock().unwrap_or_else(PoisonError::into_inner);
        // Two changes within one ms would share a stamp: keep stamps distinct.
        let now_ms = (sse_load::unix_micros() / 1000).max(doc.changed_at_ms + 1);
        *doc = Doc::new(doc.version + 1, now_ms);
        doc.clone()
    }

    fn app(&self) -> Router {
        Router::new().route("/live/{event_id}", get(live)).with_state(self.clone())
    }
}

async fn live(State(media): State<Media>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if id != EVENT {
        return StatusCode::NOT_FOUND.into_response();
    }
    let doc = media.current();
    let etag = doc.etag();
    let etag_value = HeaderValue::from_str(&etag).expect("an ASCII ETag");
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response();
    }
    let json = HeaderValue::from_static("application/json");
    (StatusCode::OK, [(header::CONTENT_TYPE, json), (header::ETAG, etag_value)], doc.body).into_response()
}

/// SplitMix64: reproducible random waits from `--seed`, without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, d)`.
    fn below(&mut self, d: Duration) -> Duration {
        d.mul_f64((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// Uniform in `[low, high)` (`low` if the range is empty).
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        low + self.below(high.saturating_sub(low))
    }
}

/// One change and how it reached the browsers.
#[derive(Debug, Clone, Copy)]
struct Change {
    stamp_ms: u64,
    /// Browsers that had it when the harness stopped waiting.
    reached: u32,
    /// µs from the change to the first and to the last browser.
    first_us: u64,
    last_us: u64,
    /// Round trip of the POST to the poller (hint, publish).
    post_us: Option<u64>,
    /// The random wait before it, after the previous change was delivered.
    wait: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    ensure!(!args.variants.is_empty(), "no variant to run");
    let seed = args.seed.unwrap_or_else(sse_load::unix_micros);
    let mut rng = Rng(seed);

    // The media service, in-process, polls counted by the arrivals log.
    let mut background = JoinSet::new();
    let media = Media::new();
    let arrivals = Arrivals::new(|id| (id == EVENT).then_some(0));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("binding the media service")?;
    let media_addr = listener.local_addr().context("media service address")?;
    let app = arrivals.wrap(media.app());
    background.spawn(async move { axum::serve(listener, app).await });

    // The poller's --publish-token-file, removed when dropped.
    let token = format!("bench-{:x}-{:x}", sse_load::unix_micros(), std::process::id());
    let mut token_file = tempfile::NamedTempFile::new().context("creating the token file")?;
    writeln!(token_file, "{token}").context("writing the token file")?;
    let poller_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, stack::free_port()?));
    let token_path = token_file.path().to_string_lossy().into_owned();
    let mut poller = stack::poller_at(
        &args.bins,
        poller_addr,
        media_addr,
        args.interval,
        &["--publish-token-file", token_path.as_str()],
    )
    .await?;
    let mut edge = stack::edge(&args.bins, &[poller.addr]).await?;
    let pids = [poller.pid(), edge.pid(), std::process::id()];

    let changes_per_variant = u64::from(args.changes);
    let limit = deliver_limit(args.interval);
    let budget = (args.interval + limit) * u32::try_from(changes_per_variant).unwrap_or(u32::MAX);
    let deadline = Instant::now() + Duration::from_secs(60) + budget * args.variants.len() as u32;
    let mut plan = Plan::default();
    let path = format!("/live/{EVENT}/stream");
    for _ in 0..args.browsers {
        plan.push(edge.addr, &path, 0);
    }
    let load = Load::start(plan, args.load.config(deadline));
    let ramp = args.load.ramp(u64::from(args.browsers)) + Duration::from_secs(20);
    let Some(ready_after) = load.wait_ready(u64::from(args.browsers), ramp).await else {
        bail!(
            "only {} of {} browsers had their first event after {ramp:?}",
            load.stats().counters().ready,
            args.browsers
        );
    };
    // The first regular poll after the browsers arrived is not part of any
    // variant: let the poll cycle settle.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut runs = Vec::new();
    let hint = Hinter { poller: poller.addr, token: &token };
    let session = Session { args: &args, media: &media, arrivals: &arrivals, load: &load, hint, pids, limit };
    for &variant in &args.variants {
        eprintln!("hints: variant {}", variant.name());
        let run = session.measure(variant, &mut rng).await;
        poller.child.ensure_running()?;
        edge.child.ensure_running()?;
        runs.push(run?);
    }
    // Late repeats (a regular poll re-publishing a value, say) get time to show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = load.stats().clone();
    let (all_updates, _) = stats.updates_served(0, u64::MAX);
    let error_kinds = stats.error_kinds();
    let stuck = load.stop(Duration::from_secs(5)).await;
    let poller_cmd = poller.cmd.clone();
    let edge_cmd = edge.cmd.clone();
    edge.stop().await?;
    poller.stop().await?;
    background.shutdown().await;

    // Deliveries beyond one per browser, per variant (by the change's stamp).
    for f in &mut runs {
        f.repeats = (f.stamps.iter())
            .filter_map(|&stamp| all_updates.iter().find(|u| u.served_at_ms == stamp))
            .map(|u| u64::from(u.reached.saturating_sub(args.browsers)))
            .sum();
    }
    let params = Params {
        args: &args,
        seed,
        cores: report::cores(),
        media: format!("http://{media_addr}/live/{EVENT}"),
        poller_cmd,
        edge_cmd,
        browsers_ready_s: ready_after.as_secs_f64(),
    };
    let mut report = report(params, runs, &args)?;
    for (kind, n) in error_kinds {
        report.note(format!("browser error (whole run): {kind} x{n}"));
    }
    if stuck > 0 {
        report.note(format!("{stuck} browser tasks did not stop within 5 s and were aborted"));
    }
    Ok(report)
}

/// How long to wait for one change to reach every browser: the next
/// regular poll (an interval, plus its 5 % jitter) and a generous delivery.
fn deliver_limit(interval: Duration) -> Duration {
    interval.mul_f64(1.1) + Duration::from_secs(2)
}

/// Posts change hints to the poller.
struct Hinter<'a> {
    poller: SocketAddr,
    token: &'a str,
}

impl Hinter<'_> {
    /// `POST /events/{EVENT}/changed` with `body`; its round trip, or why it
    /// failed (anything but 202).
    async fn post(&self, body: &str) -> Result<u64, String> {
        let started = Instant::now();
        let auth = format!("Bearer {}", self.token);
        let path = format!("/events/{EVENT}/changed");
        match httpc::post_json(self.poller, &path, &[("Authorization", &auth)], body, POST_TIMEOUT).await {
            Ok((202, _)) => Ok(micros(started.elapsed())),
            Ok((status, answer)) => Err(format!("{status} {}", answer.trim())),
            Err(e) => Err(format!("{e:#}")),
        }
    }
}

/// What every variant runs against.
struct Session<'a> {
    args: &'a Args,
    media: &'a Media,
    arrivals: &'a Arrivals,
    load: &'a Load,
    hint: Hinter<'a>,
    pids: [u32; 3],
    /// How long one change may take to reach every browser.
    limit: Duration,
}

impl Session<'_> {
    async fn measure(&self, variant: Variant, rng: &mut Rng) -> anyhow::Result<Figures> {
        let Self { args, media, arrivals, load, hint, pids, limit } = self;
        let limit = *limit;
        let stats = load.stats();
        let counters_start = stats.counters();
        stats.latency.reset();
        let cpu0 = procstat::Cpu::read(pids)?;
        let started = Instant::now();
        let arrivals_from = arrivals.offset_us(started.into_std());
        let mut changes = Vec::new();
        let mut post_failures = Vec::new();
        for _ in 0..args.changes {
            let wait = rng.between(args.min_change_gap, args.interval);
            tokio::time::sleep(wait).await;
            let doc = media.change();
            let post_us = match variant {
                Variant::None => None,
                Variant::Hint => Some(hint.post("").await),
                Variant::Publish => Some(hint.post(&doc.body).await),
            }
            .and_then(|r| r.map_err(|e| post_failures.push(e)).ok());
            // Wait until every browser has it, or the limit.
            let waited = Instant::now() + limit;
            let change = loop {
                let (updates, _) = stats.updates_served(doc.changed_at_ms, doc.changed_at_ms + 1);
                let reached = updates.first().map_or(0, |u| u.reached);
                if reached >= args.browsers || Instant::now() >= waited {
                    let (first_us, last_us) = updates.first().map_or((0, 0), |u| (u.first_us, u.last_us));
                    break Change { stamp_ms: doc.changed_at_ms, reached, first_us, last_us, post_us, wait };
                }
                tokio::time::sleep(CHECK_EVERY).await;
            };
            changes.push(change);
        }
        let cpu = procstat::Cpu::read(pids)?.since(&cpu0);
        let wall = started.elapsed();
        let (log, _) = arrivals.snapshot();
        let polls = arrivals::window(&log, arrivals_from, micros(wall)).len() as u64;
        let (each, wall) = (stats.latency.snapshot(), wall.as_secs_f64());
        let last = report::sorted(changes.iter().map(|c| c.last_us));
        let first = report::sorted(changes.iter().map(|c| c.first_us));
        let posts = report::sorted(changes.iter().filter_map(|c| c.post_us));
        let apart = report::sorted(changes.iter().filter(|c| c.wait >= HINT_GAP).map(|c| c.last_us));
        let pct = |x: f64| 100.0 * x / wall.max(f64::MIN_POSITIVE);
        Ok(Figures {
            column: variant.name(),
            changes: changes.len(),
            reached_all: changes.iter().filter(|c| c.reached >= args.browsers).count(),
            last_p50_ms: report::quantile_ms(&last, 0.5),
            last_p99_ms: report::quantile_ms(&last, 0.99),
            last_max_ms: report::quantile_ms(&last, 1.0),
            last_mean_ms: (!last.is_empty())
                .then(|| last.iter().sum::<u64>() as f64 / last.len() as f64 / 1000.0),
            first_p50_ms: report::quantile_ms(&first, 0.5),
            within_hint_gap: changes.iter().filter(|c| c.wait < HINT_GAP).count(),
            apart_max_ms: report::quantile_ms(&apart, 1.0),
            deliveries: each.count,
            each_p50_ms: sse_load::ms(&each, 0.5),
            each_p99_ms: sse_load::ms(&each, 0.99),
            each_max_ms: (each.count > 0).then(|| each.max as f64 / 1000.0),
            repeats: 0,
            polls,
            polls_per_change: polls as f64 / changes.len().max(1) as f64,
            posts_ok: posts.len(),
            post_failures: post_failures.len(),
            post_p50_ms: report::quantile_ms(&posts, 0.5),
            post_max_ms: report::quantile_ms(&posts, 1.0),
            counters: stats.counters().since(&counters_start),
            wall_s: wall,
            poller_pct: pct(cpu.of(0)),
            edge_pct: pct(cpu.of(1)),
            harness_pct: pct(cpu.of(2)),
            others_pct: pct(cpu.others()),
            variant,
            stamps: changes.iter().map(|c| c.stamp_ms).collect(),
            failures: post_failures,
        })
    }
}

/// The parameters shared by the variants.
#[derive(Serialize)]
struct Params<'a> {
    args: &'a Args,
    /// The seed of the random waits (`--seed` or the clock).
    seed: u64,
    cores: usize,
    /// The media service, in the harness.
    media: String,
    poller_cmd: String,
    edge_cmd: String,
    /// Every browser had its first event after.
    browsers_ready_s: f64,
}

/// One variant's figures: a column.
#[derive(Serialize)]
struct Figures {
    column: &'static str,
    /// Change to the last browser, one figure per change (nearest rank: p99
    /// is the max below 100 changes).
    changes: usize,
    reached_all: usize,
    last_p50_ms: Option<f64>,
    last_p99_ms: Option<f64>,
    last_max_ms: Option<f64>,
    last_mean_ms: Option<f64>,
    first_p50_ms: Option<f64>,
    /// Changes less than 250 ms after the previous one was delivered, and
    /// the max over the others.
    within_hint_gap: usize,
    apart_max_ms: Option<f64>,
    /// Change to each browser, every delivery; repeats are deliveries
    /// beyond one per browser and change.
    deliveries: u64,
    each_p50_ms: Option<f64>,
    each_p99_ms: Option<f64>,
    each_max_ms: Option<f64>,
    repeats: u64,
    /// Polls of the event during the variant, POSTs answered 202 and failed.
    polls: u64,
    polls_per_change: f64,
    posts_ok: usize,
    post_failures: usize,
    post_p50_ms: Option<f64>,
    post_max_ms: Option<f64>,
    /// The browsers during the variant (`open` at its end).
    counters: Counters,
    wall_s: f64,
    /// CPU during the variant, % of one core.
    poller_pct: f64,
    edge_pct: f64,
    harness_pct: f64,
    others_pct: f64,
    #[serde(skip)]
    variant: Variant,
    /// Each change's stamp, to count repeats once the run is over.
    #[serde(skip)]
    stamps: Vec<u64>,
    #[serde(skip)]
    failures: Vec<String>,
}

#[derive(Serialize)]
struct HintsFigures<'a> {
    params: Params<'a>,
    runs: Vec<Figures>,
}

fn report(params: Params<'_>, runs: Vec<Figures>, args: &Args) -> anyhow::Result<Report> {
    let title = format!(
        "livepush-bench hints: change to browser, {} browsers on one event, interval {}, {} changes per variant",
        args.browsers,
        humantime::format_duration(args.interval),
        args.changes
    );
    let mut notes = Vec::new();
    for f in runs.iter().filter(|f| f.variant != Variant::None) {
        if let Some(p99) = f.last_p99_ms {
            let verdict = if p99 < TARGET_HINT_P99_MS { "met" } else { "missed" };
            notes.push(format!(
                "target p99 change → last browser under {TARGET_HINT_P99_MS} ms: {}: {p99:.1} ms, {verdict}",
                f.column
            ));
        }
        for failure in f.failures.iter().take(5) {
            notes.push(format!("{}: POST failed: {failure}", f.column));
        }
    }
    let mut r = Report::new("hints", title, &HintsFigures { params, runs })?;
    for note in notes {
        r.note(note);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_waits_stay_below_the_bound() {
        let mut rng = Rng(7);
        let waits: Vec<Duration> = (0..1000).map(|_| rng.below(Duration::from_secs(5))).collect();
        assert!(waits.iter().all(|w| *w < Duration::from_secs(5)));
        assert!(
            waits.iter().any(|w| *w < Duration::from_secs(1))
                && waits.iter().any(|w| *w > Duration::from_secs(4))
        );
    }

    #[test]
    fn changes_get_distinct_stamps_and_etags() {
        let media = Media::new();
        let (a, b) = (media.change(), media.change());
        assert!(b.changed_at_ms > a.changed_at_ms);
        assert_ne!(a.etag(), b.etag());
        assert!(b.body.contains(&format!("\"served_at_ms\":{}", b.changed_at_ms)));
        assert_eq!(media.current().version, b.version);
    }
}
