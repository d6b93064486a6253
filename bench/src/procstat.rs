//! Figures of measured processes and of the host from `/proc` (via
//! `procfs`). The host's busy time shows how much CPU other programs took
//! during a window: the machine is shared, and a busy neighbour explains a
//! bad latency figure.

use anyhow::Context;
use procfs::{CurrentSI, KernelStats, process::Process};
use std::collections::HashMap;

/// CPU (`utime + stime`, and `stime` alone) and memory of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub system_seconds: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

fn process(pid: u32) -> anyhow::Result<Process> {
    Process::new(i32::try_from(pid)?).with_context(|| format!("opening /proc/{pid}"))
}

fn ticks(t: u64) -> f64 {
    t as f64 / procfs::ticks_per_second() as f64
}

/// `utime + stime`, `stime`, `VmRSS` and `VmHWM` of `pid`.
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let p = process(pid)?;
    let (stat, status) = (p.stat()?, p.status()?);
    Ok(Sample {
        cpu_seconds: ticks(stat.utime + stat.stime),
        system_seconds: ticks(stat.stime),
        rss_bytes: status.vmrss.context("no VmRSS")? * 1024,
        peak_rss_bytes: status.vmhwm.context("no VmHWM")? * 1024,
    })
}

/// Where a process's resident memory is, in KiB: `VmRSS` and its `RssAnon`,
/// `RssFile`, `RssShmem` parts (of `status`) and `Private_Dirty` (of
/// `smaps_rollup`); then its `Threads`.
pub fn memory_kib(pid: u32) -> anyhow::Result<[u64; 6]> {
    let p = process(pid)?;
    let (s, rollup) = (p.status()?, p.smaps_rollup()?);
    let dirty = rollup.memory_map_rollup.0.iter().filter_map(|m| m.extension.map.get("Private_Dirty"));
    let rss = [(s.vmrss, "VmRSS"), (s.rssanon, "RssAnon"), (s.rssfile, "RssFile"), (s.rssshmem, "RssShmem")];
    let [vm, anon, file, shmem] = rss.map(|(kib, name)| kib.with_context(|| format!("no {name}")));
    Ok([vm?, anon?, file?, shmem?, dirty.sum::<u64>() / 1024, s.threads])
}

/// Open file descriptors of `pid`.
pub fn open_files(pid: u32) -> anyhow::Result<u64> {
    Ok(process(pid)?.fd_count()? as u64)
}

/// The processes whose parent is `pid` (nginx's workers), sorted.
pub fn children(pid: u32) -> anyhow::Result<Vec<u32>> {
    let stats = procfs::process::all_processes()?.filter_map(|p| p.ok()?.stat().ok());
    Ok(crate::report::sorted(stats.filter(|s| s.ppid as u32 == pid).map(|s| s.pid as u32)))
}

/// CPU seconds the whole host has been busy (all cores, not idle or
/// iowait) since boot.
pub fn host_busy_seconds() -> anyhow::Result<f64> {
    let t = KernelStats::current()?.total;
    let irq = t.irq.unwrap_or(0) + t.softirq.unwrap_or(0) + t.steal.unwrap_or(0);
    Ok(ticks(t.user + t.nice + t.system + irq))
}

/// CPU seconds (total, kernel) of some processes and the host's busy
/// seconds, read together: the difference of two readings is what a phase
/// cost, and the host's time beyond these processes is other programs.
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
    let text = std::fs::read_to_string("/proc/net/netstat")?;
    // A line of names, then a line of their values.
    let mut lines = text.lines().filter_map(|l| l.strip_prefix("TcpExt:")).map(str::split_whitespace);
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { anyhow::bail!("no TcpExt lines") };
    let pairs: HashMap<&str, &str> = names.zip(values).collect();
    let value =
        |key: &&str| pairs.get(key).with_context(|| format!("no TcpExt {key}"))?.parse().map_err(Into::into);
    keys.iter().map(value).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process_and_the_host() {
        let me = std::process::id();
        let s = sample(me).unwrap();
        assert!(s.rss_bytes > 0 && s.peak_rss_bytes >= s.rss_bytes);
        let [_, anon, _, _, private_dirty, threads] = memory_kib(me).unwrap();
        assert!(anon > 0 && threads >= 1 && private_dirty > 0);
        assert!(open_files(me).unwrap() >= 1 && open_files(u32::MAX).is_err());
        assert!(host_busy_seconds().unwrap() > 0.0);
        assert_eq!(tcp_ext(&["ListenOverflows", "ListenDrops"]).unwrap().len(), 2);
        assert!(tcp_ext(&["Nope"]).is_err());
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(children(me).unwrap().contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
