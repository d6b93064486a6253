//! Scenario `hints`: change → browser latency with regular polls alone, a
//! change hint, or a direct publish (issue 16), all in one session against
//! a real poller and edge. The media service is served here and stamps each
//! change's instant as `served_at_ms`, which the load generator measures from.

use crate::report::{Report, cores, quantile_ms, quantiles_ms, sorted};
use crate::sse_load::{self, micros, unix_micros};
use crate::{httpc, poller, procstat, push::LoadArgs, stack};
use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::{io::Write, time::Duration};
use tokio::time::Instant;

/// The one event every browser watches.
const EVENT: &str = "hinted-1";
/// The poller's default `--min-hint-gap` between two hints' polls.
const HINT_GAP: Duration = Duration::from_millis(250);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// SSE browsers, all on one event, on one edge.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=18_000))]
    browsers: u32,
    /// Changes made in each variant.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    changes: u32,
    /// The poller's --interval.
    #[arg(long, default_value = "5s", value_parser = crate::push::at_least_1s)]
    interval: Duration,
    /// Variants, in order: `none` (regular polls only), `hint` (empty POST:
    /// poll now), `publish` (POST of the new document).
    #[arg(long, value_delimiter = ',', default_value = "none,hint,publish", value_parser = ["none", "hint", "publish"])]
    variants: Vec<String>,
    /// Waits before a change (after the previous one reached every browser)
    /// are uniform in `[min-change-gap, interval)`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    min_change_gap: Duration,
    /// Seed of the random waits before changes [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    bins: stack::BinArgs,
}

/// The media service: its document's (version, Unix ms of the change that
/// made it), and the polls it answered.
type Media = Arc<(Mutex<(u64, u64)>, AtomicU64)>;

