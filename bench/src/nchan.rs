//! Scenario `nchan`: `fanout`'s measurement ([`crate::push::measure`])
//! against Nginx with the nchan module, one channel, updates published by the
//! harness with a `served_at_ms` stamp; `--with-livepush` runs livepush at
//! each size in the same session.

use crate::{
    child::{self, Child},
    httpc, procstat,
    push::{self, Outcome, Params, PushArgs, Server, Shape, Sizes, System, Upstream, at_least_1s},
    report::Report,
    stack::{self, Proc},
};
use anyhow::{Context, bail, ensure};
use livepush::EventId;
use media_sim::Sim;
use serde::Serialize;
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};
use tokio::{task::JoinHandle, time::Instant};

/// What to install when nginx or the module is missing.
const APT: &str = "apt-get install nginx libnginx-mod-nchan";
/// The one channel every browser subscribes to.
const CHANNEL: &str = "live";
/// The event whose media-sim document is published (as in `fanout`).
const EVENT: &str = "ev-000000";
/// nginx's per-worker limits: the machine allows 20,000 open files per process.
const WORKER_CONNECTIONS: u32 = 19_000;
const WORKER_RLIMIT_NOFILE: u32 = 20_000;
/// Bound on one publish.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args, serde::Serialize)]
pub struct Args {
    #[command(flatten)]
    sizes: Sizes,

    /// Also run livepush (media-sim, poller and a fresh edge, as `fanout`) at
    /// each size, just before nchan, for side-by-side figures from one session
    /// (needs the release binaries, like `fanout`).
    #[arg(long)]
    with_livepush: bool,

    /// Publish one update to the channel this often.
    #[arg(long, default_value = "1s", value_parser = at_least_1s)]
    #[serde(rename = "publish_every_s", serialize_with = "crate::report::secs")]
    publish_every: Duration,

    /// Messages nchan keeps per channel (`nchan_message_buffer_length`): a
    /// new subscriber first gets the oldest of them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    buffer_length: u32,

    /// What a new subscriber gets first (`nchan_subscriber_first_message`):
    /// `oldest` replays the buffered update at once, as the edge replays an
    /// event's latest value; `newest` waits for the next publish.
    #[arg(long, default_value = "oldest", value_parser = ["oldest", "newest"])]
    first_message: String,

    /// The nginx binary.
    #[arg(long, default_value = "/usr/sbin/nginx", value_name = "PATH")]
    nginx: PathBuf,

    /// nchan's dynamic module.
    #[arg(long, default_value = "/usr/lib/nginx/modules/ngx_nchan_module.so", value_name = "PATH")]
    nchan_module: PathBuf,

    #[command(flatten)]
    push: PushArgs,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    check_installed(&args.nginx, &args.nchan_module)?;
    let mut nchan = Nchan {
        nginx: args.nginx.clone(),
        module: args.nchan_module.clone(),
        buffer_length: args.buffer_length,
        first_message: args.first_message.clone(),
        cpus: args.push.bins.edge_cpus.clone(),
        publisher: Publisher::start(args.publish_every),
    };
    let mut up = if args.with_livepush { Some(Upstream::start(&args.push).await?) } else { None };
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut failed = Vec::new();
    for &n in &args.sizes.connections {
        let shape = Shape { edges: 1, events: 1, per_event: n };
        if let Some(up) = up.as_mut() {
            eprintln!("nchan scenario: livepush, {n} connections");
            match push::measure(&args.push, shape, up).await {
                Ok(o) => outcomes.push(Outcome { column: format!("livepush {n}"), ..o }),
                Err(e) => failed.push(format!("livepush, {n} connections: the run failed: {e:#}")),
            }
        }
        eprintln!("nchan scenario: nchan, {n} connections");
        match push::measure(&args.push, shape, &mut nchan).await {
            Ok(o) => {
                let column = if args.with_livepush { format!("nchan {n}") } else { n.to_string() };
                outcomes.push(Outcome { column, ..o });
            }
            Err(e) => failed.push(format!("nchan, {n} connections: the run failed: {e:#}")),
        }
    }
    let published = nchan.publisher.stop().await;
    let push = Params::new(&args.push, up.as_ref(), &outcomes);
    if let Some(up) = up {
        up.stop().await?;
    }
    if outcomes.is_empty() {
        bail!("no run succeeded: {}", failed.join("; "));
    }

