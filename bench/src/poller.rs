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

    /// The poller binary [default: <workspace>/target/release/poller].
    #[arg(long, value_name = "PATH")]
    poller_bin: Option<PathBuf>,
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

    let grpc_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let poller_args = vec![
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
    let mut cmd = Command::new(&poller_bin);
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
    let window_start = Instant::now();
    let updates_start = fleet.updates();
    tokio::time::sleep_until(window_start + args.duration).await;
    let end = procstat::sample(pid)?;
    let me_end = procstat::sample(std::process::id())?;
    let elapsed = window_start.elapsed();
    let updates = fleet.updates() - updates_start;
    let (ended, failed) = fleet.finished();
    let first_error = fleet.first_error();
    poller.ensure_running()?;

    let stuck = fleet.stop(Duration::from_secs(5)).await;
    drop(channels);
    let exit = poller.stop().await?;
    background.shutdown().await;

    let (log, dropped) = arrivals.snapshot();
    let window = arrivals::window(&log, arrivals.offset_us(window_start.into_std()), micros(args.duration));
    let figures = Figures {
        args: &args,
        window: &window,
        first_values_after,
        updates,
        procs: Procs { idle, warm, end, elapsed, me_start, me_end },
    };
    let mut report = figures.report(&poller_cmd);
    if dropped > 0 {
        report.note(format!("{dropped} arrivals beyond {} were not recorded", arrivals::MAX_ARRIVALS));
    }
    if ended + failed > 0 {
        report.note(format!(
            "{ended} streams ended and {failed} failed during the window (first error: {})",
            first_error.as_deref().unwrap_or("none")
        ));
    }
    if stuck > 0 {
        report.note(format!("{stuck} stream tasks did not stop within 5 s and were aborted"));
    }
    if !exit.success() {
        report.note(format!("the poller exited with {exit} after SIGTERM"));
    }
    Ok(report)
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
}

struct Figures<'a> {
    args: &'a Args,
    /// Arrivals in the window, window-relative and sorted.
    window: &'a [Arrival],
    first_values_after: Duration,
    updates: u64,
    procs: Procs,
}

