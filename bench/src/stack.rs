//! The livepush processes a scenario runs: media-sim, the poller and edges,
//! each the real release binary in its own process, started on free loopback
//! ports and waited for until it answers.
//!
//! Separate processes are the point: `/proc` then gives each one's CPU time
//! and RSS alone, not mixed with the load generator's. Each is owned by a
//! [`Child`] guard, so it is stopped on every exit path. Only the flags
//! written here configure them: `EDGE_*`, `POLLER_*` and `MEDIA_SIM_*`
//! variables of our environment are removed, so the command shown in the
//! report is the whole configuration.

use crate::{child::Child, httpc};
use anyhow::{Context, bail, ensure};
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};
use tokio::time::Instant;

/// How long a process may take to start answering.
const STARTUP_LIMIT: Duration = Duration::from_secs(20);
/// Graceful-shutdown bound given to the processes: only the run matters.
const SHUTDOWN_TIMEOUT: &str = "2s";

/// Where the release binaries are.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct BinArgs {
    /// Directory of the `media-sim`, `poller` and `edge` binaries
    /// [default: <workspace>/target/release].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// RUST_LOG of the child processes (their logs go to our stderr).
    #[arg(long, default_value = "warn")]
    pub child_log: String,

    /// Pin the edges (and nginx, in `nchan`) to these CPUs (`taskset -c
    /// LIST`, e.g. `0`), to tell the server's own cost apart from contention
    /// with the load generator (run the harness itself under `taskset -c 1`
    /// for the other half).
    #[arg(long, value_name = "LIST")]
    pub edge_cpus: Option<String>,
}

impl BinArgs {
    fn bin(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self
            .bin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release")));
        let path = dir.join(name);
        ensure!(
            path.is_file(),
            "no {name} binary at {} (build with `cargo build --release -p edge -p poller -p media-sim`, or pass --bin-dir)",
            path.display()
        );
        path.canonicalize().with_context(|| format!("resolving {}", path.display()))
    }
}

/// A started process and where it listens.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    /// The command line, for the report.
    pub cmd: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let status = self.child.stop().await?;
        // SIGTERM ends them with 0; anything else is worth knowing but does
        // not invalidate figures taken before.
        if !status.success() {
            eprintln!("note: {} exited with {status}", self.cmd);
        }
        Ok(())
    }
}

/// Starts `name` with `args`, under `taskset -c cpus` if given (taskset
/// execs the binary, so the pid is the binary's).
pub fn spawn(
    bins: &BinArgs,
    name: &str,
    args: Vec<String>,
    cpus: Option<&str>,
) -> anyhow::Result<(Child, String)> {
    let bin = bins.bin(name)?;
    let (mut cmd, prefix) = match cpus {
        Some(cpus) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", cpus]).arg(&bin);
            (cmd, format!("taskset -c {cpus} "))
        }
        None => (Command::new(&bin), String::new()),
    };
    cmd.args(&args).env("RUST_LOG", &bins.child_log);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| ["EDGE_", "POLLER_", "MEDIA_SIM_"].iter().any(|p| k.starts_with(p))) {
            cmd.env_remove(key);
        }
    }
    let shown = format!("RUST_LOG={} {prefix}{} {}", bins.child_log, bin.display(), shell_words(&args));
    Ok((Child::spawn(name, cmd)?, shown))
}

/// media-sim on a free port, answering `/stats`.
pub async fn media_sim(bins: &BinArgs, change_every: Duration, stamp: bool) -> anyhow::Result<Proc> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let mut args = vec![
        "--listen".to_owned(),
        addr.to_string(),
        "--change-every".to_owned(),
        humantime::format_duration(change_every).to_string(),
    ];
    if stamp {
        args.push("--stamp".to_owned());
    }
    let (mut child, cmd) = spawn(bins, "media-sim", args, None)?;
    wait_for(&mut child, "media-sim", || async move {
        matches!(httpc::get(addr, "/stats", Duration::from_secs(1)).await, Ok((200, _)))
    })
    .await?;
    Ok(Proc { child, addr, cmd })
}

/// The poller on a free port, polling `media` (an `http://host:port`
/// origin) every `interval`, accepting TCP connections.
pub async fn poller(bins: &BinArgs, media: SocketAddr, interval: Duration) -> anyhow::Result<Proc> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    poller_at(bins, addr, media, interval, &[]).await
}

