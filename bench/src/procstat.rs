//! CPU time and memory of a process, read from `/proc` (Linux only).
//!
//! Reading the kernel's own accounting costs nothing measurable and needs no
//! cooperation from the measured process, so the poller is benchmarked
//! exactly as it ships. CPU time is `utime + stime` from `/proc/PID/stat`
//! (user and system time of every thread), memory is `VmRSS` and `VmHWM`
//! (peak RSS) from `/proc/PID/status`.

use anyhow::{Context, bail};
use std::{process::Command, sync::OnceLock};

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// User plus system CPU time since the process started.
    pub cpu_seconds: f64,
    /// Resident set size now.
    pub rss_bytes: u64,
    /// Largest resident set size so far.
    pub peak_rss_bytes: u64,
}

/// Reads the counters of process `pid`.
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&stat_path).with_context(|| format!("reading {stat_path}"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("parsing {stat_path}"))?;
    let status_path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&status_path).with_context(|| format!("reading {status_path}"))?;
    let kib = |key| status_kib(&status, key).with_context(|| format!("no {key} in {status_path}"));
    Ok(Sample {
        cpu_seconds: ticks as f64 / clock_ticks_per_second() as f64,
        rss_bytes: kib("VmRSS")? * 1024,
        peak_rss_bytes: kib("VmHWM")? * 1024,
    })
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line, in clock
/// ticks. Fields are counted after the command name, which is in parentheses
/// and may itself contain spaces and parentheses, hence the last `)`.
fn cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let Some((_, rest)) = stat.rsplit_once(')') else { bail!("no ')' after the command name") };
    // `rest` starts at field 3 (state), so utime (14) is its 12th field.
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let mut next = |name| -> anyhow::Result<u64> {
        let f = fields.next().with_context(|| format!("missing {name}"))?;
        f.parse().with_context(|| format!("{name} is not a number: {f:?}"))
    };
    Ok(next("utime")? + next("stime")?)
}

/// The value in KiB of a `Key:   1234 kB` line of `/proc/PID/status`.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// `sysconf(_SC_CLK_TCK)`, the unit of the CPU times in `/proc/PID/stat`,
/// asked once of `getconf` (no libc binding needed). It is 100 on every
/// mainstream Linux build, which is the fallback if `getconf` is missing.
fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_survive_odd_command_names() {
        let stat = "4242 (my (odd) poller) S 1 4242 4242 0 -1 4194560 2306 0 0 0 1234 567 0 0 20 0 9 0 1 0";
        assert_eq!(cpu_ticks(stat).unwrap(), 1234 + 567);
        assert!(cpu_ticks("4242 poller S 1").is_err());
        assert!(cpu_ticks("4242 (poller) S 1 2").is_err());
    }

    #[test]
    fn status_values_in_kib() {
        let status = "Name:\tpoller\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(status_kib(status, "Threads"), None);
    }

    #[test]
    fn reads_our_own_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0 && s.peak_rss_bytes >= s.rss_bytes);
        assert!(s.cpu_seconds >= 0.0);
    }
}
