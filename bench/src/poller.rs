//! Scenario `poller`: one real poller process watching many events against an
//! in-process media-sim, each event held by one gRPC subscriber: what the
//! media service and the poller's host pay for N events at interval I. The
//! poller is its own process so `/proc` gives its CPU and RSS alone; arrivals
//! are timed here, as the media service sees them. `--batch-size` compares
//! polling modes in one session, a fresh poller each (a batch request counts
//! as one request, each of its ids as one poll).

use crate::{
    arrivals::{self, Arrivals},
    child::Child,
    procstat,
    push::event_id,
    report::{Report, cores, mib},
    sse_load::micros,
    stack::{self, BinArgs, free_port},
    subscribers::Fleet,
};
use anyhow::{Context, bail};
use serde::Serialize;
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};
use tokio::{net::TcpListener, task::JoinSet, time::Instant};
use tonic::transport::{Channel, Endpoint};

/// gRPC streams per connection; the poller allows 10,000 by default
/// (`--max-streams`), an edge would hold a few thousand.
const STREAMS_PER_CHANNEL: usize = 2_500;
/// How long the poller may take to accept gRPC connections.
const STARTUP_LIMIT: Duration = Duration::from_secs(15);
/// How long every stream may take to get its first value (plus two intervals).
const WARMUP_LIMIT: Duration = Duration::from_secs(60);
/// Slots for the burstiness figure.
const SLOT: Duration = Duration::from_millis(100);
/// Parts of the interval for the spread figure (10% each when even).
const PHASE_BUCKETS: usize = 10;
/// The poller's graceful-shutdown bound, kept short: only the run matters.
const POLLER_SHUTDOWN_TIMEOUT: &str = "2s";

#[derive(Debug, clap::Args, serde::Serialize)]
pub struct Args {
    /// Events watched, one gRPC stream each (ids ev-000000, ev-000001, ...).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    events: u32,

    /// The poller's --interval.
    #[arg(long, default_value = "5s", value_parser = at_least_1ms)]
    #[serde(rename = "interval_s", serialize_with = "crate::report::secs")]
    interval: Duration,

    /// Length of the measurement window, after warm-up.
    #[arg(long, default_value = "30s", value_parser = at_least_slot)]
    #[serde(rename = "duration_s", serialize_with = "crate::report::secs")]
    duration: Duration,

    /// How often media-sim's data changes (every poll after a change gets a
    /// 200, otherwise a 304).
    #[arg(long, default_value = "5s", value_parser = at_least_1ms)]
    #[serde(rename = "change_every_s", serialize_with = "crate::report::secs")]
    change_every: Duration,

    /// Subscribe calls awaiting their answer at once, per connection. Above
    /// roughly 130 the poller's HTTP/2 layer (h2 0.4.20, default windows) may
    /// close the connection with ENHANCE_YOUR_CALM during the subscribe burst.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pending_subscribes: u32,

    /// Polling modes to measure, one after the other with a fresh poller:
    /// `off` (one request per event) or a batch size N (the poller gets
    /// `--media-batch-url` and `--batch-size N`); e.g. `off,100`.
    #[arg(long, value_delimiter = ',', default_value = "off", value_parser = parse_mode)]
    batch_size: Vec<Mode>,

    #[command(flatten)]
    bins: BinArgs,
}

/// How the poller asks the media service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    /// One `GET /live/{id}` per event per interval.
    Single,
    /// `GET /batch?ids=...` with at most this many ids.
    Batch(u32),
}

impl Mode {
    fn column(self) -> String {
        match self {
            Self::Single => "one per event".to_owned(),
            Self::Batch(n) => format!("batch {n}"),
        }
    }

    /// Requests per interval if every event is polled once per interval.
    fn requests_per_interval(self, events: u32) -> f64 {
        match self {
            Self::Single => f64::from(events),
            Self::Batch(n) => f64::from(events.div_ceil(n)),
        }
    }
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s.trim() {
        "off" => Ok(Mode::Single),
        n => match n.parse::<u32>() {
            Ok(n) if (1..=media_sim::sim::MAX_BATCH).contains(&(n as usize)) => Ok(Mode::Batch(n)),
            _ => Err(format!("{n:?}: `off` or a batch size from 1 to {}", media_sim::sim::MAX_BATCH)),
        },
    }
}

fn at_least_1ms(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(d)
}

fn at_least_slot(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < SLOT {
        return Err(format!("must be at least {}", humantime::format_duration(SLOT)));
    }
    Ok(d)
}