    let sizes = args.sizes.connections.iter().map(u32::to_string).collect::<Vec<_>>().join(" / ");
    let title = if args.with_livepush {
        format!(
            "livepush-bench nchan: one channel, {sizes} SSE connections, livepush (one edge) and nchan (one nginx)"
        )
    } else {
        format!("livepush-bench nchan: one channel, one nginx with nchan, {sizes} EventSource connections")
    };
    let figures = NchanFigures {
        params: nchan.params(&args, push),
        versus: if args.with_livepush { versus(&outcomes) } else { Vec::new() },
        runs: &outcomes,
    };
    let mut report = Report::new("nchan", title, &figures)?;
    report.note(push::latency_note(if args.with_livepush {
        "stamped by media-sim serving it (livepush) or by the harness just before it POSTs the update (nchan)"
    } else {
        "stamped by the harness just before it POSTs the update to nchan"
    }));
    report.note(published);
    for f in failed {
        report.note(f);
    }
    Ok(report)
}

#[derive(Serialize)]
struct NchanFigures<'a> {
    params: NchanParams<'a>,
    runs: &'a [Outcome],
    /// nchan / livepush at the same size (< 1: nchan lower).
    versus: Vec<Versus>,
}

#[derive(Serialize)]
struct NchanParams<'a> {
    #[serde(flatten)]
    push: Params<'a>,
    publish_every_s: f64,
    nginx_version: String,
    nginx_config: String,
    nchan_update: String,
}

#[derive(Serialize)]
struct Versus {
    column: String,
    rss_per_conn: Option<f64>,
    latency_p50: Option<f64>,
    latency_p99: Option<f64>,
    cpu_per_delivery: Option<f64>,
}

/// Each nchan column against the livepush column of its size.
fn versus(outcomes: &[Outcome]) -> Vec<Versus> {
    let nchan = outcomes.iter().filter(|o| o.system == "nchan");
    nchan
        .filter_map(|n| {
            let l = outcomes.iter().find(|l| l.system == "livepush" && l.connections == n.connections)?;
            let ratio = |pick: &dyn Fn(&Outcome) -> Option<f64>| match (pick(l), pick(n)) {
                (Some(l), Some(n)) if l > 0.0 => Some(n / l),
                _ => None,
            };
            Some(Versus {
                column: n.column.clone(),
                rss_per_conn: ratio(&|o| Some(o.memory.rss_per_conn_kib)),
                latency_p50: ratio(&|o| o.delivery.latency_p50_ms),
                latency_p99: ratio(&|o| o.delivery.latency_p99_ms),
                cpu_per_delivery: ratio(&|o| Some(o.cpu.server_us_per_delivery)),
            })
        })
        .collect()
}

/// Fails with the apt command when nginx or the module is missing.
fn check_installed(nginx: &Path, module: &Path) -> anyhow::Result<()> {
    ensure!(
        nginx.is_file(),
        "no nginx binary at {} (on Debian: `{APT}`, or pass --nginx PATH)",
        nginx.display()
    );
    ensure!(
        module.is_file(),
        "no nchan module at {} (on Debian: `{APT}`, or pass --nchan-module PATH)",
        module.display()
    );
    Ok(())
}

/// nchan as a [`System`]: fresh nginx instances, one publisher feeding the
/// newest.
struct Nchan {
    nginx: PathBuf,
    module: PathBuf,
    buffer_length: u32,
    first_message: String,
    cpus: Option<String>,
    publisher: Publisher,
}

