//! Gives memory back to the operating system after a crowd of browsers
//! leaves.
//!
//! Each connection's allocations are small and scattered, so when thousands
//! close at once glibc's allocator keeps the freed pages in its arenas: the
//! edge's RSS stayed megabytes above its level before a churn of 1,000
//! streams. Once [`TRIM_AFTER_DROP`] streams and upstream streams have
//! closed (the limits record the peak, so a crowd that came and went
//! between two looks counts; upstream streams close after their grace, and
//! their buffers are freed only then) and nothing more closed since the
//! last look, `malloc_trim` returns free pages (on a blocking thread; it
//! walks the heap): 12.6 MiB of anonymous memory after 1,000 streams came
//! and went fell to 3.9 MiB. At most once per [`CHECK_EVERY`], and never
//! while streams only grow, so a steady edge never pays for it.
//!
//! Trimming returns only whole free pages, and after a churn glibc's
//! defaults leave few: each runtime worker allocates from an arena of its
//! own and keeps a per-thread cache of freed chunks (tcache), and the
//! chunks a thread cache holds and the few live allocations made during
//! the crowd keep most pages of both arenas partly in use (the churn
//! benchmark: 4.7 MiB resident in the workers' arenas against 1.2 MiB in
//! use, after every trim). So the edge runs with one arena and no thread
//! cache ([`TUNABLES`], set by [`tune_allocator`] before any thread
//! exists): RSS after the 10,000-browser churn 9.4-9.6 MiB against
//! 11.9-15.1 with the defaults, from the same 8.6 MiB before, at the same
//! CPU per delivery (BENCHMARKS.md, scenario `churn`).

use crate::{feeds::Feeds, limits::StreamLimits};
use std::{ffi::OsStr, time::Duration};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How often the stream count is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Streams that must have closed since the last high before a trim.
const TRIM_AFTER_DROP: usize = 256;
/// A second trim this long after one: the viewers of a crowd are forgotten
/// only after the next heartbeat report (every 10 s by default).
const FOLLOW_UP: Duration = Duration::from_secs(12);

