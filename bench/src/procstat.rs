//! CPU time and memory of a process, read from `/proc` (Linux only).
//!
//! Reading the kernel's own accounting costs nothing measurable and needs no
//! cooperation from the measured process, so the poller is benchmarked
//! exactly as it ships. CPU time is `utime + stime` from `/proc/PID/stat`
//! (user and system time of every thread), memory is `VmRSS` and `VmHWM`
//! (peak RSS) from `/proc/PID/status`. For the evidence behind a memory
//! figure, [`memory_detail`] splits RSS into anonymous memory (the heap, where
//! per-connection state lives) and file-backed pages (the binary's code),
//! from `/proc/PID/status` and `/proc/PID/smaps_rollup`.

use anyhow::{Context, bail};
use std::{process::Command, sync::OnceLock};

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User plus system CPU time since the process started.
    pub cpu_seconds: f64,
    /// The part of it spent in the kernel (system calls, and on loopback the
    /// receiving side's TCP processing too).
    pub system_seconds: f64,
    /// Resident set size now.
    pub rss_bytes: u64,
    /// Largest resident set size so far.
    pub peak_rss_bytes: u64,
}

impl Sample {
    /// Adds `other`'s figures: the readings of a server made of several
    /// processes (nginx's master and workers). The peaks are each process's
    /// own, so their sum is an upper bound of the group's peak.
    pub fn add(&mut self, other: &Self) {
        self.cpu_seconds += other.cpu_seconds;
        self.system_seconds += other.system_seconds;
        self.rss_bytes += other.rss_bytes;
        self.peak_rss_bytes += other.peak_rss_bytes;
    }
}

/// Reads the counters of process `pid`.
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&stat_path).with_context(|| format!("reading {stat_path}"))?;
    let (user, system) = cpu_ticks(&stat).with_context(|| format!("parsing {stat_path}"))?;
    let tick = clock_ticks_per_second() as f64;
    let status_path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&status_path).with_context(|| format!("reading {status_path}"))?;
    let kib = |key| status_kib(&status, key).with_context(|| format!("no {key} in {status_path}"));
    Ok(Sample {
        cpu_seconds: (user + system) as f64 / tick,
        system_seconds: system as f64 / tick,
        rss_bytes: kib("VmRSS")? * 1024,
        peak_rss_bytes: kib("VmHWM")? * 1024,
    })
}

/// Where a process's resident memory is, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryDetail {
    /// `RssAnon`: anonymous pages (heap, stacks).
    pub rss_anon_kib: u64,
    /// `RssFile`: file-backed pages (mostly the binary's code).
    pub rss_file_kib: u64,
    /// `RssShmem`: shared memory pages this process has touched (nginx's
    /// shared zones, where nchan keeps channels and messages).
    pub rss_shmem_kib: u64,
    /// `Private_Dirty` of smaps_rollup: pages only this process wrote.
    pub private_dirty_kib: u64,
    /// `Threads`.
    pub threads: u64,
}

impl MemoryDetail {
    /// Adds `other`'s figures (see [`Sample::add`]).
    pub fn add(&mut self, other: &Self) {
        self.rss_anon_kib += other.rss_anon_kib;
        self.rss_file_kib += other.rss_file_kib;
        self.rss_shmem_kib += other.rss_shmem_kib;
        self.private_dirty_kib += other.private_dirty_kib;
        self.threads += other.threads;
    }
}

/// Reads the split of `pid`'s resident memory.
pub fn memory_detail(pid: u32) -> anyhow::Result<MemoryDetail> {
    let status_path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&status_path).with_context(|| format!("reading {status_path}"))?;
    let rollup_path = format!("/proc/{pid}/smaps_rollup");
    let rollup = std::fs::read_to_string(&rollup_path).with_context(|| format!("reading {rollup_path}"))?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
        .with_context(|| format!("no Threads in {status_path}"))?;
    Ok(MemoryDetail {
        rss_anon_kib: status_kib(&status, "RssAnon")
            .with_context(|| format!("no RssAnon in {status_path}"))?,
        rss_file_kib: status_kib(&status, "RssFile")
            .with_context(|| format!("no RssFile in {status_path}"))?,
        rss_shmem_kib: status_kib(&status, "RssShmem")
            .with_context(|| format!("no RssShmem in {status_path}"))?,
        private_dirty_kib: status_kib(&rollup, "Private_Dirty")
            .with_context(|| format!("no Private_Dirty in {rollup_path}"))?,
        threads,
    })
}

/// How many files (sockets included) process `pid` holds open: the entries
/// of `/proc/PID/fd`.
pub fn open_files(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&path).with_context(|| format!("listing {path}"))?;
    Ok(entries.filter(Result::is_ok).count() as u64)
}

