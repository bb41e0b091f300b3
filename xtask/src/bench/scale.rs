//! The host-size sweep: the agent at its default settings on a host populated with idle
//! thread pools and idle pipe readers (`exitwatch_testkit::Population`) at several
//! sizes, so the growth of its cost with the number of quiet sleepers is visible.
use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use exitwatch_testkit::{incidents::IncidentList, Population, PopulationSize};

use super::{
    agent::{Agent, Sample},
    latency, proc, Layout, Plan, Results,
};
use crate::system;

/// How long a population may take to start and settle.
const POPULATE_WITHIN: Duration = Duration::from_secs(300);
/// How long the agent may take to judge every idle wait of a population once they are
/// past the threshold (its scans do a bounded share each).
const STARTUP_WITHIN: Duration = Duration::from_secs(600);
/// The agent's gauge of recorded waits past the threshold that its per-scan budget left
/// for later scans. (Its stack searches for exit phases, `work="stack_searches"`, may
/// still be draining then; what they cost after is part of the steady window.)
const BACKLOG: &str = "exitwatch_scan_backlog{work=\"waits\"}";
/// The agent's defaults, which the sweep runs at: threshold and scan interval.
pub const DEFAULT_HANG_AFTER: Duration = Duration::from_secs(10);
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(1);
const SCAN_HISTOGRAM: &str = "exitwatch_scan_duration_seconds";

/// What the agent spent from its start until it had judged every idle wait: at start-up
/// every idle thread of the host is new to it.
#[derive(Clone, Debug)]
pub struct Startup {
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub scans: f64,
    /// The longest scan, as the bound of its histogram bucket.
    pub longest_scan: Option<Quantile>,
}

/// What the agent spent on one population size.
#[derive(Clone, Debug)]
pub struct SizeResult {
    pub size: PopulationSize,
    pub startup: Startup,
    pub window_seconds: f64,
    pub cpu_percent: f64,
    pub scans: f64,
    pub scan_mean: f64,
    pub scan_p50: Option<Quantile>,
    pub scan_p99: Option<Quantile>,
    /// Processes and threads on the whole host when the window began: the agent watches
    /// them all, the bench's population and whatever else runs.
    pub host_processes: usize,
    pub host_threads: usize,
    pub hwm_kib: u64,
    /// Incidents that name any process of the population (idle waiters are no hang).
    pub incidents: usize,
    /// Detection of the seed deadlock started among the population (largest size only).
    pub latency: Vec<latency::Trial>,
}

pub fn sweep(layout: &Layout, plan: &Plan, results: &mut Results) -> Result<()> {
    let largest = plan.scale_divisors.iter().copied().min();
    for &divisor in &plan.scale_divisors {
        let size = PopulationSize::FULL.divided(divisor);
        let trials = if Some(divisor) == largest {
            plan.default_latency_trials
        } else {
            0
        };
        let result = one_size(layout, plan, results, size, trials)
            .with_context(|| format!("host-size sweep at 1/{divisor}: {size:?}"))?;
        results.scale.push(result);
    }
    Ok(())
}

fn one_size(
    layout: &Layout,
    plan: &Plan,
    results: &mut Results,
    size: PopulationSize,
    latency_trials: usize,
) -> Result<SizeResult> {
    system::say(format!(
        "host-size sweep: {} idle threads in {} processes, {} idle pipe readers",
        size.idle_threads(),
        size.processes,
        size.pipe_readers
    ));
    let started = Instant::now();
    let population = Population::start(size, &layout.work, POPULATE_WITHIN)?;
    system::say(format!(
        "  population ready in {:.1} s; starting the agent at its defaults",
        started.elapsed().as_secs_f64()
    ));
    let log = format!("agent-scale-{}.log", size.idle_threads());
    let started = Instant::now();
    let agent = Agent::start(layout, &[], plan.agent_cpu, &log)?;
    let ticks = proc::ticks_per_second();
    let (startup, before, clock) = start_up(&agent, started, ticks)?;
    system::say(format!(
        "  every idle wait judged {:.0} s after the agent started ({:.2} s of CPU); \
         measuring {} s",
        startup.seconds,
        startup.cpu_seconds,
        plan.scale_window.as_secs()
    ));
    results.environment.check(&[agent.pid()]);
    let (host_processes, host_threads) = proc::host_tasks();
    thread::sleep(plan.scale_window.saturating_sub(clock.elapsed()));
    let after = agent.sample()?;
    let window_seconds = clock.elapsed().as_secs_f64();
    let pids = population.pids();
    let incidents = involving(&agent, &pids)?;
    let mut trials = Vec::new();
    for _ in 0..latency_trials {
        let within = DEFAULT_HANG_AFTER + DEFAULT_SCAN_INTERVAL + Duration::from_secs(60);
        trials.push(latency::trial(layout, &agent, within)?);
        thread::sleep(2 * DEFAULT_SCAN_INTERVAL);
    }
    let (_, hwm_kib) = agent.memory_kib()?;
    results.peak_hwm_kib = results.peak_hwm_kib.max(hwm_kib);
    agent.stop()?;
    drop(population);
    let delta = |series: &str| after.metric(series) - before.metric(series);
    let scans = delta(&format!("{SCAN_HISTOGRAM}_count"));
    let buckets = bucket_deltas(&before, &after);
    Ok(SizeResult {
        size,
        startup,
        window_seconds,
        cpu_percent: 100.0 * after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64
            / ticks
            / window_seconds,
        scans,
        scan_mean: delta(&format!("{SCAN_HISTOGRAM}_sum")) / scans.max(1.0),
        scan_p50: quantile(&buckets, 0.5),
        scan_p99: quantile(&buckets, 0.99),
        hwm_kib,
        host_processes,
        host_threads,
        incidents,
        latency: trials,
    })
}

