//! The real `poller` and `edge` binaries as child processes, for tests that
//! kill one (`kill -9` cannot be done to a task in the test's own process).
//!
//! The binaries are built from the same `main.rs` files as the shipped ones
//! (see `[[bin]]` in this crate's Cargo.toml), so cargo gives each test file
//! their paths as `env!("CARGO_BIN_EXE_livepush-test-poller")` and
//! `env!("CARGO_BIN_EXE_livepush-test-edge")`.

use crate::PATIENCE;
use std::{net::SocketAddr, process::Stdio, time::Duration};
use tokio::process::{Child, Command};

/// A running binary; dropping it kills it.
pub struct Process {
    pub addr: SocketAddr,
    child: Child,
}

impl Process {
    /// Starts `bin --listen addr args…`; its logs show only with
    /// `LIVEPUSH_TEST_LOGS=1` (at `RUST_LOG`, default `warn`).
    pub fn start(bin: &str, addr: SocketAddr, args: &[&str]) -> Self {
        Self::start_with(bin, addr, args, &[], None)
    }

    /// Like [`Process::start`], with extra environment variables (`env`;
    /// the proxy variables are cleared unless given here) and, with `log`,
    /// the process's whole standard output written to that file (set
    /// `RUST_LOG` in `env` to choose the level).
    pub fn start_with(
        bin: &str,
        addr: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Self {
        let logs = std::env::var_os("LIVEPUSH_TEST_LOGS").is_some();
        let stdout = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("create the log file")),
            None if logs => Stdio::inherit(),
            None => Stdio::null(),
        };
        let mut command = Command::new(bin);
        command
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
            command.env_remove(var).env_remove(var.to_ascii_lowercase());
        }
        let child = command
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        Self { addr, child }
    }

    /// `SIGKILL`: no drain, no goodbye, sockets closed by the kernel.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process's resident memory in bytes and its open file
    /// descriptors, from /proc.
    pub fn rss_and_fds(&self) -> (u64, usize) {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc fd").count();
        (kib * 1024, fds)
    }

    /// The value of one series on this process's `/metrics`, e.g.
    /// `livepush_poller_upstream_requests_total{outcome="tls"}` (0 if absent).
    pub async fn metric(&self, series: &str) -> f64 {
        crate::metric(&self.url(), series).await
    }
}

/// A loopback address with a port that was free a moment ago (the process
/// binds it itself; restarting one on the same address needs it known).
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().unwrap()
}

/// Waits until `GET url` answers 200.
pub async fn wait_ok(url: &str) {
    let client = crate::http();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(r) = client.get(url).timeout(Duration::from_secs(1)).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} not OK in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