/// Runs until `stop`.
pub async fn trim_after_crowds(limits: StreamLimits, feeds: Feeds, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    // Streams and upstream streams closed since the last trim.
    let mut released = 0usize;
    let mut follow_up: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (peak, open) = limits.take_peak();
        let now = peak.saturating_sub(open) + feeds.take_closed();
        released += now;
        // Trim once the crowd is gone: nothing more closed since the last
        // look, so the pages it freed are all free now.
        let due = follow_up.is_some_and(|at| tokio::time::Instant::now() >= at);
        if (released >= TRIM_AFTER_DROP && now == 0) || due {
            let trimmed = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            debug!(released, trimmed, "returned free memory after streams closed");
            follow_up = (!due).then(|| tokio::time::Instant::now() + FOLLOW_UP);
            released = 0;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim only releases free memory at the top of the heap
    // and in arenas; it takes the allocator's own locks and is safe to call
    // from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

/// The glibc malloc tunables the edge runs with: one arena for every thread
/// and no per-thread cache of freed chunks (see the module's doc).
pub const TUNABLES: &str = "glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0";

/// The environment variable glibc reads its tunables from, once, at start.
const ENV: &str = "GLIBC_TUNABLES";

/// What [`tune_allocator`] found, to be logged once logging is set up.
#[derive(Debug, PartialEq, Eq)]
pub enum Tuning {
    /// The process runs with [`TUNABLES`] (in this `GLIBC_TUNABLES`).
    Tuned(String),
    /// `GLIBC_TUNABLES` (this value) already sets the arena count or the
    /// thread cache: the operator's choice stands.
    Operator(String),
    /// glibc's defaults: not a glibc build, or starting again failed.
    Defaults(String),
}

impl Tuning {
    /// One line at start-up saying which allocator settings are in force.
    pub fn log(&self) {
        match self {
            Tuning::Tuned(value) => {
                tracing::info!(tunables = %value, "malloc: one arena, no thread cache")
            }
            Tuning::Operator(value) => {
                tracing::info!(tunables = %value, "malloc: GLIBC_TUNABLES as the operator set it")
            }
            Tuning::Defaults(why) => tracing::warn!(
                %why,
                "malloc: glibc's defaults; RSS may stay higher after a crowd leaves"
            ),
        }
    }
}

/// What to do given the `GLIBC_TUNABLES` this process started with.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Keep(Tuning),
    /// Start again with this value.
    Restart(String),
}

fn plan(current: Option<&OsStr>) -> Plan {
    let Some(current) = current else { return Plan::Restart(TUNABLES.to_owned()) };
    let Some(current) = current.to_str() else {
        return Plan::Keep(Tuning::Defaults(format!("{ENV} is not UTF-8")));
    };
    if current
        .split(':')
        .any(|t| t.starts_with("glibc.malloc.arena_max=") || t.starts_with("glibc.malloc.tcache_count="))
    {
        let ours = TUNABLES.split(':').all(|t| current.split(':').any(|c| c == t));
        let value = current.to_owned();
        return Plan::Keep(if ours { Tuning::Tuned(value) } else { Tuning::Operator(value) });
    }
    match current.trim_matches(':') {
        "" => Plan::Restart(TUNABLES.to_owned()),
        other => Plan::Restart(format!("{other}:{TUNABLES}")),
    }
}

/// Makes the edge run with [`TUNABLES`]: glibc reads them only when a
/// process starts, so unless `GLIBC_TUNABLES` already has them (or sets
/// either tunable itself) this executes the edge again, same PID, same
/// arguments, with them added, and does not return. Call it first thing in
/// `main`, before any thread or runtime exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_allocator() -> Tuning {
    use std::os::unix::process::CommandExt;
    let value = match plan(std::env::var_os(ENV).as_deref()) {
        Plan::Keep(tuning) => return tuning,
        Plan::Restart(value) => value,
    };
    let mut args = std::env::args_os();
    let mut again = std::process::Command::new("/proc/self/exe");
    if let Some(name) = args.next() {
        again.arg0(name);
    }
    // Only returns if the exec failed.
    let err = again.args(args).env(ENV, value).exec();
    Tuning::Defaults(format!("starting again with {TUNABLES} failed: {err}"))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() -> Tuning {
    Tuning::Defaults("not glibc".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_for(v: &str) -> Plan {
        plan(Some(OsStr::new(v)))
    }

    #[test]
    fn adds_the_tunables_to_whatever_else_is_set() {
        assert_eq!(plan(None), Plan::Restart(TUNABLES.to_owned()));
        assert_eq!(plan_for(""), Plan::Restart(TUNABLES.to_owned()));
        assert_eq!(
            plan_for("glibc.malloc.trim_threshold=65536"),
            Plan::Restart(format!("glibc.malloc.trim_threshold=65536:{TUNABLES}"))
        );
    }

    #[test]
    fn runs_tuned_once_started_again() {
        assert_eq!(plan_for(TUNABLES), Plan::Keep(Tuning::Tuned(TUNABLES.to_owned())));
        let again = format!("glibc.malloc.trim_threshold=65536:{TUNABLES}");
        assert_eq!(plan_for(&again), Plan::Keep(Tuning::Tuned(again.clone())));
    }

    #[test]
    fn an_operators_choice_stands() {
        for v in ["glibc.malloc.tcache_count=7", "glibc.malloc.arena_max=4", "glibc.malloc.arena_max=1"] {
            assert_eq!(plan_for(v), Plan::Keep(Tuning::Operator(v.to_owned())), "{v}");
        }
        // A look-alike that is not the tunable does not count as one.
        assert_eq!(
            plan_for("glibc.malloc.arena_max_x=1"),
            Plan::Restart(format!("glibc.malloc.arena_max_x=1:{TUNABLES}"))
        );
    }

    #[test]
    fn a_value_that_is_not_utf8_is_left_alone() {
        use std::os::unix::ffi::OsStrExt;
        let bad = OsStr::from_bytes(b"glibc.malloc.\xff");
        assert!(matches!(plan(Some(bad)), Plan::Keep(Tuning::Defaults(_))));
    }
}