impl Nchan {
    fn params<'a>(&self, args: &Args, push: Params<'a>) -> NchanParams<'a> {
        NchanParams {
            push,
            publish_every_s: args.publish_every.as_secs_f64(),
            nginx_version: versions(&self.nginx),
            nginx_config: format!(
                "daemon off, master + worker_processes 1, worker_connections {WORKER_CONNECTIONS}, \
                 worker_rlimit_nofile {WORKER_RLIMIT_NOFILE}, access_log off, listen backlog=1024; \
                 GET /sub: nchan_subscriber eventsource, nchan_subscriber_first_message {}; \
                 POST /pub: nchan_publisher; one channel, nchan_message_buffer_length {}",
                self.first_message, self.buffer_length
            ),
            nchan_update: format!(
                "POST /pub, media-sim's document for {EVENT} (served_at_ms stamped just before the POST)"
            ),
        }
    }
}

impl System for Nchan {
    type Server = Nginx;

    fn name(&self) -> &'static str {
        "nchan"
    }

    fn server_name(&self) -> &'static str {
        "nginx"
    }

    async fn start_server(&mut self) -> anyhow::Result<Nginx> {
        let settings = Settings { buffer_length: self.buffer_length, first_message: &self.first_message };
        let mut nginx = Nginx::start(&self.nginx, &self.module, &settings, self.cpus.as_deref()).await?;
        // The channel has a message before anyone subscribes, as an edge has
        // the event's latest value: the warm-up stream gets its first event.
        publish(nginx.addr, &self.publisher.sim).await.context("the first publish to nchan failed")?;
        self.publisher.retarget(Some(nginx.addr));
        nginx.target = Some(self.publisher.target.clone());
        Ok(nginx)
    }

    fn stream_path(&self, _event: u32) -> String {
        "/sub".to_owned()
    }

    fn feeders(&self) -> Vec<(&'static str, u32)> {
        // The publisher is a task of the harness (this process).
        Vec::new()
    }

    async fn upstream_requests(&self) -> anyhow::Result<Option<u64>> {
        Ok(None)
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        ensure!(!self.publisher.task.is_finished(), "the nchan publisher stopped");
        Ok(())
    }
}

/// "nginx/1.22.1, libnginx-mod-nchan 1:1.3.6+dfsg-2": what `nginx -v` and
/// dpkg say (either may be unknown).
fn versions(nginx: &Path) -> String {
    let nginx_v = Command::new(nginx)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().trim_start_matches("nginx version: ").to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "nginx (version unknown)".to_owned());
    let module = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "libnginx-mod-nchan"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!("libnginx-mod-nchan {}", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| "nchan (package version unknown)".to_owned());
    format!("{nginx_v}, {module}")
}

/// A running nginx: the master is our child, its workers are found in
/// `/proc`. Stopping it stops the publisher's POSTs to it first, then the
/// master (SIGTERM: nginx's fast shutdown, which ends the workers), then
/// kills any worker left behind, then removes its directory.
pub struct Nginx {
    proc: Option<Proc>,
    addr: SocketAddr,
    cmd: String,
    _dir: tempfile::TempDir,
    /// The publisher's target, cleared before nginx stops.
    target: Option<Arc<Mutex<Option<SocketAddr>>>>,
}

