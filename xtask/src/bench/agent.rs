//! The agent under test: started pinned to its own CPU, read through its HTTP API and
//! its `/proc` entries, stopped with SIGTERM.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{bail, Context, Result};
use exitwatch_testkit::AgentProcess;

use super::{http, proc, Layout};

pub struct Agent {
    process: AgentProcess,
    addr: SocketAddr,
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

    /// The buckets of the histogram `name`: (upper bound in seconds, cumulative count),
    /// ascending, the open-ended `+Inf` bucket last.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let mut buckets: Vec<(f64, f64)> = self
            .metrics
            .iter()
            .filter_map(|(series, count)| {
                let bound = series
                    .strip_prefix(name)?
                    .strip_prefix("_bucket{le=\"")?
                    .strip_suffix("\"}")?;
                // `+Inf` parses as infinity.
                Some((bound.parse().ok()?, *count))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
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
        let mut command = super::pinned(&layout.agent, cpu);
        command.args(["run", "--listen", "127.0.0.1:0"]).args(args);
        let serving = |url: &str| address(url).is_some_and(|a| http::get(a, "/healthz").is_ok());
        let log = layout.work.join(log_name);
        let process = AgentProcess::start(command, &log, Duration::from_secs(60), serving)?;
        let addr = address(process.url())
            .with_context(|| format!("the agent serves at {}, not over http", process.url()))?;
        Ok(Agent { process, addr })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        self.process.log()
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
        let status = self.process.stop(Duration::from_secs(20))?;
        if !status.success() {
            bail!("the agent exited with {status}:\n{}", self.log());
        }
        Ok(())
    }
}

/// `127.0.0.1:PORT` of `http://127.0.0.1:PORT`; the bench's agents serve without TLS.
fn address(url: &str) -> Option<SocketAddr> {
    url.strip_prefix("http://")?.parse().ok()
}