/// Waits until the population's idle waits are past the threshold and the agent has
/// judged them all (its backlog of waits is zero after a scan that came after the
/// threshold); returns what that cost, and the sample the steady window starts from with
/// its time.
fn start_up(agent: &Agent, started: Instant, ticks: f64) -> Result<(Startup, Sample, Instant)> {
    thread::sleep(DEFAULT_HANG_AFTER + DEFAULT_SCAN_INTERVAL);
    let scans = |sample: &Sample| sample.metric(&format!("{SCAN_HISTOGRAM}_count"));
    let at_threshold = scans(&agent.sample()?);
    let (done, at) = loop {
        let sample = agent.sample()?;
        let at = Instant::now();
        let Some(&left) = sample.metrics.get(BACKLOG) else {
            anyhow::bail!("the agent exports no {BACKLOG}: is it older than the bench?");
        };
        if left == 0.0 && scans(&sample) > at_threshold {
            break (sample, at);
        }
        if started.elapsed() > STARTUP_WITHIN {
            anyhow::bail!(
                "the agent still had {left} waits to judge after {} s",
                STARTUP_WITHIN.as_secs()
            );
        }
        thread::sleep(DEFAULT_SCAN_INTERVAL / 2);
    };
    let startup = Startup {
        seconds: at.duration_since(started).as_secs_f64(),
        // Everything the agent spent since it was started.
        cpu_seconds: done.cpu_ticks as f64 / ticks,
        scans: scans(&done),
        longest_scan: quantile(&done.buckets(SCAN_HISTOGRAM), 1.0),
    };
    Ok((startup, done, at))
}

/// Incidents, active or resolved, naming any of `pids`.
fn involving(agent: &Agent, pids: &[i32]) -> Result<usize> {
    let body = agent.get("/api/v1/incidents")?;
    let list: IncidentList = serde_json::from_str(&body).context("incidents JSON")?;
    Ok(list
        .incidents
        .iter()
        .filter(|incident| pids.iter().any(|&pid| incident.involves(pid)))
        .count())
}

/// (upper bound in seconds, scans in the window at or below it), cumulative, ascending;
/// the open-ended `+Inf` bucket last.
fn bucket_deltas(before: &Sample, after: &Sample) -> Vec<(f64, f64)> {
    let earlier = before.buckets(SCAN_HISTOGRAM);
    after
        .buckets(SCAN_HISTOGRAM)
        .into_iter()
        .map(|(bound, count)| {
            let was = earlier
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, c)| *c);
            (bound, count - was)
        })
        .collect()
}

/// A quantile estimated from histogram buckets, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Quantile {
    /// Interpolated inside a bounded bucket.
    At(f64),
    /// In the open-ended bucket: above the highest bound.
    Above(f64),
}

impl Quantile {
    pub fn within(self, limit: f64) -> bool {
        matches!(self, Quantile::At(seconds) if seconds <= limit)
    }

    pub fn show_ms(self) -> String {
        match self {
            Quantile::At(seconds) => format!("{:.1} ms", 1000.0 * seconds),
            Quantile::Above(seconds) => format!("> {:.0} ms", 1000.0 * seconds),
        }
    }
}

/// The `q` quantile of a cumulative histogram, interpolated linearly inside the bucket it
/// falls in, as Prometheus' `histogram_quantile` does.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<Quantile> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(Quantile::Above(lower.0));
            }
            let share = (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
            return Some(Quantile::At(lower.0 + (bound - lower.0) * share));
        }
        lower = (bound, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{bucket_deltas, quantile, Quantile, SCAN_HISTOGRAM};
    use crate::bench::{agent::Sample, http::parse_metrics};

    #[test]
    fn bucket_deltas_subtract_the_earlier_sample_bound_by_bound() {
        let sample = |a: u32, b: u32| Sample {
            cpu_ticks: 0,
            metrics: parse_metrics(&format!(
                "{SCAN_HISTOGRAM}_bucket{{le=\"0.01\"}} {a}\n\
                 {SCAN_HISTOGRAM}_bucket{{le=\"+Inf\"}} {b}\n"
            )),
        };
        assert_eq!(
            bucket_deltas(&sample(2, 3), &sample(5, 9)),
            [(0.01, 3.0), (f64::INFINITY, 6.0)]
        );
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let buckets = [
            (0.01, 0.0),
            (0.025, 50.0),
            (0.05, 100.0),
            (f64::INFINITY, 100.0),
        ];
        let at = |q| match quantile(&buckets, q) {
            Some(Quantile::At(seconds)) => seconds,
            other => panic!("{other:?}"),
        };
        assert!((at(0.5) - 0.025).abs() < 1e-12, "{}", at(0.5));
        assert!((at(0.99) - 0.0495).abs() < 1e-12, "{}", at(0.99));
        assert_eq!(quantile(&[(0.01, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        let open = [(0.01, 0.0), (f64::INFINITY, 4.0)];
        assert_eq!(quantile(&open, 0.99), Some(Quantile::Above(0.01)));
    }
}
