//! Scenario `poller`: one real poller process (`/proc` gives its CPU and RSS
//! alone) watching N events over gRPC, against media-sim served here behind
//! a middleware timing each poll as media-sim sees it. Phases and figures:
//! BENCHMARKS.md, scenario `poller`.

use crate::report::{Report, cores, mib};
use crate::{procstat, push::event_id, sse_load::micros, stack};
use anyhow::{Context, bail, ensure};
use axum::{extract::Request, extract::State, middleware::Next, response::Response};
use humantime::format_duration as human;
use livepush::proto::{SubscribeRequest, live_feed_client::LiveFeedClient};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::{net::Ipv4Addr, net::SocketAddr, sync::Arc, sync::Mutex, time::Duration};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet, time::Instant};

/// gRPC streams per connection, as an edge would hold a few thousand.
const STREAMS_PER_CHANNEL: usize = 2_500;
/// Slots for the burstiness figure.
const SLOT: Duration = Duration::from_millis(100);
/// Arrivals kept (16 bytes each); beyond, they are counted and the report says so.
const MAX_ARRIVALS: usize = 2_000_000;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events watched, one gRPC stream each (ids ev-000000, ev-000001, ...).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    events: u32,
    /// The poller's --interval.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Length of the measurement window, after warm-up.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How often media-sim's data changes (a poll after a change gets a 200, else a 304).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    change_every: Duration,
    /// Subscribe calls awaiting their answer at once, per connection (see
    /// BENCHMARKS.md on ENHANCE_YOUR_CALM).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pending_subscribes: u32,
    /// Polling modes, each with a fresh poller: `off` (one request per
    /// event) or a batch size N (`--media-batch-url`, `--batch-size N`).
    #[arg(long, value_delimiter = ',', default_value = "off", value_parser = parse_mode)]
    batch_size: Vec<Option<u32>>,
    #[command(flatten)]
    bins: stack::BinArgs,
}

fn parse_mode(s: &str) -> Result<Option<u32>, String> {
    let max = media_sim::sim::MAX_BATCH as u32;
    match s.trim() {
        "off" => Ok(None),
        n => n.parse().ok().filter(|n| (1..=max).contains(n)).map(Some).ok_or(format!("`off` or 1 to {max}")),
    }
}

/// One mode's figures. As media-sim saw them: requests are `GET /live` and
/// `GET /batch`, polls are ids (a batch's status counts for each of its ids).
#[derive(Serialize)]
struct Run {
    column: String,
    first_values_s: f64,
    requests: u64,
    requests_per_s: f64,
    expected_per_s: f64,
    ratio: f64,
    ids_per_request: f64,
    status_200_304_other: [u64; 3],
    polls_per_event_per_interval: f64,
    event_polls_min_max: [u32; 2],
    events_unpolled: usize,
    /// Requests per tenth of the interval over its whole intervals (10 % each if even).
    phase_share_min_max_pct: [Option<f64>; 2],
    /// Requests per whole 100 ms slot, and the busiest over the mean.
    slot_mean: f64,
    slot_min_max: [u64; 2],
    slot_max_over_mean: f64,
    updates: u64,
    updates_per_s: f64,
    poller_cpu_s: f64,
    poller_cpu_pct: f64,
    poller_cpu_us_per_poll: f64,
    poller_cpu_us_per_request: f64,
    poller_rss_idle_warm_end_peak_mib: [f64; 4],
    poller_rss_per_event_kib: f64,
    /// This process (media-sim and the subscribers), and other programs on the host.
    harness_cpu_pct: f64,
    harness_rss_end_mib: f64,
    others_pct: f64,
}

/// One polled id as media-sim saw it: (arrival, event index or `u32::MAX` for
/// a foreign id, the answer's status, first id of its request).
type Arrival = (Instant, u32, u16, bool);
/// The arrivals, and how many did not fit in [`MAX_ARRIVALS`].
type Log = Arc<Mutex<(Vec<Arrival>, u64)>>;