fn event_index(id: &str) -> Option<u32> {
    id.strip_prefix("ev-")?.parse().ok()
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    // Background tasks (media-sim) are aborted when this set is dropped.
    let mut background = JoinSet::new();
    let arrivals = Arrivals::new(event_index);
    let sim = media_sim::Sim::new(args.change_every, false);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("binding media-sim")?;
    let sim_addr = listener.local_addr().context("media-sim address")?;
    let app = arrivals.wrap(media_sim::app(sim.clone()));
    background.spawn(async move { axum::serve(listener, app).await });

    let mut runs = Vec::new();
    for &mode in &args.batch_size {
        eprintln!("poller: {}", mode.column());
        runs.push(measure(&args, mode, sim_addr, &arrivals).await?);
    }
    background.shutdown().await;

    let columns: Vec<(String, Vec<String>)> =
        runs.iter().map(|r| (r.column.clone(), r.notes.clone())).collect();
    let mut report = report(&args, runs)?;
    let (_, dropped) = arrivals.snapshot();
    if dropped > 0 {
        report.note(format!("{dropped} arrivals beyond {} were not recorded", arrivals::MAX_ARRIVALS));
    }
    for (column, notes) in columns {
        for note in notes {
            report.note(format!("{column}: {note}"));
        }
    }
    Ok(report)
}