/// The poller on `addr` (to restart one where edges expect it), with
/// `extra` flags, accepting TCP connections.
pub async fn poller_at(
    bins: &BinArgs,
    addr: SocketAddr,
    media: SocketAddr,
    interval: Duration,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let mut args = vec![
        "--listen".to_owned(),
        addr.to_string(),
        "--media-url".to_owned(),
        format!("http://{media}/live/{{event_id}}"),
        "--interval".to_owned(),
        humantime::format_duration(interval).to_string(),
        "--shutdown-timeout".to_owned(),
        SHUTDOWN_TIMEOUT.to_owned(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let (mut child, cmd) = spawn(bins, "poller", args, None)?;
    wait_for(&mut child, "poller", || async move { tokio::net::TcpStream::connect(addr).await.is_ok() })
        .await?;
    Ok(Proc { child, addr, cmd })
}

/// An edge on a free port using every poller in `pollers`, ready (`/readyz` 200).
pub async fn edge(bins: &BinArgs, pollers: &[SocketAddr]) -> anyhow::Result<Proc> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let pollers: Vec<String> = pollers.iter().map(|p| format!("http://{p}")).collect();
    let args = vec![
        "--listen".to_owned(),
        addr.to_string(),
        "--poller".to_owned(),
        pollers.join(","),
        "--shutdown-timeout".to_owned(),
        SHUTDOWN_TIMEOUT.to_owned(),
    ];
    let (mut child, cmd) = spawn(bins, "edge", args, bins.edge_cpus.as_deref())?;
    wait_for(&mut child, "edge", || async move {
        matches!(httpc::get(addr, "/readyz", Duration::from_secs(1)).await, Ok((200, _)))
    })
    .await?;
    Ok(Proc { child, addr, cmd })
}

/// Polls `ready` every 50 ms until it holds, the child dies, or
/// [`STARTUP_LIMIT`] passes.
pub async fn wait_for<F, Fut>(child: &mut Child, name: &str, ready: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + STARTUP_LIMIT;
    loop {
        child.ensure_running()?;
        if ready().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{name} not ready after {STARTUP_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// media-sim's count of `GET /live` requests so far.
pub async fn media_requests(media: SocketAddr) -> anyhow::Result<u64> {
    let (status, body) = httpc::get(media, "/stats", Duration::from_secs(5)).await?;
    ensure!(status == 200, "media-sim /stats answered {status}");
    let json: serde_json::Value = serde_json::from_str(&body).context("media-sim /stats is not JSON")?;
    json["requests"].as_u64().with_context(|| format!("no requests count in {body}"))
}

/// The Prometheus text of `GET /metrics` on `addr` (an edge, or a poller's
/// gRPC port).
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let (status, body) = httpc::get(addr, "/metrics", Duration::from_secs(5)).await?;
    ensure!(status == 200, "GET http://{addr}/metrics answered {status}");
    Ok(body)
}

/// The sum of every sample of metric `name` (all label sets) in Prometheus
/// text, rounded; `None` if it has none.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    use prometheus_parse::{Scrape, Value};
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
    let values = scrape.samples.iter().filter(|s| s.metric == name).filter_map(|s| match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        _ => None,
    });
    values.reduce(|a, b| a + b).map(|v| v.round() as u64)
}

/// A port free on loopback right now (bound then released; the child binds
/// it a moment later).
pub fn free_port() -> anyhow::Result<u16> {
    let probe = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(probe.local_addr().context("probe address")?.port())
}

/// Arguments joined for display, quoted where a shell would need it.
pub fn shell_words(args: &[String]) -> String {
    let quote = |a: &String| {
        if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c)) {
            a.clone()
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    args.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// Creates the parent directory of `path` if needed.
pub fn ensure_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_label_sets() {
        let text = "# TYPE livepush_poller_events_watched gauge\nlivepush_poller_events_watched 334\n\
            livepush_poller_upstream_requests_total{outcome=\"ok\"} 10\n\
            livepush_poller_upstream_requests_total{outcome=\"timeout\"} 2\n";
        assert_eq!(metric(text, "livepush_poller_events_watched"), Some(334));
        assert_eq!(metric(text, "livepush_poller_upstream_requests_total"), Some(12));
        assert_eq!(metric(text, "livepush_poller_subscribers"), None);
    }

    #[test]
    fn shell_words_quote_only_when_needed() {
        let args = ["--media-url".to_owned(), "http://127.0.0.1:1/live/{event_id}".to_owned()];
        assert_eq!(shell_words(&args), "--media-url 'http://127.0.0.1:1/live/{event_id}'");
    }
}
