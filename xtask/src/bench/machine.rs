//! The machine (kernel, CPU, cores; never its name) and what else ran on it meanwhile.
use std::{fs, process::Command, time::Duration};

use super::proc::{self, HostCpu};

pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub virtualized: bool,
    pub memory_gib: f64,
    pub os: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_once(':'))
                .map(|(_, value)| value.trim().to_string())
                .unwrap_or_else(|| "unknown".into())
        };
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let os = fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("PRETTY_NAME="))
            .map(|name| name.trim_matches('"').to_string())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            kernel: uname(&["-srm"]),
            cpu_model: field("model name"),
            cores: cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
            virtualized: field("flags").split_whitespace().any(|f| f == "hypervisor"),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            os,
        }
    }
}

/// The commit measured, and which files (outside the bench's own) differ from it.
pub fn revision(root: &std::path::Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    let changed: Vec<String> = git(&["status", "--porcelain", "--untracked-files=no"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.get(3..))
        .filter(|path| {
            !path.starts_with("xtask/") && *path != "BENCHMARKS.md" && *path != "Cargo.lock"
        })
        .map(|path| format!("`{path}`"))
        .collect();
    if changed.is_empty() {
        format!("commit `{commit}`")
    } else {
        format!(
            "commit `{commit}` with uncommitted changes to {}",
            changed.join(", ")
        )
    }
}

fn uname(args: &[&str]) -> String {
    Command::new("uname")
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Load and interference seen during the run.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    pub load_before: f64,
    pub load_after: f64,
    pub load_max: f64,
    /// Largest number of other `exitwatch` processes seen at any check.
    pub other_agents_max: usize,
    pub host_busy_percent: f64,
    pub steal_percent: f64,
    pub duration: Duration,
    cpu_start: HostCpu,
}

impl Environment {
    pub fn begin(&mut self) {
        self.load_before = proc::load1();
        self.load_max = self.load_before;
        self.cpu_start = HostCpu::now();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        if self.load_before > 0.5 * cpus {
            crate::system::say(format!(
                "warning: load average {:.2} before the bench; timings will be disturbed",
                self.load_before
            ));
        }
    }

    /// Samples load and looks for other agents (`ours` are the processes we started).
    pub fn check(&mut self, ours: &[u32]) {
        self.load_max = self.load_max.max(proc::load1());
        let others = proc::other_agents(ours).len();
        if others > self.other_agents_max {
            crate::system::say(format!(
                "warning: {others} other exitwatch process(es) running; their probes add to every run"
            ));
        }
        self.other_agents_max = self.other_agents_max.max(others);
    }

    /// Waits up to `patience` for other exitwatch processes (an integration test run, say)
    /// to finish: their probes would slow the runs without the agent too.
    pub fn wait_for_quiet(&mut self, ours: &[u32], patience: Duration) {
        let deadline = std::time::Instant::now() + patience;
        let mut said = false;
        while !proc::other_agents(ours).is_empty() && std::time::Instant::now() < deadline {
            if !said {
                crate::system::say(format!(
                    "other exitwatch processes are running; waiting up to {} s for them to end",
                    patience.as_secs()
                ));
                said = true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        self.check(ours);
    }

    pub fn end(&mut self, duration: Duration) {
        self.load_after = proc::load1();
        self.load_max = self.load_max.max(self.load_after);
        let (busy, steal) = HostCpu::now().since(&self.cpu_start);
        self.host_busy_percent = busy;
        self.steal_percent = steal;
        self.duration = duration;
    }
}
