//! Scenario `polling`: what the media service pays for N viewers polling it
//! directly (keep-alive, `If-None-Match` like a browser's cache) versus the
//! same viewers through livepush: requests by media-sim's count, bytes by a
//! relay in front of it that both setups use. No `--stamp`: answers keep ETags.

use crate::push::{LoadArgs, at_least_1s, event_id};
use crate::{procstat, report::Report, sse_load, stack};
use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use std::sync::{Arc, atomic::AtomicU64, atomic::Ordering::Relaxed};
use std::{net::Ipv4Addr, net::SocketAddr, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::{net::TcpListener, net::TcpStream, task::JoinSet, time::Instant};
use tokio_util::io::InspectReader;

/// Connections the relay holds at once: every viewer's (at most 5,000, and
/// one reconnect each) and the poller's, with room to spare.
const MAX_RELAYS: usize = 10_064;
/// Largest answer a polling viewer reads (media-sim's are under 1 KiB).
const MAX_ANSWER: usize = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Viewers, in both setups.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=5_000))]
    viewers: u32,
    /// Events the viewers watch (spread evenly).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    events: u32,
    /// How often each polling viewer asks, and the poller's --interval.
    #[arg(long, default_value = "5s", value_parser = at_least_1s)]
    interval: Duration,
    /// media-sim's --change-every.
    #[arg(long, default_value = "5s", value_parser = at_least_1s)]
    change_every: Duration,
    /// Measurement window of each setup.
    #[arg(long, default_value = "60s", value_parser = at_least_1s)]
    duration: Duration,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    bins: stack::BinArgs,
}

/// One setup's figures at the media service over its window: requests by
/// media-sim's own count, HTTP bytes through the relay (heads included, TCP/IP
/// overhead not), and what the viewers saw (values: 200s, or SSE data events).
#[derive(Serialize)]
struct Run {
    column: &'static str,
    requests: u64,
    requests_per_s: f64,
    /// Viewers (or events) per interval.
    expected_per_s: f64,
    bytes_in_per_s: f64,
    bytes_out_per_s: f64,
    bytes_per_request: f64,
    /// Polling only: response bytes the viewers read (a cross-check of the
    /// relay's) and their answers.
    client_bytes_per_s: Option<f64>,
    status_200_304_other: Option<[u64; 3]>,
    /// media-sim; what livepush runs instead; other programs on the host.
    media_cpu_pct: f64,
    poller_edge_cpu_pct: Option<[f64; 2]>,
    others_cpu_pct: f64,
    values: u64,
    errors: u64,
    reconnects: u64,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let media = stack::media_sim(&args.bins, args.change_every, false).await?;
    let (relay, relayed, _relays) = relay_to(media.addr).await?;
    let upstream = async || {
        let requests = stack::media_requests(media.addr).await?;
        anyhow::Ok([requests, relayed[0].load(Relaxed), relayed[1].load(Relaxed)])
    };

    let every = humantime::format_duration(args.interval);
    eprintln!("polling: {} viewers polling every {every}", args.viewers);
    // 200s, errors, reconnects, 304s, other answers, bytes read.
    let seen = Arc::new(<[AtomicU64; 6]>::default());
    let mut viewers = JoinSet::new();
    for i in 0..args.viewers {
        let path = format!("/live/{}", event_id(i % args.events));
        let first = Instant::now() + args.interval.mul_f64(f64::from(i) / f64::from(args.viewers));
        viewers.spawn(poll(relay, path, first, args.interval, seen.clone()));
    }
    // Every viewer has started and polled once; keep-alive connections are up.
    tokio::time::sleep(args.interval + Duration::from_secs(1)).await;
    let pids = [media.pid(), std::process::id()];
    let polling = window(&args, "polling", f64::from(args.viewers), &pids, async || {
        let ([r, i, o], s) = (upstream().await?, seen.each_ref().map(|n| n.load(Relaxed)));
        anyhow::Ok([r, i, o, s[0], s[1], s[2], s[3], s[4], s[5]])
    })
    .await?;
    viewers.shutdown().await;