/// The processes whose parent is `pid` (nginx's workers, for its master),
/// in pid order, found by reading the parent pid of every `/proc/PID/stat`.
/// Processes that exit during the scan are skipped.
pub fn children(pid: u32) -> anyhow::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        if parent_pid(&stat) == Some(pid) {
            found.push(child);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Field 4 (`ppid`) of a `/proc/PID/stat` line.
fn parent_pid(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds the whole host has spent busy (all cores: everything but
/// idle and iowait), from the first line of `/proc/stat`. Compared with the
/// measured processes' own CPU over a window, it tells how much other
/// programs on the machine competed with the run.
pub fn host_busy_seconds() -> anyhow::Result<f64> {
    let path = "/proc/stat";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let ticks = busy_ticks(&text).with_context(|| format!("parsing {path}"))?;
    Ok(ticks as f64 / clock_ticks_per_second() as f64)
}

fn busy_ticks(stat: &str) -> anyhow::Result<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu ")).context("no cpu line")?;
    let fields: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|f| f.parse().with_context(|| format!("not a number: {f:?}")))
        .collect::<anyhow::Result<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]; the
    // guest times are already included in user and nice.
    let Some(head) = fields.get(..8) else { bail!("fewer than 8 cpu fields") };
    Ok(head.iter().sum::<u64>() - head[3] - head[4])
}

/// The kernel's `TcpExt` counters named `keys`, from `/proc/net/netstat`
/// (this network namespace): e.g. `ListenOverflows`, the connections dropped
/// because an accept queue was full, which shows up as a client's connect
/// taking a SYN retransmission (1 s or more) longer.
pub fn tcp_ext(keys: &[&str]) -> anyhow::Result<Vec<u64>> {
    let path = "/proc/net/netstat";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    parse_tcp_ext(&text, keys).with_context(|| format!("parsing {path}"))
}

fn parse_tcp_ext(text: &str, keys: &[&str]) -> anyhow::Result<Vec<u64>> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { bail!("no TcpExt lines") };
    let pairs: Vec<(&str, &str)> =
        names.split_ascii_whitespace().zip(values.split_ascii_whitespace()).skip(1).collect();
    keys.iter()
        .map(|key| {
            let (_, v) = pairs.iter().find(|(n, _)| n == key).with_context(|| format!("no TcpExt {key}"))?;
            v.parse().with_context(|| format!("TcpExt {key} is not a number: {v:?}"))
        })
        .collect()
}

/// `utime` and `stime` (fields 14 and 15) of a `/proc/PID/stat` line, in
/// clock ticks. Fields are counted after the command name, which is in parentheses
/// and may itself contain spaces and parentheses, hence the last `)`.
fn cpu_ticks(stat: &str) -> anyhow::Result<(u64, u64)> {
    let Some((_, rest)) = stat.rsplit_once(')') else { bail!("no ')' after the command name") };
    // `rest` starts at field 3 (state), so utime (14) is its 12th field.
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let mut next = |name| -> anyhow::Result<u64> {
        let f = fields.next().with_context(|| format!("missing {name}"))?;
        f.parse().with_context(|| format!("{name} is not a number: {f:?}"))
    };
    Ok((next("utime")?, next("stime")?))
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
        assert_eq!(cpu_ticks(stat).unwrap(), (1234, 567));
        assert!(cpu_ticks("4242 poller S 1").is_err());
        assert!(cpu_ticks("4242 (poller) S 1 2").is_err());
    }

    #[test]
    fn parents_and_children() {
        let stat = "4242 (nginx: worker (x)) S 4241 4241 4241 0 -1 4194560 2306 0 0 0 1234 567";
        assert_eq!(parent_pid(stat), Some(4241));
        assert_eq!(parent_pid("4242 nginx S 1"), None);
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(children(me).unwrap().contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
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
    fn busy_excludes_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 1 2 3 4 5 6 7 8\n";
        assert_eq!(busy_ticks(stat).unwrap(), 100 + 5 + 50 + 3 + 2 + 1);
        assert!(busy_ticks("cpu  1 2 3\n").is_err());
        assert!(host_busy_seconds().unwrap() > 0.0);
    }

    #[test]
    fn tcp_ext_counters_by_name() {
        let text =
            "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 12 13\nIpExt: A\nIpExt: 1\n";
        assert_eq!(parse_tcp_ext(text, &["ListenDrops", "ListenOverflows"]).unwrap(), [13, 12]);
        assert!(parse_tcp_ext(text, &["Nope"]).is_err());
        assert!(tcp_ext(&["ListenOverflows"]).is_ok());
    }

    #[test]
    fn reads_our_own_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0 && s.peak_rss_bytes >= s.rss_bytes);
        assert!(s.cpu_seconds >= 0.0);
        let m = memory_detail(std::process::id()).unwrap();
        assert!(m.rss_anon_kib > 0 && m.threads >= 1);
        // Other tests open files meanwhile: only the lower bound is exact.
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(open_files(std::process::id()).unwrap() >= 1);
        drop(file);
        assert!(open_files(u32::MAX).is_err());
    }
}
