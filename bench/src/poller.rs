//! Scenario `poller`: one real poller process watching many events against an
//! in-process media-sim, each event held by one gRPC subscriber.
//!
//! The question it answers is what the media service and the poller's host
//! pay for N watched events at interval I: the media service should see
//! N / I requests/s, spread evenly over time (not in bursts at the interval's
//! start), and the poller's CPU and memory should stay modest. The poller runs
//! as its own process so `/proc` gives its CPU and RSS alone; media-sim and the
//! subscribers run here, where arrivals are timed as the media service sees
//! them.
//!
//! Phases: start media-sim and the poller, open the streams, wait until every
//! stream has its first value (the poller's first poll of each event happens
//! at once), wait one more interval so the poll phases settle, then measure
//! for `--duration`.
//!
//! `--batch-size` compares polling modes in one session: `off` (one
//! `GET /live/{id}` per event, the default) and/or batch sizes, each a fresh
//! poller given `--media-batch-url .../batch?ids={event_ids} --batch-size N`
//! against the same media-sim. Each mode is a column of the report; a batch
//! request counts as one request to the media service, and each of its ids
//! as one poll of that event.

use crate::{
    arrivals::{self, Arrival, Arrivals},
    child::Child,
    procstat::{self, Sample},
    report::{Report, Value},
    stack::{free_port, shell_words},
    subscribers::Fleet,
};
use anyhow::{Context, bail, ensure};
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
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

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events watched, one gRPC stream each (ids ev-000000, ev-000001, ...).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    events: u32,

    /// The poller's --interval.
    #[arg(long, default_value = "5s", value_parser = at_least_1ms)]
    interval: Duration,

    /// Length of the measurement window, after warm-up.
    #[arg(long, default_value = "30s", value_parser = at_least_slot)]
    duration: Duration,

    /// How often media-sim's data changes (every poll after a change gets a
    /// 200, otherwise a 304).
    #[arg(long, default_value = "5s", value_parser = at_least_1ms)]
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

    /// The poller binary [default: <workspace>/target/release/poller].
    #[arg(long, value_name = "PATH")]
    poller_bin: Option<PathBuf>,
}

/// How the poller asks the media service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

fn event_id(index: u32) -> String {
    format!("ev-{index:06}")
}

fn event_index(id: &str) -> Option<u32> {
    id.strip_prefix("ev-")?.parse().ok()
}

fn default_poller_bin() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/poller"))
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let poller_bin = args.poller_bin.clone().unwrap_or_else(default_poller_bin);
    ensure!(
        poller_bin.is_file(),
        "no poller binary at {} (build it with `cargo build --release -p poller` or pass --poller-bin)",
        poller_bin.display()
    );
    let poller_bin =
        poller_bin.canonicalize().with_context(|| format!("resolving {}", poller_bin.display()))?;

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
        runs.push(measure(&args, &poller_bin, mode, sim_addr, &arrivals).await?);
    }
    background.shutdown().await;

    let mut report = report(&args, &runs);
    let (_, dropped) = arrivals.snapshot();
    if dropped > 0 {
        report.note(format!("{dropped} arrivals beyond {} were not recorded", arrivals::MAX_ARRIVALS));
    }
    for run in &runs {
        for note in &run.notes {
            report.note(format!("{}: {note}", run.mode.column()));
        }
    }
    Ok(report)
}

