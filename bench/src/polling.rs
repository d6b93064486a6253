//! Scenario `polling`: what the media service pays for N viewers polling it
//! directly (keep-alive, `If-None-Match` like a browser's cache) versus the
//! same viewers as SSE streams through livepush. Both are measured at the
//! media service: requests by media-sim's count, bytes by a relay both
//! setups go through ([`crate::proxy`]). media-sim runs without `--stamp`:
//! with it every answer would differ and carry no ETag.

use crate::{
    procstat,
    proxy::Proxy,
    push::{LoadArgs, at_least_1s, event_id},
    report::Report,
    sse_load::{Load, Plan},
    stack::{self, BinArgs},
    wire::{Item, ResponseParser},
};
use anyhow::Context;
use serde::Serialize;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;

/// One request's bound (connect, send, whole answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args, serde::Serialize)]
pub struct Args {
    /// Viewers, in both setups.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=5_000))]
    viewers: u32,

    /// Events the viewers watch (spread evenly).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    events: u32,

    /// How often each polling viewer asks, and the poller's --interval.
    #[arg(long, default_value = "5s", value_parser = at_least_1s)]
    #[serde(rename = "interval_s", serialize_with = "crate::report::secs")]
    interval: Duration,

    /// media-sim's --change-every.
    #[arg(long, default_value = "5s", value_parser = at_least_1s)]
    #[serde(rename = "change_every_s", serialize_with = "crate::report::secs")]
    change_every: Duration,

    /// Measurement window of each setup.
    #[arg(long, default_value = "60s", value_parser = at_least_1s)]
    #[serde(rename = "duration_s", serialize_with = "crate::report::secs")]
    duration: Duration,

    #[command(flatten)]
    load: LoadArgs,

    #[command(flatten)]
    bins: BinArgs,
}

/// What one setup cost the media service during its window.
#[derive(Debug, Default, Clone, Copy)]
struct Side {
    window: Duration,
    requests: u64,
    to_media: u64,
    from_media: u64,
    media_cpu: f64,
    poller_cpu: Option<f64>,
    edge_cpu: Option<f64>,
    /// Polling: answers 200 / 304 / other, as the viewers saw them.
    answers: Option<(u64, u64, u64)>,
    /// Polling: response bytes the viewers read.
    client_bytes: Option<u64>,
    /// New values the viewers received (polling: 200s; livepush: data events).
    values: u64,
    errors: u64,
    reconnects: u64,
    /// Host CPU used by programs other than media-sim, the poller, the edge
    /// and this harness during the window.
    others_cpu: f64,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let media = stack::media_sim(&args.bins, args.change_every, false).await?;
    let proxy = Proxy::start(media.addr, 2 * args.viewers as usize + 64).await?;
    let media_cmd = media.cmd.clone();

    eprintln!(
        "polling: {} viewers polling every {}",
        args.viewers,
        humantime::format_duration(args.interval)
    );
    let polling = poll_directly(&args, &proxy, media.addr, media.pid()).await;
    eprintln!("livepush: {} viewers through one edge", args.viewers);
    let livepush = match polling {
        Ok(_) => through_livepush(&args, &proxy, media.addr, media.pid()).await,
        Err(_) => Ok((Side::default(), String::new(), String::new())),
    };
    proxy.stop().await;
    media.stop().await?;
    let polling = polling?;
    let (livepush, poller_cmd, edge_cmd) = livepush?;
    report(&args, &polling, &livepush, [&media_cmd, &poller_cmd, &edge_cmd])
}