impl Nginx {
    async fn start(
        nginx: &Path,
        module: &Path,
        settings: &Settings<'_>,
        cpus: Option<&str>,
    ) -> anyhow::Result<Self> {
        // Its configuration, logs and temp files; removed when the server is dropped.
        let tmp = tempfile::Builder::new()
            .prefix("livepush-bench-nchan-")
            .tempdir()
            .context("creating nginx's directory")?;
        let dir = tmp.path();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, stack::free_port()?));
        let conf = dir.join("nginx.conf");
        let text = config(dir, module, addr, settings, running_as_root());
        std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        let error_log = dir.join("error.log");
        let args = [
            "-p".to_owned(),
            format!("{}/", dir.display()),
            "-c".to_owned(),
            conf.display().to_string(),
            "-e".to_owned(),
            error_log.display().to_string(),
        ];
        let (mut cmd, prefix) = match cpus {
            Some(cpus) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", cpus]).arg(nginx);
                (cmd, format!("taskset -c {cpus} "))
            }
            None => (Command::new(nginx), String::new()),
        };
        cmd.args(&args);
        let shown = format!("{prefix}{} {}", nginx.display(), stack::shell_words(&args));
        let mut child = Child::spawn("nginx", cmd)?;
        let ready = stack::wait_for(&mut child, "nginx", || async move {
            matches!(httpc::get(addr, "/healthz", Duration::from_secs(1)).await, Ok((200, _)))
        })
        .await;
        let mut server = Self {
            proc: Some(Proc { child, addr, cmd: shown.clone() }),
            addr,
            cmd: shown,
            _dir: tmp,
            target: None,
        };
        if let Err(e) = ready {
            let log = std::fs::read_to_string(&error_log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{e:#}; nginx's error.log ends with: {}", tail.join(" | "));
        }
        // Answering means a worker runs; make sure it is visible in /proc.
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.workers()?.is_empty() {
            ensure!(Instant::now() < deadline, "nginx answers but has no worker process");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.ensure_running()?;
        Ok(server)
    }

    fn master(&self) -> u32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }

    fn workers(&self) -> anyhow::Result<Vec<u32>> {
        procstat::children(self.master())
    }

    /// Stops the master (SIGTERM, then SIGKILL after a grace period), then
    /// kills workers that outlived it, then removes the directory.
    fn shut_down(&mut self) -> Option<Proc> {
        if let Some(target) = &self.target {
            *target.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        self.proc.take()
    }

    fn clean_up(&self, workers: &[u32]) {
        for &pid in workers {
            // Still an nginx process (the pid not reused): it outlived its
            // master, so it is killed by pid.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(b"nginx: ") {
                let _ = child::signal(pid, child::Signal::KILL);
            }
        }
    }
}

impl Server for Nginx {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn cmd(&self) -> &str {
        &self.cmd
    }

    /// The master, then its workers.
    fn pids(&self) -> anyhow::Result<Vec<u32>> {
        let mut pids = vec![self.master()];
        pids.extend(self.workers()?);
        Ok(pids)
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.proc.as_mut() {
            Some(p) => p.child.ensure_running(),
            None => bail!("nginx was already stopped"),
        }
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        let workers = self.workers().unwrap_or_default();
        let stopped = match self.shut_down() {
            Some(p) => p.stop().await,
            None => Ok(()),
        };
        self.clean_up(&workers);
        stopped
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Only reached on error paths (stop() already took the process).
        if self.proc.is_some() {
            let workers = self.workers().unwrap_or_default();
            drop(self.shut_down());
            self.clean_up(&workers);
        }
    }
}

/// Whether this process runs as root (then nginx's workers would switch to
/// `nobody` unless told otherwise).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_ascii_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
}

/// nchan's settings that the command line chooses.
struct Settings<'a> {
    buffer_length: u32,
    first_message: &'a str,
}

/// The nginx.conf of one instance: everything it writes stays in `dir`.
fn config(dir: &Path, module: &Path, addr: SocketAddr, settings: &Settings<'_>, root: bool) -> String {
    let d = dir.display();
    let Settings { buffer_length, first_message } = settings;
    // As root the workers keep our user, like the edge (else `nobody`).
    let user = if root { "user root;\n" } else { "" };
    format!(
        "# written by livepush-bench nchan
load_module {module};
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {WORKER_RLIMIT_NOFILE};
{user}pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections {WORKER_CONNECTIONS};
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    server {{
        listen {addr} backlog=1024;
        nchan_message_buffer_length {buffer_length};

        location = /healthz {{
            return 200 \"ok\\n\";
        }}

        location = /sub {{
            nchan_subscriber eventsource;
            nchan_channel_id {CHANNEL};
            nchan_subscriber_first_message {first_message};
        }}

        location = /pub {{
            nchan_publisher;
            nchan_channel_id {CHANNEL};
            allow 127.0.0.1;
            deny all;
        }}
    }}
}}
",
        module = module.display(),
    )
}