/// One polling mode's run: a fresh poller against the shared media-sim.
async fn measure(
    args: &Args,
    mode: Mode,
    sim_addr: SocketAddr,
    arrivals: &Arrivals,
) -> anyhow::Result<Figures> {
    let grpc_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let mut poller_args = vec![
        "--listen".to_owned(),
        grpc_addr.to_string(),
        "--media-url".to_owned(),
        format!("http://{sim_addr}/live/{{event_id}}"),
        "--interval".to_owned(),
        humantime::format_duration(args.interval).to_string(),
        "--max-events".to_owned(),
        args.events.max(100_000).to_string(),
        "--shutdown-timeout".to_owned(),
        POLLER_SHUTDOWN_TIMEOUT.to_owned(),
    ];
    if let Mode::Batch(n) = mode {
        poller_args.extend([
            "--media-batch-url".to_owned(),
            format!("http://{sim_addr}/batch?ids={{event_ids}}"),
            "--batch-size".to_owned(),
            n.to_string(),
        ]);
    }
    let (mut poller, poller_cmd) = stack::spawn(&args.bins, "poller", poller_args, None)?;
    let pid = poller.pid();

    let channels = connect_channels(&format!("http://{grpc_addr}"), args.events, &mut poller).await?;
    let idle = procstat::sample(pid)?;

    // Every stream task stops by itself at this deadline, whatever happens.
    let hard_deadline = Instant::now() + WARMUP_LIMIT + 3 * args.interval + args.duration + SLOT * 100;
    let subscribe_start = Instant::now();
    let fleet = Fleet::start(
        &channels,
        (0..args.events).map(event_id).collect(),
        STREAMS_PER_CHANNEL,
        args.pending_subscribes as usize,
        hard_deadline,
    );
    let warm_limit = subscribe_start + WARMUP_LIMIT + 2 * args.interval;
    while fleet.started() < u64::from(args.events) {
        ensure_healthy(&fleet, &mut poller)?;
        if Instant::now() >= warm_limit {
            bail!(
                "only {} of {} streams had a first update after {:?}",
                fleet.started(),
                args.events,
                warm_limit - subscribe_start
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_values_after = subscribe_start.elapsed();
    tokio::time::sleep(args.interval).await;
    ensure_healthy(&fleet, &mut poller)?;

    let warm = procstat::sample(pid)?;
    let cpu0 = procstat::Cpu::read(&[pid, std::process::id()])?;
    let window_start = Instant::now();
    let updates_start = fleet.updates();
    tokio::time::sleep_until(window_start + args.duration).await;
    let cpu_used = procstat::Cpu::read(&[pid, std::process::id()])?.since(&cpu0);
    let (end, me_end) = (procstat::sample(pid)?, procstat::sample(std::process::id())?);
    let elapsed = window_start.elapsed();
    let updates = fleet.updates() - updates_start;
    let (ended, failed) = fleet.finished();
    let first_error = fleet.first_error();
    poller.ensure_running()?;

    let stuck = fleet.stop(Duration::from_secs(5)).await;
    drop(channels);
    let exit = poller.stop().await?;

    let (log, _) = arrivals.snapshot();
    let window = arrivals::window(&log, arrivals.offset_us(window_start.into_std()), micros(args.duration));
    let mut notes = Vec::new();
    if ended + failed > 0 {
        notes.push(format!(
            "{ended} streams ended and {failed} failed during the window (first error: {})",
            first_error.as_deref().unwrap_or("none")
        ));
    }
    if stuck > 0 {
        notes.push(format!("{stuck} stream tasks did not stop within 5 s and were aborted"));
    }
    if !exit.success() {
        notes.push(format!("the poller exited with {exit} after SIGTERM"));
    }
    let secs = args.duration.as_secs_f64();
    let span = micros(args.duration);
    let requests = arrivals::requests(&window);
    let per_event = arrivals::per_event_counts(&window, args.events);
    let status = |code: u16| window.iter().filter(|w| w.status == code).count() as u64;
    let (ok, not_modified) = (status(200), status(304));
    let slots = arrivals::slot_counts(&requests, span, micros(SLOT));
    let slot_mean = slots.iter().sum::<u64>() as f64 / slots.len().max(1) as f64;
    let slot_max = slots.iter().copied().max().unwrap_or(0);
    let (cpu, me_cpu) = (cpu_used.of(0), cpu_used.of(1));
    let wall = elapsed.as_secs_f64();
    let n = requests.len() as u64;
    let id_polls = window.len() as u64;
    let rps = n as f64 / secs;
    let expected = mode.requests_per_interval(args.events) / args.interval.as_secs_f64();
    let shares = arrivals::phase_shares(&requests, span, micros(args.interval), PHASE_BUCKETS);
    let share = |f: fn(f64, f64) -> f64| shares.as_ref().map(|s| 100.0 * fold(s, f));
    Ok(Figures {
        column: mode.column(),
        first_values_s: first_values_after.as_secs_f64(),
        requests: n,
        batch_requests: if matches!(mode, Mode::Batch(_)) { n } else { 0 },
        requests_per_s: rps,
        expected_per_s: expected,
        ratio: rps / expected,
        id_polls,
        ids_per_request: id_polls as f64 / n.max(1) as f64,
        status_200: ok,
        status_304: not_modified,
        status_other: id_polls - ok - not_modified,
        polls_per_event_per_interval: id_polls as f64
            / f64::from(args.events)
            / (secs / args.interval.as_secs_f64()),
        event_polls_min: min_or_zero(&per_event),
        event_polls_max: per_event.iter().copied().max().unwrap_or(0),
        events_unpolled: per_event.iter().filter(|&&c| c == 0).count(),
        phase_share_min_pct: share(f64::min),
        phase_share_max_pct: share(f64::max),
        slot_mean,
        slot_min: min_or_zero(&slots),
        slot_max,
        slot_max_over_mean: slot_max as f64 / slot_mean.max(f64::MIN_POSITIVE),
        updates,
        updates_per_s: updates as f64 / wall,
        poller_cpu_s: cpu,
        poller_cpu_pct: 100.0 * cpu / wall,
        poller_cpu_us_per_poll: 1e6 * cpu / id_polls.max(1) as f64,
        poller_cpu_us_per_request: 1e6 * cpu / n.max(1) as f64,
        poller_rss_idle_mib: mib(idle.rss_bytes),
        poller_rss_warm_mib: mib(warm.rss_bytes),
        poller_rss_end_mib: mib(end.rss_bytes),
        poller_rss_peak_mib: mib(end.peak_rss_bytes),
        poller_rss_per_event_kib: warm.rss_bytes.saturating_sub(idle.rss_bytes) as f64
            / 1024.0
            / f64::from(args.events),
        harness_cpu_pct: 100.0 * me_cpu / wall,
        harness_rss_end_mib: mib(me_end.rss_bytes),
        others_pct: 100.0 * cpu_used.others() / wall,
        mode,
        poller_cmd,
        notes,
    })
}

/// Waits until the poller accepts gRPC, then opens one connection per
/// [`STREAMS_PER_CHANNEL`] streams.
async fn connect_channels(url: &str, events: u32, poller: &mut Child) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("poller URL {url}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    let deadline = Instant::now() + STARTUP_LIMIT;
    let first = loop {
        poller.ensure_running()?;
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(e) if Instant::now() >= deadline => {
                return Err(e)
                    .with_context(|| format!("poller not accepting on {url} after {STARTUP_LIMIT:?}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut channels = vec![first];
    while channels.len() * STREAMS_PER_CHANNEL < events as usize {
        channels
            .push(endpoint.connect().await.with_context(|| format!("connecting to the poller at {url}"))?);
    }
    Ok(channels)
}

/// Stops the run if any stream failed or ended, or the poller died: the
/// figures would not describe N watched events.
fn ensure_healthy(fleet: &Fleet, poller: &mut Child) -> anyhow::Result<()> {
    poller.ensure_running()?;
    let (ended, failed) = fleet.finished();
    if ended + failed > 0 {
        bail!(
            "{ended} streams ended and {failed} failed; first error: {}",
            fleet.first_error().as_deref().unwrap_or("none")
        );
    }
    Ok(())
}

/// The parameters shared by the columns.
#[derive(Serialize)]
struct Params<'a> {
    args: &'a Args,
    streams_per_channel: usize,
    cores: usize,
    /// The first column's command (ports vary); batched columns add `batch_flags`.
    poller_cmd: String,
    batch_flags: Option<String>,
}

/// One polling mode's figures: a column.
#[derive(Serialize)]
struct Figures {
    column: String,
    /// Every stream had its first value after; then one interval to settle.
    first_values_s: f64,
    /// As media-sim saw it during the window: requests are `GET /live` and
    /// `GET /batch`, polls are ids over all requests.
    requests: u64,
    batch_requests: u64,
    requests_per_s: f64,
    expected_per_s: f64,
    ratio: f64,
    id_polls: u64,
    ids_per_request: f64,
    status_200: u64,
    status_304: u64,
    status_other: u64,
    polls_per_event_per_interval: f64,
    event_polls_min: u32,
    event_polls_max: u32,
    events_unpolled: usize,
    /// Smallest and largest tenth-of-interval share of requests (ideal 10).
    phase_share_min_pct: Option<f64>,
    phase_share_max_pct: Option<f64>,
    /// Requests per 100 ms slot.
    slot_mean: f64,
    slot_min: u64,
    slot_max: u64,
    slot_max_over_mean: f64,
    updates: u64,
    updates_per_s: f64,
    poller_cpu_s: f64,
    poller_cpu_pct: f64,
    poller_cpu_us_per_poll: f64,
    poller_cpu_us_per_request: f64,
    poller_rss_idle_mib: f64,
    poller_rss_warm_mib: f64,
    poller_rss_end_mib: f64,
    poller_rss_peak_mib: f64,
    /// (warm - idle) / events.
    poller_rss_per_event_kib: f64,
    /// This process: media-sim and the subscribers.
    harness_cpu_pct: f64,
    harness_rss_end_mib: f64,
    /// Other programs on the host, competing.
    others_pct: f64,
    #[serde(skip)]
    mode: Mode,
    #[serde(skip)]
    poller_cmd: String,
    #[serde(skip)]
    notes: Vec<String>,
}

#[derive(Serialize)]
struct PollerFigures<'a> {
    params: Params<'a>,
    runs: Vec<Figures>,
}

fn report(a: &Args, runs: Vec<Figures>) -> anyhow::Result<Report> {
    let columns: Vec<String> = runs.iter().map(|r| r.mode.column()).collect();
    let title = format!(
        "livepush-bench poller: {} events, interval {}, measured {}, {}",
        a.events,
        humantime::format_duration(a.interval),
        humantime::format_duration(a.duration),
        columns.join(" vs ")
    );
    let batched = runs.iter().find(|r| matches!(r.mode, Mode::Batch(_)));
    let params = Params {
        args: a,
        streams_per_channel: STREAMS_PER_CHANNEL,
        cores: cores(),
        poller_cmd: runs[0].poller_cmd.clone(),
        batch_flags: batched.and_then(|r| {
            r.poller_cmd.find(" --media-batch-url").map(|i| r.poller_cmd[i + 1..].trim().to_owned())
        }),
    };
    Report::new("poller", title, &PollerFigures { params, runs })
}

fn min_or_zero<T: Copy + Ord + Default>(xs: &[T]) -> T {
    xs.iter().copied().min().unwrap_or_default()
}

fn fold(xs: &[f64], f: fn(f64, f64) -> f64) -> f64 {
    xs.iter().copied().reduce(f).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip() {
        assert_eq!(event_id(42), "ev-000042");
        assert_eq!(event_index("ev-000042"), Some(42));
        assert_eq!(event_index("ev-1234567"), Some(1_234_567));
        assert_eq!(event_index("demo-1"), None);
        assert!(livepush::EventId::parse(&event_id(199_999)).is_ok());
    }
}