/// Setup 1: viewers poll media-sim (through the counting relay).
async fn poll_directly(
    args: &Args,
    proxy: &Proxy,
    media: SocketAddr,
    media_pid: u32,
) -> anyhow::Result<Side> {
    let stats = Arc::new(PollStats::default());
    let stop = CancellationToken::new();
    let deadline = Instant::now() + 2 * args.interval + args.duration + Duration::from_secs(30);
    let mut viewers = JoinSet::new();
    for i in 0..args.viewers {
        let path = format!("/live/{}", event_id(i % args.events));
        let offset = args.interval.mul_f64(f64::from(i) / f64::from(args.viewers));
        let v = Viewer { target: proxy.addr, path, interval: args.interval, offset, deadline };
        viewers.spawn(v.run(stats.clone(), stop.clone()));
    }
    // Every viewer has started and polled once; keep-alive connections are up.
    tokio::time::sleep(args.interval + Duration::from_secs(1)).await;
    let (r0, b0, s0) = (stack::media_requests(media).await?, proxy.bytes(), stats.read());
    let pids = [media_pid, std::process::id()];
    let cpu0 = procstat::Cpu::read(&pids)?;
    let start = Instant::now();
    tokio::time::sleep(args.duration).await;
    let cpu = procstat::Cpu::read(&pids)?.since(&cpu0);
    let window = start.elapsed();
    let (r1, b1, s1) = (stack::media_requests(media).await?, proxy.bytes(), stats.read());
    stop.cancel();
    let grace = Instant::now() + Duration::from_secs(5);
    while tokio::time::timeout_at(grace, viewers.join_next()).await.is_ok_and(|r| r.is_some()) {}
    viewers.shutdown().await;
    let d = |i: usize| s1[i].saturating_sub(s0[i]);
    Ok(Side {
        window,
        requests: r1.saturating_sub(r0),
        to_media: b1.0.saturating_sub(b0.0),
        from_media: b1.1.saturating_sub(b0.1),
        media_cpu: cpu.of(0),
        others_cpu: cpu.others(),
        poller_cpu: None,
        edge_cpu: None,
        answers: Some((d(OK), d(NOT_MODIFIED), d(OTHER))),
        client_bytes: Some(d(RESPONSE_BYTES)),
        values: d(OK),
        errors: d(ERRORS),
        reconnects: d(RECONNECTS),
    })
}

/// Setup 2: the same viewers as SSE streams through one edge and one poller,
/// which polls media-sim through the counting relay. Returns the figures and
/// the poller's and edge's commands.
async fn through_livepush(
    args: &Args,
    proxy: &Proxy,
    media: SocketAddr,
    media_pid: u32,
) -> anyhow::Result<(Side, String, String)> {
    let poller = stack::poller(&args.bins, proxy.addr, args.interval).await?;
    let edge = match stack::edge(&args.bins, &[poller.addr]).await {
        Ok(edge) => edge,
        Err(e) => {
            poller.stop().await?;
            return Err(e);
        }
    };
    let (poller_cmd, edge_cmd) = (poller.cmd.clone(), edge.cmd.clone());
    let n = u64::from(args.viewers);
    let mut plan = Plan::default();
    for i in 0..args.viewers {
        plan.push(edge.addr, &format!("/live/{}/stream", event_id(i % args.events)), i % args.events);
    }
    let ramp_limit = args.load.ramp(n) + Duration::from_secs(30);
    let deadline = Instant::now() + ramp_limit + args.interval + args.duration + Duration::from_secs(30);
    let load = Load::start(plan, args.load.config(deadline));
    let measured = async {
        load.wait_ready(n, ramp_limit)
            .await
            .with_context(|| format!("not every SSE viewer had a first event within {ramp_limit:?}"))?;
        // Let the poll phases settle, like the polling side's first interval.
        tokio::time::sleep(args.interval).await;
        let stats = load.stats();
        let pids = [media_pid, poller.pid(), edge.pid(), std::process::id()];
        let (r0, b0, c0, cpu0) = (
            stack::media_requests(media).await?,
            proxy.bytes(),
            stats.counters(),
            procstat::Cpu::read(&pids)?,
        );
        let start = Instant::now();
        tokio::time::sleep(args.duration).await;
        let cpu = procstat::Cpu::read(&pids)?.since(&cpu0);
        let window = start.elapsed();
        let (r1, b1, c1) = (stack::media_requests(media).await?, proxy.bytes(), stats.counters());
        let c = c1.since(&c0);
        anyhow::Ok(Side {
            window,
            requests: r1.saturating_sub(r0),
            to_media: b1.0.saturating_sub(b0.0),
            from_media: b1.1.saturating_sub(b0.1),
            media_cpu: cpu.of(0),
            poller_cpu: Some(cpu.of(1)),
            edge_cpu: Some(cpu.of(2)),
            others_cpu: cpu.others(),
            answers: None,
            client_bytes: None,
            values: c.messages,
            errors: c.errors,
            reconnects: c.reconnects,
        })
    }
    .await;
    load.stop(Duration::from_secs(5)).await;
    edge.stop().await?;
    poller.stop().await?;
    Ok((measured?, poller_cmd, edge_cmd))
}