    eprintln!("livepush: {} viewers through one edge", args.viewers);
    let poller = stack::poller(&args.bins, stack::free_addr()?, relay, args.interval, &[]).await?;
    let edge = stack::edge(&args.bins, &[poller.addr]).await?;
    let mut plan = sse_load::Plan::default();
    for i in 0..args.viewers {
        plan.push(edge.addr, &format!("/live/{}/stream", event_id(i % args.events)), i % args.events);
    }
    let n = u64::from(args.viewers);
    let ramp_limit = args.load.ramp(n) + Duration::from_secs(30);
    let deadline = Instant::now() + ramp_limit + args.interval + args.duration + Duration::from_secs(30);
    let load = sse_load::Load::start(plan, args.load.config(deadline));
    let ready = load.wait_ready(n, ramp_limit).await;
    ready.with_context(|| format!("not every SSE viewer had a first event within {ramp_limit:?}"))?;
    // Let the poll phases settle, like the polling side's first interval.
    tokio::time::sleep(args.interval).await;
    let pids = [media.pid(), poller.pid(), edge.pid(), std::process::id()];
    let livepush = window(&args, "livepush", f64::from(args.events), &pids, async || {
        let ([r, i, o], c) = (upstream().await?, load.stats().counters());
        anyhow::Ok([r, i, o, c.messages, c.errors, c.reconnects, 0, 0, 0])
    })
    .await?;
    load.stop(Duration::from_secs(5)).await;

    let (viewers, events) = (args.viewers, args.events);
    let title = format!(
        "livepush-bench polling: {viewers} viewers of {events} event(s), every {every}, polling vs livepush"
    );
    // polling / livepush, upstream requests/s and bytes/s (both directions).
    let ratio = |p: f64, l: f64| (l > 0.0).then(|| p / l);
    let requests_ratio = ratio(polling.requests_per_s, livepush.requests_per_s);
    let bytes = |r: &Run| r.bytes_in_per_s + r.bytes_out_per_s;
    let bytes_ratio = ratio(bytes(&polling), bytes(&livepush));
    let figures = json!({"media_cmd": media.cmd, "poller_cmd": poller.cmd, "edge_cmd": edge.cmd,
        "runs": [polling, livepush], "requests_ratio": requests_ratio, "bytes_ratio": bytes_ratio});
    for p in [edge, poller, media] {
        p.stop().await?;
    }
    Report::new("polling", title, &figures)
}

/// One setup's window; `per_interval`: requests expected per interval;
/// `pids`: media-sim, what livepush adds, this process; `counts`: media-sim's
/// requests, bytes to and from it, then the viewers' values, errors,
/// reconnects, 304s, other answers and bytes read.
async fn window(
    args: &Args,
    column: &'static str,
    per_interval: f64,
    pids: &[u32],
    counts: impl AsyncFn() -> anyhow::Result<[u64; 9]>,
) -> anyhow::Result<Run> {
    let (c0, cpu0, start) = (counts().await?, procstat::Cpu::read(pids)?, Instant::now());
    tokio::time::sleep(args.duration).await;
    let cpu = procstat::Cpu::read(pids)?.since(&cpu0);
    let secs = start.elapsed().as_secs_f64();
    let c1 = counts().await?;
    let [requests, bytes_in, bytes_out, values, errors, reconnects, s304, other, read] =
        std::array::from_fn(|i| c1[i].saturating_sub(c0[i]));
    let (per_s, pct) = (|x: u64| x as f64 / secs, |i: usize| 100.0 * cpu.of(i) / secs);
    let (polling, livepush) = (column == "polling", column == "livepush");
    Ok(Run {
        column,
        requests,
        requests_per_s: per_s(requests),
        expected_per_s: per_interval / args.interval.as_secs_f64(),
        bytes_in_per_s: per_s(bytes_in),
        bytes_out_per_s: per_s(bytes_out),
        bytes_per_request: (bytes_in + bytes_out) as f64 / requests.max(1) as f64,
        client_bytes_per_s: polling.then(|| per_s(read)),
        status_200_304_other: polling.then_some([values, s304, other]),
        media_cpu_pct: pct(0),
        poller_edge_cpu_pct: livepush.then(|| [pct(1), pct(2)]),
        others_cpu_pct: 100.0 * cpu.others() / secs,
        values,
        errors,
        reconnects,
    })
}