impl Figures<'_> {
    fn report(&self, poller_cmd: &str) -> Report {
        let a = self.args;
        let secs = a.duration.as_secs_f64();
        let span = micros(a.duration);
        let requests = self.window.len() as u64;
        let rps = requests as f64 / secs;
        let expected = f64::from(a.events) / a.interval.as_secs_f64();
        let intervals = secs / a.interval.as_secs_f64();
        let per_event = arrivals::per_event_counts(self.window, a.events);
        let status = |code: u16| self.window.iter().filter(|w| w.status == code).count();
        let slots = arrivals::slot_counts(self.window, span, micros(SLOT));
        let slot_mean = slots.iter().sum::<u64>() as f64 / slots.len().max(1) as f64;
        let p = &self.procs;
        let cpu = p.end.cpu_seconds - p.warm.cpu_seconds;
        let wall = p.elapsed.as_secs_f64();
        let me_cpu = p.me_end.cpu_seconds - p.me_start.cpu_seconds;

        let mut r = Report::new(
            "poller",
            format!(
                "livepush-bench poller: {} events, interval {}, measured {}",
                a.events,
                humantime::format_duration(a.interval),
                humantime::format_duration(a.duration)
            ),
        );
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
            .row("poller_cmd", "poller command", poller_cmd, "");

        r.section("warmup", "warm-up")
            .row(
                "first_values_s",
                "every stream has its first value after",
                Value::Float(self.first_values_after.as_secs_f64(), 2),
                "s",
            )
            .row("settle_s", "then waited (phases settle)", Value::Float(a.interval.as_secs_f64(), 3), "s");

        r.section("upstream", "upstream, as media-sim saw it during the window")
            .row("requests", "GET /live requests", requests, "")
            .row("requests_per_s", "requests/s", Value::Float(rps, 1), "req/s")
            .row("expected_per_s", "expected (events / interval)", Value::Float(expected, 1), "req/s")
            .row("ratio", "measured / expected", Value::Float(rps / expected, 3), "")
            .row("status_200", "answers 200 (data changed)", status(200), "")
            .row("status_304", "answers 304 (not modified)", status(304), "")
            .row("status_other", "other answers", self.window.len() - status(200) - status(304), "")
            .row(
                "polls_per_event_per_interval",
                "polls per event per interval",
                Value::Float(requests as f64 / f64::from(a.events) / intervals, 3),
                "",
            )
            .row("event_polls_min", "polls of the least-polled event", min_or_zero(&per_event), "")
            .row(
                "event_polls_max",
                "polls of the most-polled event",
                per_event.iter().copied().max().unwrap_or(0),
                "",
            )
            .row(
                "events_unpolled",
                "events not polled at all",
                per_event.iter().filter(|&&c| c == 0).count(),
                "",
            );

        r.section("spread", "spread of poll arrivals");
        match arrivals::phase_shares(self.window, span, micros(a.interval), PHASE_BUCKETS) {
            Some(shares) => {
                let pct = |x: f64| Value::Float(100.0 * x, 2);
                r.row(
                    "phase_share_min_pct",
                    "smallest tenth-of-interval share (ideal 10)",
                    pct(fold(&shares, f64::min)),
                    "%",
                )
                .row(
                    "phase_share_max_pct",
                    "largest tenth-of-interval share (ideal 10)",
                    pct(fold(&shares, f64::max)),
                    "%",
                );
            }
            None => {
                r.row(
                    "phase_share",
                    "tenth-of-interval shares",
                    "n/a (window shorter than one interval)",
                    "",
                );
            }
        }
        r.row("slot_mean", "requests per 100 ms slot, mean", Value::Float(slot_mean, 1), "")
            .row("slot_min", "requests per 100 ms slot, min", min_or_zero(&slots), "")
            .row("slot_max", "requests per 100 ms slot, max", slots.iter().copied().max().unwrap_or(0), "")
            .row(
                "slot_max_over_mean",
                "busiest slot / mean",
                Value::Float(
                    slots.iter().copied().max().unwrap_or(0) as f64 / slot_mean.max(f64::MIN_POSITIVE),
                    2,
                ),
                "",
            );

        r.section("subscribers", "subscribers")
            .row("updates", "updates received in the window", self.updates, "")
            .row("updates_per_s", "updates/s", Value::Float(self.updates as f64 / wall, 1), "upd/s");

        r.section("poller", "poller process")
            .row("cpu_s", "CPU time in the window", Value::Float(cpu, 2), "s")
            .row("cpu_pct_core", "CPU, % of one core", Value::Float(100.0 * cpu / wall, 1), "%")
            .row(
                "cpu_us_per_poll",
                "CPU per upstream poll",
                Value::Float(1e6 * cpu / requests.max(1) as f64, 1),
                "µs",
            )
            .row("rss_idle_mib", "RSS idle (before subscribing)", mib(p.idle.rss_bytes), "MiB")
            .row("rss_warm_mib", "RSS after warm-up", mib(p.warm.rss_bytes), "MiB")
            .row("rss_end_mib", "RSS at the end", mib(p.end.rss_bytes), "MiB")
            .row("rss_peak_mib", "peak RSS (VmHWM)", mib(p.end.peak_rss_bytes), "MiB")
            .row(
                "rss_per_event_kib",
                "RSS per watched event (warm - idle)",
                Value::Float(
                    p.warm.rss_bytes.saturating_sub(p.idle.rss_bytes) as f64 / 1024.0 / f64::from(a.events),
                    2,
                ),
                "KiB",
            );

        r.section("harness", "harness process (media-sim + subscribers)")
            .row("cpu_pct_core", "CPU, % of one core", Value::Float(100.0 * me_cpu / wall, 1), "%")
            .row("rss_end_mib", "RSS at the end", mib(p.me_end.rss_bytes), "MiB");
        r
    }
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