const OK: usize = 0;
const NOT_MODIFIED: usize = 1;
const OTHER: usize = 2;
const RESPONSE_BYTES: usize = 3;
const ERRORS: usize = 4;
const RECONNECTS: usize = 5;

#[derive(Default)]
struct PollStats([AtomicU64; 6]);

impl PollStats {
    fn add(&self, i: usize, n: u64) {
        self.0[i].fetch_add(n, Relaxed);
    }

    fn read(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.0[i].load(Relaxed))
    }
}

/// One polling browser.
struct Viewer {
    target: SocketAddr,
    path: String,
    interval: Duration,
    offset: Duration,
    deadline: Instant,
}

struct Connection {
    tcp: TcpStream,
    parser: ResponseParser,
}

impl Viewer {
    async fn run(self, stats: Arc<PollStats>, stop: CancellationToken) {
        let mut ticker = tokio::time::interval_at(Instant::now() + self.offset, self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut conn: Option<Connection> = None;
        let mut etag: Option<String> = None;
        let mut connected_once = false;
        let mut buf = vec![0; 4096];
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(self.deadline) => return,
                _ = ticker.tick() => {}
            }
            let asked = async {
                if conn.is_none() {
                    let tcp = TcpStream::connect(self.target).await?;
                    let _ = tcp.set_nodelay(true);
                    if std::mem::replace(&mut connected_once, true) {
                        stats.add(RECONNECTS, 1);
                    }
                    conn = Some(Connection { tcp, parser: ResponseParser::new() });
                }
                let c = conn.as_mut().context("no connection")?;
                self.ask(c, etag.as_deref(), &mut buf, &stats).await
            };
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(REQUEST_TIMEOUT, asked) => r,
            };
            match outcome {
                Ok(Ok((status, new_etag, close))) => {
                    let i = match status {
                        200 => OK,
                        304 => NOT_MODIFIED,
                        _ => OTHER,
                    };
                    stats.add(i, 1);
                    if new_etag.is_some() {
                        etag = new_etag;
                    }
                    if close {
                        conn = None;
                    }
                }
                Ok(Err(_)) | Err(_) => {
                    stats.add(ERRORS, 1);
                    conn = None;
                }
            }
        }
    }

    /// One request on a keep-alive connection: status, ETag, and whether the
    /// server will close the connection.
    async fn ask(
        &self,
        c: &mut Connection,
        etag: Option<&str>,
        buf: &mut [u8],
        stats: &PollStats,
    ) -> anyhow::Result<(u16, Option<String>, bool)> {
        let conditional = etag.map(|e| format!("If-None-Match: {e}\r\n")).unwrap_or_default();
        let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n{conditional}\r\n", self.path, self.target);
        c.tcp.write_all(request.as_bytes()).await.context("sending")?;
        let mut answer = None;
        let mut head = None;
        while answer.is_none() {
            let n = c.tcp.read(buf).await.context("reading")?;
            anyhow::ensure!(n > 0, "closed by the server");
            stats.add(RESPONSE_BYTES, n as u64);
            c.parser.feed(&buf[..n], &mut |item| {
                match item {
                    Item::Head(h) => head = Some(h),
                    Item::Body(_) => {}
                    Item::End => answer = head.take(),
                }
                Ok(())
            })?;
        }
        let head = answer.context("no head")?;
        Ok((head.status, head.etag, head.close))
    }
}

