//! The measured process (the real poller binary), owned so that it never
//! outlives the harness: whatever way a scenario ends (figures printed, an
//! error, Ctrl-C dropping the future), the guard stops the child with SIGTERM,
//! waits a bounded grace period, then SIGKILLs it.
//!
//! A separate process is the point: its CPU time and RSS in `/proc` are its
//! own, not mixed with the load generator's.

use anyhow::{Context, bail};
use std::{
    os::fd::AsFd,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

pub use rustix::process::Signal;

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or(std::io::ErrorKind::InvalidInput)?;
    Ok(rustix::process::kill_process(pid, sig)?)
}

/// How long a child may take to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

pub struct Child {
    name: String,
    inner: Option<std::process::Child>,
}

impl Child {
    /// Starts `cmd`. Its stdout goes to our stderr so its log lines never mix
    /// with the report on our stdout; its stdin is closed.
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Self> {
        let stderr = std::io::stderr().as_fd().try_clone_to_owned().context("duplicating stderr")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(stderr))
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self { name: name.to_owned(), inner: Some(child) })
    }

    pub fn pid(&self) -> u32 {
        self.inner.as_ref().map_or(0, std::process::Child::id)
    }

    /// Fails if the child has already exited (it should run until stopped).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.inner.as_mut() else { bail!("{} was already stopped", self.name) };
        match child.try_wait().with_context(|| format!("checking on {}", self.name))? {
            None => Ok(()),
            Some(status) => bail!("{} exited early: {status}", self.name),
        }
    }

    /// Stops the child (see the module doc) without blocking the runtime.
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let name = self.name.clone();
        let Some(mut child) = self.inner.take() else { bail!("{name} was already stopped") };
        tokio::task::spawn_blocking(move || terminate(&mut child, GRACE))
            .await
            .context("joining the stopping thread")?
            .with_context(|| format!("stopping {name}"))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut child) = self.inner.take() {
            // Blocks for at most GRACE: only reached on error paths.
            if let Err(e) = terminate(&mut child, GRACE) {
                eprintln!("could not stop {}: {e}", self.name);
            }
        }
    }
}

/// SIGTERM, up to `grace` for the child to exit, then SIGKILL. The child is
/// not reaped before this returns, so its pid cannot have been reused.
fn terminate(child: &mut std::process::Child, grace: Duration) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    // std only offers SIGKILL.
    if signal(child.id(), Signal::TERM).is_ok() {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    child.kill()?;
    child.wait()
}