/// POSTs media-sim's current document (stamped now) to nchan's publisher
/// location; nchan answers 201 (delivered to subscribers) or 202 (queued).
async fn publish(addr: SocketAddr, sim: &Sim) -> anyhow::Result<()> {
    let id = EventId::parse(EVENT).map_err(|e| anyhow::anyhow!("{EVENT}: {e}"))?;
    let doc = sim.current(&id).context("media-sim's document")?;
    let (status, body) = httpc::post_json(addr, "/pub", &[], &doc.body, PUBLISH_TIMEOUT).await?;
    ensure!((200..300).contains(&status), "POST /pub answered {status}: {}", body.trim());
    Ok(())
}

/// One update per interval to the current nginx, for the whole invocation.
struct Publisher {
    sim: Sim,
    target: Arc<Mutex<Option<SocketAddr>>>,
    published: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    first_error: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl Publisher {
    fn start(every: Duration) -> Self {
        // Stamped documents, as media-sim --stamp serves them to the poller.
        let sim = Sim::new(every, true);
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let published = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let first_error: Arc<Mutex<Option<String>>> = Arc::default();
        let get = |m: &Mutex<Option<SocketAddr>>| *m.lock().unwrap_or_else(PoisonError::into_inner);
        let task = tokio::spawn({
            let (sim, target, published, failed, first_error) =
                (sim.clone(), target.clone(), published.clone(), failed.clone(), first_error.clone());
            async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(addr) = get(&target) else { continue };
                    match publish(addr, &sim).await {
                        Ok(()) => {
                            published.fetch_add(1, Relaxed);
                        }
                        // A publish racing the stop of its nginx is no failure.
                        Err(_) if get(&target) != Some(addr) => {}
                        Err(e) => {
                            failed.fetch_add(1, Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
            }
        });
        Self { sim, target, published, failed, first_error, task }
    }

    fn retarget(&self, addr: Option<SocketAddr>) {
        *self.target.lock().unwrap_or_else(PoisonError::into_inner) = addr;
    }

    /// Stops publishing; a line for the report.
    async fn stop(&self) -> String {
        self.retarget(None);
        self.task.abort();
        let failed = self.failed.load(Relaxed);
        let mut line = format!(
            "nchan publisher: {} updates published by the ticker (plus one per nginx before its warm-up), {failed} failed",
            self.published.load(Relaxed)
        );
        if let Some(e) = self.first_error.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            line.push_str(&format!(" (first: {e})"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_everything_in_its_directory() {
        let addr: SocketAddr = "127.0.0.1:18555".parse().unwrap();
        let settings = Settings { buffer_length: 1, first_message: "oldest" };
        let text = config(Path::new("/tmp/x"), Path::new("/m/nchan.so"), addr, &settings, true);
        for want in [
            "load_module /m/nchan.so;\n",
            "daemon off;\n",
            "worker_processes 1;\n",
            "worker_rlimit_nofile 20000;\n",
            "user root;\n",
            "pid /tmp/x/nginx.pid;\n",
            "error_log /tmp/x/error.log warn;\n",
            "worker_connections 19000;\n",
            "client_body_temp_path /tmp/x/client_body;\n",
            "listen 127.0.0.1:18555 backlog=1024;\n",
            "nchan_message_buffer_length 1;\n",
            "nchan_subscriber eventsource;\n",
            "nchan_subscriber_first_message oldest;\n",
            "nchan_channel_id live;\n",
            "nchan_publisher;\n",
            "return 200 \"ok\\n\";\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        let settings = Settings { buffer_length: 3, first_message: "newest" };
        let other = config(Path::new("/tmp/x"), Path::new("/m"), addr, &settings, false);
        assert!(!other.contains("user ") && other.contains("first_message newest;\n"), "{other}");
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn missing_nginx_names_the_packages() {
        let e = check_installed(Path::new("/nonexistent/nginx"), Path::new("/nonexistent/m.so")).unwrap_err();
        assert!(e.to_string().contains("apt-get install nginx libnginx-mod-nchan"), "{e}");
    }
}
