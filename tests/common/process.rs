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
        let logs = std::env::var_os("LIVEPUSH_TEST_LOGS").is_some();
        let child = Command::new(bin)
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(if logs { Stdio::inherit() } else { Stdio::null() })
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
}

/// A loopback address with a port that was free a moment ago (the process
/// binds it itself; restarting one on the same address needs it known).
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().unwrap()
}

/// Waits until `GET url` answers 200.
pub async fn wait_ok(url: &str) {
    let client = reqwest::Client::new();
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
