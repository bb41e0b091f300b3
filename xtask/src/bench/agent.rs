//! The agent under test: started pinned to its own CPU, read through its HTTP API and
//! its `/proc` entries, stopped with SIGTERM.
use std::{
    collections::BTreeMap,
    fs,
    net::{SocketAddr, TcpListener},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{http, proc, Layout};

pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    log: std::path::PathBuf,
}

/// What the agent had spent and counted at one instant.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub metrics: BTreeMap<String, f64>,
}

/// Per-program kernel stats between two samples.
#[derive(Clone, Debug, Default)]
pub struct ProgramDelta {
    pub runs: f64,
    pub run_time_ns: f64,
}

impl Sample {
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics.get(series).copied().unwrap_or(0.0)
    }

    /// Runs and run time per program from `before` to `self`.
    pub fn programs_since(&self, before: &Sample) -> BTreeMap<String, ProgramDelta> {
        let mut out: BTreeMap<String, ProgramDelta> = BTreeMap::new();
        for (series, value) in &self.metrics {
            let Some(program) = label(series, "program") else {
                continue;
            };
            let delta = value - before.metric(series);
            let entry = out.entry(program).or_default();
            if series.starts_with("exitwatch_bpf_program_runs_total") {
                entry.runs += delta;
            } else if series.starts_with("exitwatch_bpf_program_run_time_seconds_total") {
                entry.run_time_ns += delta * 1e9;
            }
        }
        out
    }

    /// Sum of every series of `name` (all label values).
    pub fn total(&self, name: &str) -> f64 {
        self.metrics
            .iter()
            .filter(|(series, _)| {
                series.as_str() == name || series.starts_with(&format!("{name}{{"))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

fn label(series: &str, name: &str) -> Option<String> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let end = series[start..].find('"')? + start;
    Some(series[start..end].to_string())
}

impl Agent {
    /// Starts `exitwatch run` with `args`, pinned to `cpu`, and waits until it serves.
    pub fn start(
        layout: &Layout,
        args: &[&str],
        cpu: Option<usize>,
        log_name: &str,
    ) -> Result<Agent> {
        let addr = free_addr()?;
        let log = layout.work.join(log_name);
        let log_file =
            fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = super::pinned(&layout.agent, cpu);
        command
            .args(["run", "--listen", &addr.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = command.spawn().context("starting the agent")?;
        let mut agent = Agent { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = agent.child.try_wait()? {
                bail!("the agent exited at start-up ({status}):\n{}", agent.log());
            }
            if http::get(addr, "/healthz").is_ok() {
                return Ok(agent);
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the agent did not serve /healthz within 60 s:\n{}",
            agent.log()
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Result<String> {
        http::get(self.addr, path)
    }

    pub fn sample(&self) -> Result<Sample> {
        let metrics = http::parse_metrics(&self.get("/metrics")?);
        let cpu_ticks = proc::cpu_ticks(self.pid())?;
        Ok(Sample { cpu_ticks, metrics })
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        proc::memory_kib(self.pid())
    }

    /// SIGTERM, then waits for the agent to detach its probes and exit.
    pub fn stop(mut self) -> Result<()> {
        proc::signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the agent exited with {status}:\n{}", self.log());
                }
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!("the agent did not stop within 20 s of SIGTERM")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}
