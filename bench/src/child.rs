//! A child process that never outlives the harness: however a scenario ends
//! (figures printed, an error, Ctrl-C dropping the future) the guard sends
//! SIGTERM, waits a bounded grace period, then SIGKILLs it.

use anyhow::{Context, bail};
use std::{
    os::fd::AsFd,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

pub use rustix::process::Signal;

/// How long a child may take to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw);
    Ok(rustix::process::kill_process(pid.ok_or(std::io::ErrorKind::InvalidInput)?, sig)?)
}

pub struct Child {
    name: String,
    inner: Option<std::process::Child>,
}

impl Child {
    /// Starts `cmd` with stdin closed and its stdout on our stderr, so its
    /// log never mixes with the report on our stdout.
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Self> {
        let stderr = std::io::stderr().as_fd().try_clone_to_owned().context("duplicating stderr")?;
        cmd.stdin(Stdio::null()).stdout(Stdio::from(stderr));
        let child = cmd.spawn().with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self { name: name.to_owned(), inner: Some(child) })
    }

    pub fn pid(&self) -> u32 {
        self.inner.as_ref().map_or(0, std::process::Child::id)
    }

    /// Fails if the child has already exited (it should run until stopped).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.inner.as_mut() else { bail!("{} was already stopped", self.name) };
        match child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited early: {status}", self.name),
        }
    }

    /// Stops the child (see the module doc) off the runtime's threads.
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.inner.take() else { bail!("{} was already stopped", self.name) };
        let name = std::mem::take(&mut self.name);
        let status = tokio::task::spawn_blocking(move || terminate(&mut child)).await?;
        status.with_context(|| format!("stopping {name}"))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Blocks for at most GRACE: only reached on error paths.
        if let Some(Err(e)) = self.inner.as_mut().map(terminate) {
            eprintln!("could not stop {}: {e}", self.name);
        }
    }
}

/// SIGTERM, up to [`GRACE`] to exit, then SIGKILL. The child is reaped only
/// here, so its pid cannot have been reused when it is signalled.
fn terminate(child: &mut std::process::Child) -> std::io::Result<ExitStatus> {
    let asked = child.try_wait()?.is_none() && signal(child.id(), Signal::TERM).is_ok();
    let deadline = Instant::now() + if asked { GRACE } else { Duration::ZERO };
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            child.kill()?;
            return child.wait();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
