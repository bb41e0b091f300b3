//! `/proc` readings: a process's CPU time and memory, the host's load and steal time.
use std::{fs, process::Command};

use anyhow::{Context, Result};

/// utime + stime of a whole process (all threads, live and exited), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .context("short /proc/PID/stat")?
            .parse()
            .context("parsing /proc/PID/stat")
    };
    Ok(field(14)? + field(15)?)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know of).
pub fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (VmRSS, VmHWM) in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// (processes, threads) on the host now.
pub fn host_tasks() -> (usize, usize) {
    let Ok(entries) = fs::read_dir("/proc") else {
        return (0, 0);
    };
    let pids: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    let threads = pids
        .iter()
        .filter_map(|pid| fs::read_dir(format!("/proc/{pid}/task")).ok())
        .map(Iterator::count)
        .sum();
    (pids.len(), threads)
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Aggregate CPU time counters of the host: (total, idle + iowait, steal), in ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCpu {
    pub total: u64,
    pub idle: u64,
    pub steal: u64,
}

impl HostCpu {
    pub fn now() -> HostCpu {
        let text = fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = text.lines().find(|line| line.starts_with("cpu ")) else {
            return HostCpu::default();
        };
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        HostCpu {
            // user nice system idle iowait irq softirq steal (guest time is inside user).
            total: (0..8).map(at).sum(),
            idle: at(3) + at(4),
            steal: at(7),
        }
    }

    /// (busy %, steal %) of all CPUs since `before`.
    pub fn since(&self, before: &HostCpu) -> (f64, f64) {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        let idle = self.idle.saturating_sub(before.idle) as f64;
        let steal = self.steal.saturating_sub(before.steal) as f64;
        (100.0 * (total - idle) / total, 100.0 * steal / total)
    }
}

/// Pids of `exitwatch` processes other than `except` (another agent would add its own
/// probes to every measurement).
pub fn other_agents(except: &[u32]) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !except.contains(pid))
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "exitwatch")
        })
        .collect()
}
