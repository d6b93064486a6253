//! The livepush processes a scenario runs (media-sim, pollers, edges): the
//! real release binaries, each in its own process so `/proc` gives its CPU
//! and RSS alone, started on free loopback ports and waited for until they
//! answer. Our `EDGE_*`, `POLLER_*` and `MEDIA_SIM_*` variables are removed,
//! so the command shown in the report is the whole configuration.

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
#[derive(Debug, Clone, clap::Args)]
pub struct BinArgs {
    /// Directory of the `media-sim`, `poller` and `edge` binaries
    /// [default: <workspace>/target/release].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// RUST_LOG of the child processes (their logs go to our stderr).
    #[arg(long, default_value = "warn")]
    pub child_log: String,

    /// Pin the edges (and nginx, in `nchan`) to these CPUs (`taskset -c
    /// LIST`), to tell the server's own cost from contention with the load
    /// generator (run the harness under `taskset -c` for the other half).
    #[arg(long, value_name = "LIST")]
    pub edge_cpus: Option<String>,
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
        // SIGTERM ends them with 0; anything else is worth knowing but does
        // not invalidate figures taken before.
        let status = self.child.stop().await?;
        if !status.success() {
            eprintln!("note: {} exited with {status}", self.cmd);
        }
        Ok(())
    }
}

/// Starts binary `name` with `--listen addr` and `args`, under `taskset -c cpus` if
/// given (taskset execs the binary, so the pid is the binary's), and waits until
/// `ready` holds (see [`wait_for`]).
async fn start(
    bins: &BinArgs,
    name: &str,
    addr: SocketAddr,
    args: Vec<String>,
    cpus: Option<&str>,
    ready: impl AsyncFn() -> bool,
) -> anyhow::Result<Proc> {
    let default_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release");
    let dir = bins.bin_dir.clone().unwrap_or_else(|| default_dir.into());
    let bin = dir.join(name).canonicalize().ok().filter(|p| p.is_file()).with_context(|| {
        format!("no {name} in {} (`cargo build --release --bins`, or pass --bin-dir)", dir.display())
    })?;
    let args = flags(&[("listen", addr.to_string())]).into_iter().chain(args);
    let argv: Vec<String> = pinned(cpus, bin.display().to_string()).into_iter().chain(args).collect();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env("RUST_LOG", &bins.child_log);
    let ours = |k: &str| ["EDGE_", "POLLER_", "MEDIA_SIM_"].iter().any(|p| k.starts_with(p));
    for (key, _) in std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(ours)) {
        cmd.env_remove(key);
    }
    let mut child = Child::spawn(name, cmd)?;
    wait_for(&mut child, name, ready).await?;
    Ok(Proc { child, addr, cmd: format!("RUST_LOG={} {}", bins.child_log, shell_words(&argv)) })
}

/// The command line running `bin` (its arguments follow), under `taskset -c cpus` if given.
pub fn pinned(cpus: Option<&str>, bin: String) -> Vec<String> {
    let taskset = cpus.map(|c| ["taskset".to_owned(), "-c".to_owned(), c.to_owned()]);
    taskset.into_iter().flatten().chain([bin]).collect()
}

fn flags(pairs: &[(&str, String)]) -> Vec<String> {
    pairs.iter().flat_map(|(k, v)| [format!("--{k}"), v.clone()]).collect()
}

/// Whether `GET http://addr/path` answers 200 within a second.
pub async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    matches!(httpc::get(addr, path, Duration::from_secs(1)).await, Ok((200, _)))
}

/// media-sim on a free port, answering `/stats`.
pub async fn media_sim(bins: &BinArgs, change_every: Duration, stamp: bool) -> anyhow::Result<Proc> {
    let addr = free_addr()?;
    let mut args = flags(&[("change-every", humantime::format_duration(change_every).to_string())]);
    args.extend(stamp.then(|| "--stamp".to_owned()));
    start(bins, "media-sim", addr, args, None, || http_ok(addr, "/stats")).await
}

/// The poller on `addr` (a [`free_addr`], or where edges expect one restarted),
/// polling media-sim at `media` every `interval`, with `extra` flags.
pub async fn poller(
    bins: &BinArgs,
    addr: SocketAddr,
    media: SocketAddr,
    interval: Duration,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let mut args = flags(&[
        ("media-url", format!("http://{media}/live/{{event_id}}")),
        ("interval", humantime::format_duration(interval).to_string()),
        ("shutdown-timeout", SHUTDOWN_TIMEOUT.to_owned()),
    ]);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let listening = || async move { tokio::net::TcpStream::connect(addr).await.is_ok() };
    start(bins, "poller", addr, args, None, listening).await
}

/// An edge on a free port using every poller in `pollers`, ready (`/readyz` 200).
pub async fn edge(bins: &BinArgs, pollers: &[SocketAddr]) -> anyhow::Result<Proc> {
    let addr = free_addr()?;
    let pollers: Vec<String> = pollers.iter().map(|p| format!("http://{p}")).collect();
    let args = flags(&[("poller", pollers.join(",")), ("shutdown-timeout", SHUTDOWN_TIMEOUT.to_owned())]);
    start(bins, "edge", addr, args, bins.edge_cpus.as_deref(), || http_ok(addr, "/readyz")).await
}

/// Polls `ready` every 50 ms until it holds, the child dies, or
/// [`STARTUP_LIMIT`] passes.
pub async fn wait_for(child: &mut Child, name: &str, ready: impl AsyncFn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_LIMIT;
    while !ready().await {
        child.ensure_running()?;
        if Instant::now() >= deadline {
            bail!("{name} not ready after {STARTUP_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
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

/// The sum of every sample of metric `name` (all label sets), rounded;
/// `None` if it has none.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    use prometheus_parse::{Scrape, Value};
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
    let values = scrape.samples.into_iter().filter(|s| s.metric == name).filter_map(|s| match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        _ => None,
    });
    values.reduce(|a, b| a + b).map(|v| v.round() as u64)
}

/// An address free on loopback now (bound and released; a child binds it soon after).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let probe = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(probe.local_addr()?)
}

/// Arguments joined for display, quoted where a shell would need it.
pub fn shell_words(args: &[String]) -> String {
    let plain = |a: &String| a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    let quote = |a: &String| if plain(a) { a.clone() } else { format!("'{}'", a.replace('\'', r"'\''")) };
    args.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// Creates the parent directory of `path` if needed.
pub fn ensure_parent(path: &Path) -> anyhow::Result<()> {
    // `create_dir_all("")` (a bare file name's parent) does nothing.
    let dir = path.parent().unwrap_or(Path::new(""));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
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