/// One setup's figures at the media service during the window: a column.
#[derive(Serialize)]
struct Column {
    column: &'static str,
    /// media-sim's own `GET /live` count; expected: viewers (polling) or
    /// events (livepush) / interval.
    requests: u64,
    requests_per_s: f64,
    expected_per_s: f64,
    /// HTTP bytes through the relay in front of media-sim.
    bytes_in_per_s: f64,
    bytes_out_per_s: f64,
    bytes_per_request: f64,
    /// Polling: response bytes/s the viewers read (cross-check) and their answers.
    client_bytes_per_s: Option<f64>,
    status_200: Option<u64>,
    status_304: Option<u64>,
    status_other: Option<u64>,
    media_cpu_pct: f64,
    /// What livepush runs instead.
    poller_cpu_pct: Option<f64>,
    edge_cpu_pct: Option<f64>,
    /// Other programs on the host, competing.
    others_cpu_pct: f64,
    /// New values received: 200s, or SSE data events.
    values: u64,
    errors: u64,
    reconnects: u64,
}

impl Column {
    fn of(column: &'static str, s: &Side, expected_per_s: f64) -> Self {
        let secs = s.window.as_secs_f64().max(1e-9);
        let per_s = |x: u64| x as f64 / secs;
        Self {
            column,
            requests: s.requests,
            requests_per_s: per_s(s.requests),
            expected_per_s,
            bytes_in_per_s: per_s(s.to_media),
            bytes_out_per_s: per_s(s.from_media),
            bytes_per_request: (s.to_media + s.from_media) as f64 / s.requests.max(1) as f64,
            client_bytes_per_s: s.client_bytes.map(per_s),
            status_200: s.answers.map(|a| a.0),
            status_304: s.answers.map(|a| a.1),
            status_other: s.answers.map(|a| a.2),
            media_cpu_pct: 100.0 * s.media_cpu / secs,
            poller_cpu_pct: s.poller_cpu.map(|c| 100.0 * c / secs),
            edge_cpu_pct: s.edge_cpu.map(|c| 100.0 * c / secs),
            others_cpu_pct: 100.0 * s.others_cpu.max(0.0) / secs,
            values: s.values,
            errors: s.errors,
            reconnects: s.reconnects,
        }
    }
}

#[derive(Serialize)]
struct Figures<'a> {
    args: &'a Args,
    media_cmd: &'a str,
    /// Its media URL is the relay.
    poller_cmd: &'a str,
    edge_cmd: &'a str,
    runs: [Column; 2],
    /// polling / livepush, upstream requests/s and bytes/s (both directions).
    requests_ratio: Option<f64>,
    bytes_ratio: Option<f64>,
}

fn report(args: &Args, polling: &Side, livepush: &Side, cmds: [&str; 3]) -> anyhow::Result<Report> {
    let title = format!(
        "livepush-bench polling: {} viewers of {} event(s), every {}, polling vs livepush",
        args.viewers,
        args.events,
        humantime::format_duration(args.interval)
    );
    let secs = args.interval.as_secs_f64();
    let ratio = |x: &dyn Fn(&Side) -> u64| {
        let rate = |s: &Side| x(s) as f64 / s.window.as_secs_f64().max(1e-9);
        (rate(livepush) > 0.0).then(|| rate(polling) / rate(livepush))
    };
    let figures = Figures {
        args,
        media_cmd: cmds[0],
        poller_cmd: cmds[1],
        edge_cmd: cmds[2],
        runs: [
            Column::of("polling", polling, f64::from(args.viewers) / secs),
            Column::of("livepush", livepush, f64::from(args.events) / secs),
        ],
        requests_ratio: ratio(&|s| s.requests),
        bytes_ratio: ratio(&|s| s.to_media + s.from_media),
    };
    let mut r = Report::new("polling", title, &figures)?;
    r.note(
        "requests: media-sim's own count; bytes: HTTP bytes through a counting TCP relay in front of media-sim, \
         used by the polling viewers and by the poller alike (TCP/IP overhead not included)"
            .to_owned(),
    );
    r.note(
        "polling viewers revalidate with If-None-Match, as a browser cache does with no-cache + ETag"
            .to_owned(),
    );
    Ok(r)
}
