//! Scenario `nchan`: `fanout`'s measurement against nginx with the nchan module, one
//! channel, updates published by the harness. BENCHMARKS.md ("Scenario 5") has the setup.

use crate::{
    child::Child,
    httpc,
    push::{PushArgs, Runs, Server, ShapeArgs, at_least_1s, event_id},
    report::Report,
    stack::{self, Proc},
};
use anyhow::{Context, ensure};
use media_sim::Sim;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, OnceLock, atomic::AtomicU64, atomic::Ordering::Relaxed},
    time::Duration,
};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// SSE connections; a list (1000,5000,15000) runs each size on a fresh server.
    #[arg(long, value_delimiter = ',', default_value = "1000", value_parser = clap::value_parser!(u32).range(1..=18_000))]
    connections: Vec<u32>,
    /// Also run livepush (as `fanout`) at each size, just before nchan, in the same session.
    #[arg(long)]
    with_livepush: bool,
    /// Publish one update to the channel this often.
    #[arg(long, default_value = "1s", value_parser = at_least_1s)]
    publish_every: Duration,
    /// `nchan_message_buffer_length`: a new subscriber first gets the oldest kept.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    buffer_length: u32,
    /// `nchan_subscriber_first_message`: `oldest` replays the buffered update at once, as the edge does.
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
    for (path, flag) in [(&args.nginx, "--nginx"), (&args.nchan_module, "--nchan-module")] {
        let apt = "apt-get install nginx libnginx-mod-nchan";
        ensure!(path.is_file(), "no {} (on Debian: `{apt}`, or pass {flag} PATH)", path.display());
    }
    let published = Arc::new(Published::default());
    let mut runs = Runs::new(&args.push, args.with_livepush).await?;
    for &n in &args.connections {
        let shape = ShapeArgs { events: 1, browsers: n, edges: 1 };
        let mut column = n.to_string();
        if args.with_livepush {
            runs.measure(shape.clone(), Ok(Vec::new()), format!("livepush {n}")).await;
            column = format!("nchan {n}");
        }
        runs.measure(shape, start(&args, &published).await.map(|s| vec![s]), column).await;
    }
    let both = if args.with_livepush { "livepush (one edge) and " } else { "" };
    let title = format!("one channel, N SSE connections, {both}nchan (one nginx)");
    let mut report = runs.report("nchan", &title).await?;
    let first = published.first_error.get().map_or(String::new(), |e| format!(" (first: {e})"));
    let (ok, n) = (published.ok.load(Relaxed), published.failed.load(Relaxed));
    report.note(format!("nchan publisher: {ok} ticks published (besides the first), {n} failed{first}"));
    report.note(versions(&args.nginx));
    Ok(report)
}

/// "nginx/1.22.1, libnginx-mod-nchan 1:1.3.6+dfsg-2": what `nginx -v` and dpkg say.
fn versions(nginx: &Path) -> String {
    let out = |c: &mut Command| c.output().map(|o| [o.stdout, o.stderr].concat()).unwrap_or_default();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).trim().replace("nginx version: ", "");
    let dpkg = out(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "libnginx-mod-nchan"]));
    format!("{}, libnginx-mod-nchan {}", text(out(Command::new(nginx).arg("-v"))), text(dpkg))
}

/// What the ticker's publishes gave, over all nginx instances.
/// Counts, not a list: a publisher runs as long as its nginx does.
#[derive(Default)]
struct Published {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: OnceLock<String>,
}

/// A fresh nginx, answering, with a message in the channel and its publisher.
async fn start(args: &Args, published: &Arc<Published>) -> anyhow::Result<Server> {
    // Its configuration, logs and temp files, removed with the server.
    let dir = tempfile::Builder::new().prefix("livepush-bench-nchan-").tempdir()?;
    let d = dir.path().display().to_string();
    let addr = stack::free_addr()?;
    let conf = config(&d, args, addr, rustix::process::geteuid().is_root());
    std::fs::write(dir.path().join("nginx.conf"), conf).context("writing nginx.conf")?;
    // Pinned like the edge, with --edge-cpus.
    let mut argv = stack::pinned(args.push.bins.edge_cpus.as_deref(), args.nginx.display().to_string());
    argv.extend(["-p", &format!("{d}/"), "-c", "nginx.conf", "-e", "error.log"].map(String::from));
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let mut child = Child::spawn("nginx", cmd)?;
    if let Err(e) = stack::wait_for(&mut child, "nginx", || stack::http_ok(addr, "/healthz")).await {
        let log = std::fs::read_to_string(format!("{d}/error.log")).unwrap_or_default();
        anyhow::bail!("{e:#}; nginx's error.log: {}", log.trim().replace('\n', " | "));
    }
    // The channel has a message before anyone subscribes, as an edge has the
    // event's latest value: the warm-up stream gets its first event.
    let sim = Sim::new(args.publish_every, true);
    publish(addr, &sim).await.context("the first publish to nchan failed")?;
    let (every, published) = (args.publish_every, published.clone());
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match publish(addr, &sim).await {
                Ok(()) => _ = published.ok.fetch_add(1, Relaxed),
                Err(e) => {
                    published.failed.fetch_add(1, Relaxed);
                    _ = published.first_error.set(format!("{e:#}"));
                }
            }
        }
    });
    let proc = Proc { child, addr, cmd: stack::shell_words(&argv) };
    Ok(Server::started(proc, Some((AbortOnDropHandle::new(publisher), dir))))
}

/// The nginx.conf of one instance: everything it writes stays in `d`. As
/// root the worker keeps our user, like the edge (else `nobody`).
fn config(d: &str, args: &Args, addr: SocketAddr, root: bool) -> String {
    let tmp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map(|t| format!("{t}_temp_path {d}/{t};"));
    let (module, user) = (args.nchan_module.display(), if root { "user root;" } else { "" });
    let (buffer, first) = (args.buffer_length, &args.first_message);
    format!(
        "load_module {module};
daemon off; master_process on; worker_processes 1; worker_rlimit_nofile 20000; {user}
pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 19000; }}
http {{
    access_log off; {tmp}
    server {{
        listen {addr} backlog=1024;
        nchan_message_buffer_length {buffer};
        location = /healthz {{ return 200 \"ok\\n\"; }}
        location = /sub {{
            nchan_subscriber eventsource; nchan_channel_id live; nchan_subscriber_first_message {first};
        }}
        location = /pub {{ nchan_publisher; nchan_channel_id live; allow 127.0.0.1; deny all; }}
    }}
}}
",
        tmp = tmp.join(" ")
    )
}

/// POSTs media-sim's current document (stamped now) to nchan's publisher
/// location; nchan answers 201 (delivered to subscribers) or 202 (queued).
async fn publish(addr: SocketAddr, sim: &Sim) -> anyhow::Result<()> {
    // The document of `fanout`'s event.
    let id = livepush::EventId::parse(&event_id(0)).map_err(|e| anyhow::anyhow!("{}: {e}", event_id(0)))?;
    let doc = sim.current(&id).context("media-sim's document")?;
    let (status, body) = httpc::post_json(addr, "/pub", &[], &doc.body, Duration::from_secs(2)).await?;
    ensure!((200..300).contains(&status), "POST /pub answered {status}: {}", body.trim());
    Ok(())
}