/// A relay to `upstream` on a free loopback port, counting bytes to and
/// from it, until the returned set is dropped.
async fn relay_to(upstream: SocketAddr) -> anyhow::Result<(SocketAddr, Arc<[AtomicU64; 2]>, JoinSet<()>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("binding the relay")?;
    let (addr, relayed) = (listener.local_addr()?, Arc::new(<[AtomicU64; 2]>::default()));
    let (counts, mut background) = (relayed.clone(), JoinSet::new());
    background.spawn(async move {
        // Dropped with this task, so the relays stop with it.
        let mut relays = JoinSet::new();
        loop {
            let Ok((client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            while relays.try_join_next().is_some() {}
            if relays.len() >= MAX_RELAYS {
                continue; // Dropping the client closes it: its viewer counts an error.
            }
            let relayed = counts.clone();
            relays.spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else { return };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                // Bytes are counted as read from each side; an end of either
                // direction shuts the other side's writing down, and a failed
                // relay closes both sides: the client sees and counts it.
                let [to, from] = &*relayed;
                let mut client =
                    InspectReader::new(client, |r: &[u8]| _ = to.fetch_add(r.len() as u64, Relaxed));
                let mut server =
                    InspectReader::new(server, |r: &[u8]| _ = from.fetch_add(r.len() as u64, Relaxed));
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    Ok((addr, relayed, background))
}

/// One polling browser: every `interval` from `first`, one keep-alive request
/// revalidating its last ETag; `seen`: 200s, errors, reconnects, 304s,
/// other answers, bytes read.
async fn poll(target: SocketAddr, path: String, first: Instant, every: Duration, seen: Arc<[AtomicU64; 6]>) {
    let mut ticker = tokio::time::interval_at(first, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut conn, mut etag, mut connected) = (None::<TcpStream>, None::<String>, false);
    loop {
        ticker.tick().await;
        let conditional = etag.as_ref().map(|e| format!("If-None-Match: {e}\r\n")).unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\n{conditional}\r\n");
        let asked = async {
            let mut tcp = match conn.take() {
                Some(tcp) => tcp,
                None => {
                    let tcp = TcpStream::connect(target).await?;
                    tcp.set_nodelay(true)?;
                    seen[2].fetch_add(u64::from(std::mem::replace(&mut connected, true)), Relaxed);
                    tcp
                }
            };
            tcp.write_all(request.as_bytes()).await?;
            let answer = read_answer(&mut tcp).await?;
            anyhow::Ok((tcp, answer))
        };
        match tokio::time::timeout(Duration::from_secs(10), asked).await {
            Ok(Ok((tcp, (status, new_etag, close, read)))) => {
                let slot = match status {
                    200 => 0,
                    304 => 3,
                    _ => 4,
                };
                seen[slot].fetch_add(1, Relaxed);
                seen[5].fetch_add(read as u64, Relaxed);
                etag = new_etag.or(etag);
                conn = (!close).then_some(tcp);
            }
            _ => _ = seen[1].fetch_add(1, Relaxed),
        }
    }
}

/// Reads one answer (head and `Content-Length` body): its status, ETag and
/// whether the server closes the connection, and the bytes read.
async fn read_answer(tcp: &mut TcpStream) -> anyhow::Result<(u16, Option<String>, bool, usize)> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        anyhow::ensure!(buf.len() <= MAX_ANSWER, "an answer over {MAX_ANSWER} bytes");
        anyhow::ensure!(tcp.read_buf(&mut buf).await? > 0, "closed by the server");
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut head = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = head.parse(&buf)? else { continue };
        let header = |name: &str| {
            let h = head.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name));
            h.and_then(|h| std::str::from_utf8(h.value).ok())
        };
        if buf.len() >= len + header("content-length").map_or(Ok(0), str::parse::<usize>)? {
            let close = head.version == Some(0)
                || header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
            let etag = header("etag").map(str::to_owned);
            return Ok((head.code.unwrap_or(0), etag, close, buf.len()));
        }
    }
}
