//! Figures of measured processes and of the host, from `/proc` (via the
//! `procfs` crate): CPU time (`utime + stime`), RSS and its parts, open
//! files, children, host busy time and the kernel's TCP listen counters.
//!
//! The host's busy time lets a scenario report how much CPU other programs
//! took during its window: the machine is shared, and a busy neighbour
//! explains a bad latency figure.

use anyhow::Context;
use procfs::{CurrentSI, KernelStats, process::Process};

/// CPU and memory of one process (or several, summed).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub system_seconds: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

impl Sample {
    pub fn add(&mut self, other: &Self) {
        self.cpu_seconds += other.cpu_seconds;
        self.system_seconds += other.system_seconds;
        self.rss_bytes += other.rss_bytes;
        self.peak_rss_bytes += other.peak_rss_bytes;
    }
}

fn process(pid: u32) -> anyhow::Result<Process> {
    Process::new(i32::try_from(pid)?).with_context(|| format!("opening /proc/{pid}"))
}

/// `utime + stime` (and `stime` alone), `VmRSS` and `VmHWM` of `pid`.
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let p = process(pid)?;
    let stat = p.stat().with_context(|| format!("reading /proc/{pid}/stat"))?;
    let status = p.status().with_context(|| format!("reading /proc/{pid}/status"))?;
    let tick = procfs::ticks_per_second() as f64;
    Ok(Sample {
        cpu_seconds: (stat.utime + stat.stime) as f64 / tick,
        system_seconds: stat.stime as f64 / tick,
        rss_bytes: status.vmrss.context("no VmRSS")? * 1024,
        peak_rss_bytes: status.vmhwm.context("no VmHWM")? * 1024,
    })
}

/// Where a process's resident memory is (KiB), and its threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryDetail {
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub rss_shmem_kib: u64,
    pub private_dirty_kib: u64,
    pub threads: u64,
}

impl MemoryDetail {
    pub fn add(&mut self, other: &Self) {
        self.rss_anon_kib += other.rss_anon_kib;
        self.rss_file_kib += other.rss_file_kib;
        self.rss_shmem_kib += other.rss_shmem_kib;
        self.private_dirty_kib += other.private_dirty_kib;
        self.threads += other.threads;
    }
}

/// `RssAnon`, `RssFile`, `RssShmem` and `Threads` of `/proc/PID/status`,
/// `Private_Dirty` of `/proc/PID/smaps_rollup`.
pub fn memory_detail(pid: u32) -> anyhow::Result<MemoryDetail> {
    let p = process(pid)?;
    let status = p.status().with_context(|| format!("reading /proc/{pid}/status"))?;
    let rollup = p.smaps_rollup().with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    let dirty =
        rollup.memory_map_rollup.0.iter().filter_map(|m| m.extension.map.get("Private_Dirty")).sum::<u64>();
    Ok(MemoryDetail {
        rss_anon_kib: status.rssanon.context("no RssAnon")?,
        rss_file_kib: status.rssfile.context("no RssFile")?,
        rss_shmem_kib: status.rssshmem.context("no RssShmem")?,
        private_dirty_kib: dirty / 1024,
        threads: status.threads,
    })
}

/// Open file descriptors of `pid`.
pub fn open_files(pid: u32) -> anyhow::Result<u64> {
    Ok(process(pid)?.fd_count().with_context(|| format!("listing /proc/{pid}/fd"))? as u64)
}

/// The processes whose parent is `pid` (nginx's workers), sorted.
pub fn children(pid: u32) -> anyhow::Result<Vec<u32>> {
    let mut found: Vec<u32> = procfs::process::all_processes()
        .context("listing /proc")?
        .filter_map(|p| p.ok()?.stat().ok())
        .filter(|s| u32::try_from(s.ppid).ok() == Some(pid))
        .filter_map(|s| u32::try_from(s.pid).ok())
        .collect();
    found.sort_unstable();
    Ok(found)
}

/// CPU seconds the whole host has been busy (all cores: not idle, not
/// iowait) since boot.
pub fn host_busy_seconds() -> anyhow::Result<f64> {
    let t = KernelStats::current().context("reading /proc/stat")?.total;
    let busy =
        t.user + t.nice + t.system + t.irq.unwrap_or(0) + t.softirq.unwrap_or(0) + t.steal.unwrap_or(0);
    Ok(busy as f64 / procfs::ticks_per_second() as f64)
}

/// CPU seconds of some processes, each with its kernel part, and the
/// host's busy seconds, read together: the difference of two readings is
/// what a phase cost, and what the host spent beyond these processes is
/// other programs competing (the machine is shared).
#[derive(Debug, Clone, Default)]
pub struct Cpu {
    pub procs: Vec<(f64, f64)>,
    pub host: f64,
}

impl Cpu {
    pub fn read(pids: &[u32]) -> anyhow::Result<Self> {
        let procs = pids.iter().map(|&p| sample(p).map(|s| (s.cpu_seconds, s.system_seconds)));
        Ok(Self { procs: procs.collect::<anyhow::Result<_>>()?, host: host_busy_seconds()? })
    }

    pub fn since(&self, start: &Self) -> Self {
        let procs = self.procs.iter().zip(&start.procs).map(|(b, a)| (b.0 - a.0, b.1 - a.1)).collect();
        Self { procs, host: self.host - start.host }
    }

    /// CPU seconds of process `i`.
    pub fn of(&self, i: usize) -> f64 {
        self.procs.get(i).map_or(0.0, |p| p.0)
    }

    /// The host's busy time beyond these processes.
    pub fn others(&self) -> f64 {
        (self.host - self.procs.iter().map(|p| p.0).sum::<f64>()).max(0.0)
    }
}

/// The `TcpExt` counters of `/proc/net/netstat` named by `keys` (procfs
/// does not read that file).
pub fn tcp_ext(keys: &[&str]) -> anyhow::Result<Vec<u64>> {
    let text = std::fs::read_to_string("/proc/net/netstat").context("reading /proc/net/netstat")?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { anyhow::bail!("no TcpExt lines") };
    let pairs: Vec<(&str, &str)> = names.split_whitespace().zip(values.split_whitespace()).collect();
    keys.iter()
        .map(|key| {
            let (_, v) = pairs.iter().find(|(n, _)| n == key).with_context(|| format!("no TcpExt {key}"))?;
            v.parse().with_context(|| format!("TcpExt {key} is not a number: {v:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process_and_the_host() {
        let me = std::process::id();
        let s = sample(me).unwrap();
        assert!(s.rss_bytes > 0 && s.peak_rss_bytes >= s.rss_bytes);
        let m = memory_detail(me).unwrap();
        assert!(m.rss_anon_kib > 0 && m.threads >= 1 && m.private_dirty_kib > 0);
        assert!(open_files(me).unwrap() >= 1);
        assert!(open_files(u32::MAX).is_err());
        assert!(host_busy_seconds().unwrap() > 0.0);
        assert_eq!(tcp_ext(&["ListenOverflows", "ListenDrops"]).unwrap().len(), 2);
        assert!(tcp_ext(&["Nope"]).is_err());
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(children(me).unwrap().contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