async fn record(State(log): State<Log>, req: Request, next: Next) -> Response {
    let index = |id: &str| id.strip_prefix("ev-").and_then(|n| n.parse().ok()).unwrap_or(u32::MAX);
    let (path, query) = (req.uri().path(), req.uri().query().unwrap_or(""));
    // A batch without ids is still a request (answered 400): one foreign id.
    let ids = match path.strip_prefix("/live/") {
        Some(id) => id,
        None if path == "/batch" => query.split('&').find_map(|kv| kv.strip_prefix("ids=")).unwrap_or(""),
        None => return next.run(req).await,
    };
    let events: Vec<u32> = ids.split(',').map(index).collect();
    let (at, response) = (Instant::now(), next.run(req).await);
    let status = response.status().as_u16();
    let (arrivals, dropped) = &mut *log.lock().unwrap();
    if arrivals.len() + events.len() <= MAX_ARRIVALS {
        arrivals.extend(events.into_iter().enumerate().map(|(i, event)| (at, event, status, i == 0)));
    } else {
        *dropped += events.len() as u64;
    }
    response
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    ensure!(!args.interval.is_zero() && args.duration >= SLOT, "--interval 0 or --duration under {SLOT:?}");
    let log = Log::default();
    let app = media_sim::app(media_sim::Sim::new(args.change_every, false))
        .layer(axum::middleware::from_fn_with_state(log.clone(), record));
    let (sim, _server) = serve(app).await?;

    let (mut runs, mut cmds, mut notes) = (Vec::new(), Vec::new(), Vec::new());
    for &batch in &args.batch_size {
        let column = batch.map_or("one per event".to_owned(), |n| format!("batch {n}"));
        eprintln!("poller: {column}");
        // Each mode's arrivals alone: its cap and its note of arrivals not recorded are its own.
        *log.lock().unwrap() = Default::default();
        let (max, n) = (args.events.max(100_000).to_string(), batch.unwrap_or(0).to_string());
        let url = format!("http://{sim}/batch?ids={{event_ids}}");
        let flags = ["--max-events", &max, "--media-batch-url", &url, "--batch-size", &n];
        // Batching adds its two flags to --max-events.
        let extra = if batch.is_some() { &flags[..] } else { &flags[..2] };
        let mut poller = stack::poller(&args.bins, stack::free_addr()?, sim, args.interval, extra).await?;
        let (pid, addr) = (poller.pid(), poller.addr);
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        let mut channels = Vec::new();
        while channels.len() * STREAMS_PER_CHANNEL < args.events as usize {
            let channel = endpoint.connect().await.with_context(|| format!("connecting to {addr}"))?;
            channels.push((channel, Arc::new(Semaphore::new(args.pending_subscribes as usize))));
        }
        let idle = procstat::sample(pid)?;

        // A task per event counts [updates, streams with a first value] and
        // returns why its stream ended. Subscribe calls are paced per connection.
        let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let subscribed = Instant::now();
        let mut tasks = JoinSet::new();
        for i in 0..args.events {
            let ((channel, pacer), counts, id) =
                (channels[i as usize / STREAMS_PER_CHANNEL].clone(), counts.clone(), event_id(i));
            tasks.spawn(async move {
                let read = async {
                    let permit = pacer.acquire().await;
                    let request = SubscribeRequest { event_id: id.clone() };
                    let mut stream = LiveFeedClient::new(channel).subscribe(request).await?.into_inner();
                    drop(permit);
                    let mut first = true;
                    while stream.message().await?.is_some() {
                        counts[0].fetch_add(1, Relaxed);
                        counts[1].fetch_add(u64::from(std::mem::take(&mut first)), Relaxed);
                    }
                    Ok::<_, tonic::Status>(())
                };
                format!("stream {id}: {}", read.await.err().map_or("ended".to_owned(), |s| s.to_string()))
            });
        }
        // Warm-up: every stream has its first value, then one interval for the
        // poll phases to settle. A stream lost or the poller gone would leave
        // figures that do not describe N watched events.
        while counts[1].load(Relaxed) < u64::from(args.events) {
            poller.child.ensure_running()?;
            if let Some(why) = tasks.try_join_next() {
                bail!("{}", why?);
            }
            let late = subscribed.elapsed() >= Duration::from_secs(60) + 2 * args.interval;
            ensure!(!late, "only {} of {} streams had a first update", counts[1].load(Relaxed), args.events);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let first_values_s = subscribed.elapsed().as_secs_f64();
        tokio::time::sleep(args.interval).await;

        let (warm, me) = (procstat::sample(pid)?, std::process::id());
        let cpu0 = procstat::Cpu::read(&[pid, me])?;
        let (start, updates0) = (Instant::now(), counts[0].load(Relaxed));
        tokio::time::sleep_until(start + args.duration).await;
        let cpu = procstat::Cpu::read(&[pid, me])?.since(&cpu0);
        let (end, me_end) = (procstat::sample(pid)?, procstat::sample(me)?);
        let wall = start.elapsed().as_secs_f64();
        let updates = counts[0].load(Relaxed) - updates0;
        poller.child.ensure_running()?;
        if let Some(first) = tasks.try_join_next() {
            let n = 1 + std::iter::from_fn(|| tasks.try_join_next()).count();
            notes.push(format!("{column}: {n} streams ended after warm-up (first: {})", first?));
        }
        tasks.shutdown().await;
        drop(channels);
        cmds.push(poller.cmd.clone());
        poller.stop().await?;

        // The window's arrivals, timed from its start: requests per 100 ms
        // slot and per tenth of the interval, polls per event, ids and statuses.
        let (span, interval) = (micros(args.duration), micros(args.interval));
        let (mut per_event, mut status, mut requests) = (vec![0u32; args.events as usize], [0u64; 3], 0);
        let (mut slots, mut tenths) = (vec![0u64; (span / micros(SLOT)) as usize], [0u64; 10]);
        let (arrivals, dropped) = &*log.lock().unwrap();
        if *dropped > 0 {
            notes.push(format!("{column}: {dropped} arrivals beyond {MAX_ARRIVALS} not recorded"));
        }
        let since_start =
            arrivals.iter().filter(|a| a.0 >= start).map(|&(at, e, c, r)| (micros(at - start), e, c, r));
        for (at, event, code, request) in since_start.filter(|a| a.0 < span) {
            per_event.get_mut(event as usize).into_iter().for_each(|c| *c += 1);
            // Answers: 200, 304, other.
            status[[200, 304].iter().position(|&c| c == code).unwrap_or(2)] += 1;
            if request {
                requests += 1;
                slots.get_mut((at / micros(SLOT)) as usize).into_iter().for_each(|c| *c += 1);
                if at < span / interval * interval {
                    tenths[(at % interval * 10 / interval) as usize] += 1;
                }
            }
        }
        let (requests, ids) = (f64::from(requests), status.iter().sum::<u64>() as f64);
        let in_tenths = tenths.iter().sum::<u64>() as f64;
        let share = |c: Option<&u64>| (in_tenths > 0.0).then(|| 100.0 * *c.unwrap_or(&0) as f64 / in_tenths);
        let secs = args.duration.as_secs_f64();
        let slot_max = slots.iter().copied().max().unwrap_or(0);
        let slot_mean = slots.iter().sum::<u64>() as f64 / slots.len().max(1) as f64;
        let expected_per_s =
            f64::from(batch.map_or(args.events, |b| args.events.div_ceil(b))) / args.interval.as_secs_f64();
        let rss_growth_kib = (warm.rss_bytes.saturating_sub(idle.rss_bytes) / 1024) as f64;
        runs.push(Run {
            column,
            first_values_s,
            requests: requests as u64,
            requests_per_s: requests / secs,
            expected_per_s,
            ratio: requests / secs / expected_per_s,
            ids_per_request: ids / requests.max(1.0),
            status_200_304_other: status,
            polls_per_event_per_interval: ids / f64::from(args.events) / (secs / args.interval.as_secs_f64()),
            event_polls_min_max: [per_event.iter().min(), per_event.iter().max()]
                .map(|c| c.map_or(0, |c| *c)),
            events_unpolled: per_event.iter().filter(|&&c| c == 0).count(),
            phase_share_min_max_pct: [share(tenths.iter().min()), share(tenths.iter().max())],
            slot_mean,
            slot_min_max: [slots.iter().copied().min().unwrap_or(0), slot_max],
            slot_max_over_mean: slot_max as f64 / slot_mean.max(f64::MIN_POSITIVE),
            updates,
            updates_per_s: updates as f64 / wall,
            poller_cpu_s: cpu.of(0),
            poller_cpu_pct: 100.0 * cpu.of(0) / wall,
            poller_cpu_us_per_poll: 1e6 * cpu.of(0) / ids.max(1.0),
            poller_cpu_us_per_request: 1e6 * cpu.of(0) / requests.max(1.0),
            poller_rss_idle_warm_end_peak_mib: [
                idle.rss_bytes,
                warm.rss_bytes,
                end.rss_bytes,
                end.peak_rss_bytes,
            ]
            .map(mib),
            poller_rss_per_event_kib: rss_growth_kib / f64::from(args.events),
            harness_cpu_pct: 100.0 * cpu.of(1) / wall,
            harness_rss_end_mib: mib(me_end.rss_bytes),
            others_pct: 100.0 * cpu.others() / wall,
        });
    }
    let names = runs.iter().map(|r| r.column.as_str()).collect::<Vec<_>>().join(" vs ");
    let (events, every, window) = (args.events, human(args.interval), human(args.duration));
    let title =
        format!("livepush-bench poller: {events} events, interval {every}, measured {window}, {names}");
    // Ports vary: the first mode's command, and the flags batching adds.
    let batch_flags = cmds.iter().find_map(|c| c.find(" --media-batch-url").map(|i| c[i + 1..].to_owned()));
    let params = serde_json::json!({"streams_per_channel": STREAMS_PER_CHANNEL,
        "cores": cores(), "poller_cmd": cmds[0], "batch_flags": batch_flags});
    let mut report = Report::new("poller", title, &serde_json::json!({"params": params, "runs": runs}))?;
    notes.into_iter().for_each(|n| _ = report.note(n));
    Ok(report)
}

/// Serves `app` on a free loopback port until the returned set is dropped.
pub async fn serve(app: axum::Router) -> anyhow::Result<(SocketAddr, JoinSet<std::io::Result<()>>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("binding a server")?;
    let (addr, mut background) = (listener.local_addr()?, JoinSet::new());
    background.spawn(async move { axum::serve(listener, app).await });
    Ok((addr, background))
}