/// One polling mode's run: a fresh poller against the shared media-sim.
async fn measure(
    args: &Args,
    poller_bin: &std::path::Path,
    mode: Mode,
    sim_addr: SocketAddr,
    arrivals: &Arrivals,
) -> anyhow::Result<Run> {
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
    let mut cmd = Command::new(poller_bin);
    cmd.args(&poller_args).env("RUST_LOG", "warn");
    // Only the flags above count: no POLLER_* setting leaks in from our
    // environment, so the reported command is the whole configuration.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("POLLER_")) {
            cmd.env_remove(key);
        }
    }
    let poller_cmd = format!("RUST_LOG=warn {} {}", poller_bin.display(), shell_words(&poller_args));
    let mut poller = Child::spawn("poller", cmd)?;
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
    let me_start = procstat::sample(std::process::id())?;
    let host_start = procstat::host_busy_seconds()?;
    let window_start = Instant::now();
    let updates_start = fleet.updates();
    tokio::time::sleep_until(window_start + args.duration).await;
    let end = procstat::sample(pid)?;
    let me_end = procstat::sample(std::process::id())?;
    let host_end = procstat::host_busy_seconds()?;
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
    Ok(Run {
        mode,
        poller_cmd,
        window,
        first_values_after,
        updates,
        procs: Procs { idle, warm, end, elapsed, me_start, me_end, host_busy: host_end - host_start },
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

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn mib(bytes: u64) -> Value {
    Value::Float(bytes as f64 / (1024.0 * 1024.0), 1)
}

struct Procs {
    idle: Sample,
    warm: Sample,
    end: Sample,
    elapsed: Duration,
    me_start: Sample,
    me_end: Sample,
    /// Host CPU seconds busy (all programs) during the window.
    host_busy: f64,
}

/// What one polling mode's run measured.
struct Run {
    mode: Mode,
    poller_cmd: String,
    /// Arrivals (polled ids) in the window, window-relative and sorted.
    window: Vec<Arrival>,
    first_values_after: Duration,
    updates: u64,
    procs: Procs,
    notes: Vec<String>,
}

/// The figures of one run, computed once for the columns of the report.
struct Figures {
    requests: u64,
    batch_requests: u64,
    rps: f64,
    expected_rps: f64,
    id_polls: u64,
    status: [u64; 3],
    polls_per_event_per_interval: f64,
    event_polls_min: u32,
    event_polls_max: u32,
    events_unpolled: usize,
    phase_shares: Option<Vec<f64>>,
    slots: Vec<u64>,
    slot_mean: f64,
    cpu: f64,
    wall: f64,
    me_cpu: f64,
    others_cpu: f64,
}

impl Figures {
    fn of(args: &Args, run: &Run) -> Self {
        let secs = args.duration.as_secs_f64();
        let span = micros(args.duration);
        let requests = arrivals::requests(&run.window);
        let batch_requests = if matches!(run.mode, Mode::Batch(_)) { requests.len() as u64 } else { 0 };
        let per_event = arrivals::per_event_counts(&run.window, args.events);
        let status = |code: u16| run.window.iter().filter(|w| w.status == code).count() as u64;
        let (ok, not_modified) = (status(200), status(304));
        let slots = arrivals::slot_counts(&requests, span, micros(SLOT));
        let slot_mean = slots.iter().sum::<u64>() as f64 / slots.len().max(1) as f64;
        let p = &run.procs;
        let cpu = p.end.cpu_seconds - p.warm.cpu_seconds;
        let me_cpu = p.me_end.cpu_seconds - p.me_start.cpu_seconds;
        let intervals = secs / args.interval.as_secs_f64();
        Self {
            requests: requests.len() as u64,
            batch_requests,
            rps: requests.len() as f64 / secs,
            expected_rps: run.mode.requests_per_interval(args.events) / args.interval.as_secs_f64(),
            id_polls: run.window.len() as u64,
            status: [ok, not_modified, run.window.len() as u64 - ok - not_modified],
            polls_per_event_per_interval: run.window.len() as f64 / f64::from(args.events) / intervals,
            event_polls_min: min_or_zero(&per_event),
            event_polls_max: per_event.iter().copied().max().unwrap_or(0),
            events_unpolled: per_event.iter().filter(|&&c| c == 0).count(),
            phase_shares: arrivals::phase_shares(&requests, span, micros(args.interval), PHASE_BUCKETS),
            slot_mean,
            slots,
            cpu,
            wall: p.elapsed.as_secs_f64(),
            me_cpu,
            others_cpu: (p.host_busy - cpu - me_cpu).max(0.0),
        }
    }
}

fn report(a: &Args, runs: &[Run]) -> Report {
    let figs: Vec<Figures> = runs.iter().map(|r| Figures::of(a, r)).collect();
    let each = |f: &dyn Fn(&Figures) -> Value| figs.iter().map(f).collect::<Vec<Value>>();
    let each_run = |f: &dyn Fn(&Run) -> Value| runs.iter().map(f).collect::<Vec<Value>>();
    let pct = |x: f64| Value::Float(100.0 * x, 2);
    let secs = a.duration.as_secs_f64();

    let mut r = Report::new(
        "poller",
        format!(
            "livepush-bench poller: {} events, interval {}, measured {}, {}",
            a.events,
            humantime::format_duration(a.interval),
            humantime::format_duration(a.duration),
            runs.iter().map(|r| r.mode.column()).collect::<Vec<_>>().join(" vs ")
        ),
    );
    r.columns(runs.iter().map(|r| r.mode.column()).collect());
    r.section("params", "parameters")
        .row("events", "events watched (1 gRPC stream each)", a.events, "")
        .row("interval_s", "poll interval", Value::Float(a.interval.as_secs_f64(), 3), "s")
        .row("duration_s", "measurement window", Value::Float(secs, 3), "s")
        .row(
            "change_every_s",
            "media-sim data changes every",
            Value::Float(a.change_every.as_secs_f64(), 3),
            "s",
        )
        .row("streams_per_channel", "gRPC streams per connection", STREAMS_PER_CHANNEL, "")
        .row("pending_subscribes", "subscribe calls in flight per connection", a.pending_subscribes, "")
        .row("cores", "host cores (shared by poller and harness)", cores(), "")
        .row("poller_cmd", "poller command (first column; ports vary)", runs[0].poller_cmd.as_str(), "");
    if let Some(run) = runs.iter().find(|r| matches!(r.mode, Mode::Batch(_))) {
        let flags = run.poller_cmd.find(" --media-batch-url").map_or("", |i| run.poller_cmd[i + 1..].trim());
        r.row("batch_flags", "batched columns add", flags, "");
    }

    r.section("warmup", "warm-up")
        .row_each(
            "first_values_s",
            "every stream has its first value after",
            each_run(&|run| Value::Float(run.first_values_after.as_secs_f64(), 2)),
            "s",
        )
        .row("settle_s", "then waited (phases settle)", Value::Float(a.interval.as_secs_f64(), 3), "s");

    r.section("upstream", "upstream, as media-sim saw it during the window")
        .row_each("requests", "requests (GET /live + GET /batch)", each(&|f| f.requests.into()), "")
        .row_each("batch_requests", "of which GET /batch", each(&|f| f.batch_requests.into()), "")
        .row_each("requests_per_s", "requests/s", each(&|f| Value::Float(f.rps, 1)), "req/s")
        .row_each(
            "expected_per_s",
            "expected (requests per interval / interval)",
            each(&|f| Value::Float(f.expected_rps, 1)),
            "req/s",
        )
        .row_each("ratio", "measured / expected", each(&|f| Value::Float(f.rps / f.expected_rps, 3)), "")
        .row_each("id_polls", "events polled (ids over all requests)", each(&|f| f.id_polls.into()), "")
        .row_each(
            "ids_per_request",
            "ids per request, mean",
            each(&|f| Value::Float(f.id_polls as f64 / f.requests.max(1) as f64, 1)),
            "",
        )
        .row_each("status_200", "polled ids answered 200 (data changed)", each(&|f| f.status[0].into()), "")
        .row_each("status_304", "polled ids answered 304 (not modified)", each(&|f| f.status[1].into()), "")
        .row_each("status_other", "polled ids with other answers", each(&|f| f.status[2].into()), "")
        .row_each(
            "polls_per_event_per_interval",
            "polls per event per interval",
            each(&|f| Value::Float(f.polls_per_event_per_interval, 3)),
            "",
        )
        .row_each(
            "event_polls_min",
            "polls of the least-polled event",
            each(&|f| f.event_polls_min.into()),
            "",
        )
        .row_each(
            "event_polls_max",
            "polls of the most-polled event",
            each(&|f| f.event_polls_max.into()),
            "",
        )
        .row_each("events_unpolled", "events not polled at all", each(&|f| f.events_unpolled.into()), "");

    r.section("spread", "spread of requests over time")
        .row_each(
            "phase_share_min_pct",
            "smallest tenth-of-interval share of requests (ideal 10)",
            each(&|f| f.phase_shares.as_ref().map_or(Value::Missing, |s| pct(fold(s, f64::min)))),
            "%",
        )
        .row_each(
            "phase_share_max_pct",
            "largest tenth-of-interval share of requests (ideal 10)",
            each(&|f| f.phase_shares.as_ref().map_or(Value::Missing, |s| pct(fold(s, f64::max)))),
            "%",
        )
        .row_each("slot_mean", "requests per 100 ms slot, mean", each(&|f| Value::Float(f.slot_mean, 1)), "")
        .row_each("slot_min", "requests per 100 ms slot, min", each(&|f| min_or_zero(&f.slots).into()), "")
        .row_each(
            "slot_max",
            "requests per 100 ms slot, max",
            each(&|f| f.slots.iter().copied().max().unwrap_or(0).into()),
            "",
        )
        .row_each(
            "slot_max_over_mean",
            "busiest slot / mean",
            each(&|f| {
                let max = f.slots.iter().copied().max().unwrap_or(0) as f64;
                Value::Float(max / f.slot_mean.max(f64::MIN_POSITIVE), 2)
            }),
            "",
        );

    r.section("subscribers", "subscribers")
        .row_each("updates", "updates received in the window", each_run(&|run| run.updates.into()), "")
        .row_each(
            "updates_per_s",
            "updates/s",
            figs.iter().zip(runs).map(|(f, run)| Value::Float(run.updates as f64 / f.wall, 1)),
            "upd/s",
        );

    let mib_of = |get: fn(&Procs) -> u64| each_run(&|run| mib(get(&run.procs)));
    r.section("poller", "poller process")
        .row_each("cpu_s", "CPU time in the window", each(&|f| Value::Float(f.cpu, 2)), "s")
        .row_each(
            "cpu_pct_core",
            "CPU, % of one core",
            each(&|f| Value::Float(100.0 * f.cpu / f.wall, 1)),
            "%",
        )
        .row_each(
            "cpu_us_per_poll",
            "CPU per polled event",
            each(&|f| Value::Float(1e6 * f.cpu / f.id_polls.max(1) as f64, 1)),
            "µs",
        )
        .row_each(
            "cpu_us_per_request",
            "CPU per upstream request",
            each(&|f| Value::Float(1e6 * f.cpu / f.requests.max(1) as f64, 1)),
            "µs",
        )
        .row_each("rss_idle_mib", "RSS idle (before subscribing)", mib_of(|p| p.idle.rss_bytes), "MiB")
        .row_each("rss_warm_mib", "RSS after warm-up", mib_of(|p| p.warm.rss_bytes), "MiB")
        .row_each("rss_end_mib", "RSS at the end", mib_of(|p| p.end.rss_bytes), "MiB")
        .row_each("rss_peak_mib", "peak RSS (VmHWM)", mib_of(|p| p.end.peak_rss_bytes), "MiB")
        .row_each(
            "rss_per_event_kib",
            "RSS per watched event (warm - idle)",
            each_run(&|run| {
                let p = &run.procs;
                let delta = p.warm.rss_bytes.saturating_sub(p.idle.rss_bytes) as f64;
                Value::Float(delta / 1024.0 / f64::from(a.events), 2)
            }),
            "KiB",
        );

    r.section("harness", "harness process (media-sim + subscribers)")
        .row_each(
            "cpu_pct_core",
            "CPU, % of one core",
            each(&|f| Value::Float(100.0 * f.me_cpu / f.wall, 1)),
            "%",
        )
        .row_each("rss_end_mib", "RSS at the end", mib_of(|p| p.me_end.rss_bytes), "MiB");
    r.section("host", "host").row_each(
        "others_pct_core",
        "other programs on the host (competing), % of one core",
        each(&|f| Value::Float(100.0 * f.others_cpu / f.wall, 1)),
        "%",
    );
    r
}

fn min_or_zero<T: Copy + Ord + Default>(xs: &[T]) -> T {
    xs.iter().copied().min().unwrap_or_default()
}

fn fold(xs: &[f64], f: fn(f64, f64) -> f64) -> f64 {
    xs.iter().copied().reduce(f).unwrap_or(0.0)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
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
