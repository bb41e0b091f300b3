//! Detection latency: how long after a real deadlock starts the agent reports it.
use std::{
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use exitwatch_testkit::{incidents::IncidentList, Subject};

use super::{
    agent::{Agent, Sample},
    Layout,
};

pub const PROGRAM: &str = "agent/tests/programs/seed_pipe_deadlock.py";
pub const PYTHON: &str = "/usr/bin/python3";
const POLL: Duration = Duration::from_millis(20);
/// How long the program gets to set up its deadlock and print READY.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// One detection, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Trial {
    /// Program start → the incident first seen by polling.
    pub from_start: f64,
    /// The incident's `started_at` (the first wait of the hang) → first seen.
    pub from_hang: f64,
    /// The agent's own `detected_at − started_at`.
    pub agent_reported: f64,
}

/// The agent's `exitwatch_stack_capture_duration_seconds` histogram at the end of a set
/// of trials: every capture of the deadlocked threads' stacks (native and Python frames).
#[derive(Clone, Debug, Default)]
pub struct Captures {
    pub count: f64,
    pub seconds: f64,
    /// (upper bound in seconds, captures at most that long), ascending.
    pub buckets: Vec<(f64, f64)>,
}

const CAPTURE_HISTOGRAM: &str = "exitwatch_stack_capture_duration_seconds";

impl Captures {
    pub fn of(sample: &Sample) -> Self {
        Self {
            count: sample.metric(&format!("{CAPTURE_HISTOGRAM}_count")),
            seconds: sample.metric(&format!("{CAPTURE_HISTOGRAM}_sum")),
            buckets: sample.buckets(CAPTURE_HISTOGRAM),
        }
    }

    /// The smallest bucket bound that `share` of the captures stayed under.
    pub fn bound_of(&self, share: f64) -> Option<f64> {
        self.buckets
            .iter()
            .find(|(_, count)| self.count > 0.0 && *count >= share * self.count)
            .map(|(bound, _)| *bound)
    }
}

/// Runs the seed deadlock, polls the incidents API every 20 ms until an incident with
/// both its pids appears, and kills it.
pub fn trial(layout: &Layout, agent: &Agent, within: Duration) -> Result<Trial> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let mut command = Command::new(PYTHON);
    command.arg(layout.root.join(PROGRAM));
    let mut subject = Subject::spawn(PROGRAM, command, READY_WITHIN)?;
    let pids: Vec<i32> = subject.pids().values().copied().collect();
    let found = loop {
        let body = agent.get("/api/v1/incidents")?;
        let list: IncidentList = serde_json::from_str(&body).context("incidents JSON")?;
        let hit = list
            .incidents
            .into_iter()
            .find(|incident| pids.iter().all(|&pid| incident.involves(pid)));
        if let Some(incident) = hit {
            break incident;
        }
        if clock.elapsed() > within {
            bail!(
                "no incident with pids {pids:?} within {within:?}; incidents: {body}\nagent log:\n{}",
                agent.log()
            );
        }
        thread::sleep(POLL);
    };
    let seen = SystemTime::now();
    subject.kill();
    let started_at = rfc3339_seconds(&found.started_at).context("incident started_at")?;
    let detected_at = rfc3339_seconds(&found.detected_at).context("incident detected_at")?;
    Ok(Trial {
        from_start: seconds(seen) - seconds(started),
        from_hang: seconds(seen) - started_at,
        agent_reported: detected_at - started_at,
    })
}

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `2026-11-26T14:35:49.459Z` → Unix seconds (UTC only, as the agent writes it).
pub fn rfc3339_seconds(text: &str) -> Option<f64> {
    humantime::parse_rfc3339_weak(text).ok().map(seconds)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_capture_histogram() {
        let text = "exitwatch_stack_capture_duration_seconds_bucket{le=\"0.001\"} 3\n\
                    exitwatch_stack_capture_duration_seconds_bucket{le=\"0.005\"} 9\n\
                    exitwatch_stack_capture_duration_seconds_bucket{le=\"+Inf\"} 10\n\
                    exitwatch_stack_capture_duration_seconds_sum 0.02\n\
                    exitwatch_stack_capture_duration_seconds_count 10\n";
        let sample = super::Sample {
            cpu_ticks: 0,
            metrics: super::super::http::parse_metrics(text),
        };
        let captures = super::Captures::of(&sample);
        assert_eq!(captures.count, 10.0);
        assert_eq!(captures.bound_of(0.5), Some(0.005));
        assert_eq!(captures.bound_of(0.99), Some(f64::INFINITY));
    }

    #[test]
    fn parses_the_agents_timestamps() {
        assert_eq!(
            super::rfc3339_seconds("1970-01-01T00:00:00.000Z"),
            Some(0.0)
        );
        let t = super::rfc3339_seconds("2026-11-26T14:35:49.459Z").unwrap();
        assert!((t - 1_795_703_749.459).abs() < 1e-6, "{t}");
    }
}