fn body((version, stamp_ms): (u64, u64)) -> String {
    format!(r#"{{"event":"{EVENT}","version":{version},"served_at_ms":{stamp_ms}}}"#)
}

/// `GET /live/hinted-1` (other ids are not found), with ETags as media-sim's.
async fn live(State(media): State<Media>, headers: HeaderMap) -> Response {
    media.1.fetch_add(1, Relaxed);
    let doc = *media.0.lock().unwrap();
    let etag = format!("\"v{}\"", doc.0);
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    ([(header::CONTENT_TYPE, "application/json".to_owned()), (header::ETAG, etag)], body(doc)).into_response()
}

/// One variant's figures: change → last browser, one per change (nearest
/// rank: p99 is the max below 100 changes), change → each browser; CPU in %
/// of one core.
#[derive(Serialize)]
struct Run {
    column: String,
    changes: usize,
    reached_all: usize,
    last_p50_p99_max_ms: Vec<Option<f64>>,
    last_mean_ms: f64,
    first_p50_ms: Option<f64>,
    /// Changes less than 250 ms after the previous one was delivered, and the max over the others.
    within_hint_gap: usize,
    apart_max_ms: Option<f64>,
    deliveries: u64,
    each_p50_p99_max_ms: Vec<Option<f64>>,
    /// Deliveries beyond one per browser and change (filled in last, by the changes' stamps).
    repeats: u64,
    #[serde(skip)]
    stamps: Vec<u64>,
    /// Polls of the event during the variant; POSTs answered 202 and failed.
    polls: u64,
    posts_ok: usize,
    post_failures: u32,
    post_p50_max_ms: Vec<Option<f64>>,
    /// The browsers during the variant (`open` at its end).
    counters: sse_load::Counters,
    wall_s: f64,
    poller_edge_others_pct: [f64; 3],
}

/// SplitMix64: reproducible waits from `--seed`, uniform in `[low, high)`.
fn between(state: &mut u64, low: Duration, high: Duration) -> Duration {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    low + high.saturating_sub(low).mul_f64(((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64)
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let seed = args.seed.unwrap_or_else(unix_micros);
    let mut rng = seed;
    let media: Media = Arc::new((Mutex::new((0, unix_micros() / 1000)), AtomicU64::new(0)));
    let app = axum::Router::new().route(&format!("/live/{EVENT}"), axum::routing::get(live));
    let (media_addr, _server) = poller::serve(app.with_state(media.clone())).await?;

    // The poller's --publish-token-file, removed when dropped.
    let token = format!("bench-{:x}-{:x}", unix_micros(), std::process::id());
    let mut token_file = tempfile::NamedTempFile::new().context("creating the token file")?;
    writeln!(token_file, "{token}").context("writing the token file")?;
    let flags = ["--publish-token-file", &token_file.path().to_string_lossy()];
    let mut poller =
        stack::poller(&args.bins, stack::free_addr()?, media_addr, args.interval, &flags).await?;
    let mut edge = stack::edge(&args.bins, &[poller.addr]).await?;
    let pids = [poller.pid(), edge.pid(), std::process::id()];

    // A change may wait for the next regular poll (an interval, plus its
    // 5 % jitter) and a generous delivery.
    let limit = args.interval.mul_f64(1.1) + Duration::from_secs(2);
    let budget = (args.interval + limit) * args.changes * args.variants.len() as u32;
    let mut plan = sse_load::Plan::default();
    (0..args.browsers).for_each(|_| plan.push(edge.addr, &format!("/live/{EVENT}/stream"), 0));
    let load =
        sse_load::Load::start(plan, args.load.config(Instant::now() + Duration::from_secs(60) + budget));
    let ramp = args.load.ramp(u64::from(args.browsers)) + Duration::from_secs(20);
    let ready = load.wait_ready(u64::from(args.browsers), ramp).await;
    ready.with_context(|| format!("not every browser had a first event within {ramp:?}"))?;
    // Not part of any variant: the first regular poll after the browsers came.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (path, auth) = (format!("/events/{EVENT}/changed"), format!("Bearer {token}"));
    let (mut runs, mut notes) = (Vec::new(), Vec::new());
    for variant in &args.variants {
        let column = if variant == "none" { "no hint" } else { variant };
        eprintln!("hints: variant {column}");
        let stats = load.stats();
        let (counters0, cpu0, polls0) =
            (stats.counters(), procstat::Cpu::read(&pids)?, media.1.load(Relaxed));
        stats.latency.reset();
        let started = Instant::now();
        // Per change: browsers reached, µs to the first and the last, the
        // POST's round trip, the wait before it; and its stamp.
        let (mut changes, mut stamps, mut failures) = (Vec::new(), Vec::new(), 0);
        for _ in 0..args.changes {
            let wait = between(&mut rng, args.min_change_gap, args.interval);
            tokio::time::sleep(wait).await;
            // A new version, stamped now (two changes in one ms get distinct stamps).
            let doc = {
                let mut doc = media.0.lock().unwrap();
                *doc = (doc.0 + 1, (unix_micros() / 1000).max(doc.1 + 1));
                *doc
            };
            let mut post_us = None;
            if variant != "none" {
                let body = if variant == "publish" { body(doc) } else { String::new() };
                let (posted, headers) = (Instant::now(), [("Authorization", auth.as_str())]);
                match httpc::post_json(poller.addr, &path, &headers, &body, Duration::from_secs(5)).await {
                    Ok((202, _)) => post_us = Some(micros(posted.elapsed())),
                    answer if failures < 5 => notes.push(format!("{column}: POST failed: {answer:?}")),
                    _ => {}
                }
                failures += u32::from(post_us.is_none());
            }
            let give_up = Instant::now() + limit;
            let update = loop {
                let update = stats.updates_served(doc.1, doc.1 + 1).0.first().copied();
                if update.is_some_and(|u| u.reached >= args.browsers) || Instant::now() >= give_up {
                    break update;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            let (reached, first, last) = update.map_or((0, 0, 0), |u| (u.reached, u.first_us, u.last_us));
            changes.push((reached, first, last, post_us, wait));
            stamps.push(doc.1);
        }
        let cpu = procstat::Cpu::read(&pids)?.since(&cpu0);
        let wall = started.elapsed().as_secs_f64();
        let each = stats.latency.snapshot();
        let last = sorted(changes.iter().map(|c| c.2));
        let posts = sorted(changes.iter().filter_map(|c| c.3));
        let pct = |x: f64| 100.0 * x / wall.max(f64::MIN_POSITIVE);
        runs.push(Run {
            column: column.to_owned(),
            changes: changes.len(),
            reached_all: changes.iter().filter(|c| c.0 >= args.browsers).count(),
            last_p50_p99_max_ms: quantiles_ms(&last, &[0.5, 0.99, 1.0]),
            last_mean_ms: last.iter().sum::<u64>() as f64 / last.len() as f64 / 1e3,
            first_p50_ms: quantile_ms(&sorted(changes.iter().map(|c| c.1)), 0.5),
            within_hint_gap: changes.iter().filter(|c| c.4 < HINT_GAP).count(),
            apart_max_ms: quantile_ms(&sorted(changes.iter().filter(|c| c.4 >= HINT_GAP).map(|c| c.2)), 1.0),
            deliveries: each.count,
            // The histogram's 1.0 quantile is its exact maximum.
            each_p50_p99_max_ms: sse_load::ms(&each, &[0.5, 0.99, 1.0]),
            repeats: 0,
            stamps,
            polls: media.1.load(Relaxed) - polls0,
            posts_ok: posts.len(),
            post_failures: failures,
            post_p50_max_ms: quantiles_ms(&posts, &[0.5, 1.0]),
            counters: stats.counters().since(&counters0),
            wall_s: wall,
            poller_edge_others_pct: [cpu.of(0), cpu.of(1), cpu.others()].map(pct),
        });
        poller.child.ensure_running()?;
        edge.child.ensure_running()?;
    }
    // Late repeats (a regular poll re-publishing a value, say) get time to
    // show: deliveries beyond one per browser, by the change's stamp.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = load.stats().clone();
    let (all_updates, _) = stats.updates_served(0, u64::MAX);
    for run in &mut runs {
        let updates = run.stamps.iter().filter_map(|&s| all_updates.iter().find(|u| u.served_at_ms == s));
        run.repeats = updates.map(|u| u64::from(u.reached.saturating_sub(args.browsers))).sum();
    }
    load.stop(Duration::from_secs(5)).await;
    let params = serde_json::json!({"seed": seed, "cores": cores(), "poller_cmd": poller.cmd,
        "edge_cmd": edge.cmd});
    edge.stop().await?;
    poller.stop().await?;

    let (n, every, changes) = (args.browsers, humantime::format_duration(args.interval), args.changes);
    let title = format!(
        "livepush-bench hints: change to browser, {n} browsers on one event, interval {every}, {changes} changes per variant"
    );
    let mut report = Report::new("hints", title, &serde_json::json!({"params": params, "runs": runs}))?;
    notes.extend(
        stats.error_kinds().iter().map(|(kind, n)| format!("browser error (whole run): {kind} x{n}")),
    );
    notes.into_iter().for_each(|n| _ = report.note(n));
    Ok(report)
}
