//! `cargo xtask bench`: what the agent costs the workloads it watches, measured side by
//! side on one machine (runs without the agent, with it, with an empty `sched_switch`
//! program as the floor, and with a hand-written bpftrace reference, interleaved), the
//! agent's programs alone against that floor in short interleaved slices, plus its idle
//! cost, memory, drops, detection latency, and its cost on hosts full of idle threads and
//! pipe readers. Writes BENCHMARKS.md.
mod agent;
mod hooks;
mod hot_path;
mod http;
mod latency;
mod machine;
mod proc;
mod reference;
mod report;
mod scale;
mod stats;
mod workloads;

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use crate::{build_ebpf, system};
use agent::{Agent, ProgramDelta};
use workloads::{Outcome, Sizes, Workload};

/// The CPU the workloads are pinned to; the agent and bpftrace get the last CPU.
pub const WORKLOAD_CPU: usize = 0;
/// Arguments of the agent for the overhead runs: its defaults, spelled out.
pub const OVERHEAD_ARGS: [&str; 4] = ["--hang-after", "10s", "--scan-interval", "1s"];

#[derive(Args, Clone, Debug)]
pub struct Options {
    /// Rounds of each mode (no agent, agent, bpftrace reference), interleaved [default: 5,
    /// or 2 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// A short run for development: 2 rounds, quarter-size workloads (one build), 10 s
    /// idle, fewer detection trials, a host-size sweep up to a tenth of the full host.
    /// Its numbers are not for BENCHMARKS.md.
    #[arg(long)]
    quick: bool,
    /// Skip the bpftrace reference runs.
    #[arg(long)]
    no_reference: bool,
    /// A flag added to the agent's command line in the workload rounds, for A/B runs
    /// (e.g. `--agent-arg=--wait-histogram`); repeatable.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Seconds of idle host over which the agent's own CPU use is measured.
    #[arg(long)]
    idle_seconds: Option<u64>,
    /// Detection-latency trials with `--hang-after 2s --scan-interval 1s`.
    #[arg(long)]
    latency_trials: Option<usize>,
    /// Workloads to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<Workload>,
    /// Only the workload rounds: the same as `--sections overhead`.
    #[arg(long)]
    overhead_only: bool,
    /// Parts of the bench to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    sections: Vec<Section>,
    /// Sizes of the host-size sweep, as divisors of the full population (20,000 idle
    /// threads in 2,000 processes, 1,000 idle pipe readers) [default: 10,2,1, or
    /// 100,20,10 with --quick].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    scale_divisors: Vec<u64>,
    /// Seconds over which the agent is measured at each size of the sweep [default: 120,
    /// or 10 with --quick].
    #[arg(long)]
    scale_seconds: Option<u64>,
    /// Blocks of the hot-path slices (no program, the empty `sched_switch`, the agent's
    /// programs, each about 60 ms of pipe ping-pong, futex ping-pong and thread churn)
    /// [default: 300, or 20 with --quick].
    #[arg(long)]
    hot_path_blocks: Option<usize>,
    /// Seconds to wait, before each round, for other exitwatch processes to end.
    #[arg(long, default_value_t = 300)]
    quiet_wait: u64,
    /// Where the report goes, relative to the workspace root [default: BENCHMARKS.md, or
    /// target/bench/BENCHMARKS-quick.md with --quick].
    #[arg(long)]
    output: Option<PathBuf>,
    /// Build nothing (set when the bench re-runs itself under sudo after building).
    #[arg(long, hide = true)]
    no_build: bool,
}

/// Where things are: the workspace, the agent binary, the bench's scratch directory.
pub struct Layout {
    pub root: PathBuf,
    pub agent: PathBuf,
    pub work: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// The workloads, interleaved in every mode, and the profile pass.
    Overhead,
    /// The agent's programs alone against the empty hook and none, in short interleaved
    /// slices.
    HotPath,
    /// The agent's CPU and memory on the host as it is.
    Idle,
    /// Detection latency of the seed deadlock.
    Latency,
    /// The host-size sweep.
    Scale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Off,
    On,
    /// An empty `sched_switch` program: the floor of any scheduler hook.
    Floor,
    Reference,
    /// The agent with `--bpf-stats`, for the kernel's run time per program.
    Profile,
}

/// What the agent spent and counted during one workload run.
#[derive(Clone, Debug, Default)]
pub struct AgentCost {
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    pub programs: BTreeMap<String, ProgramDelta>,
    pub dropped: f64,
    pub map_failures: f64,
    /// Lifecycle events the probes sent through the ring buffer.
    pub events: f64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Idle {
    pub seconds: f64,
    /// Scans in the idle period and the time they took (the agent's own histogram).
    pub scans: f64,
    pub scan_seconds: f64,
    pub cpu_percent: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

#[derive(Clone, Debug)]
pub struct LatencySet {
    pub hang_after: f64,
    pub scan_interval: f64,
    pub trials: Vec<latency::Trial>,
    /// The stack captures the agent made of the trials' stuck threads.
    pub captures: latency::Captures,
}

/// Everything one bench run found.
#[derive(Default)]
pub struct Results {
    pub command: String,
    pub revision: String,
    pub sizes: Option<Sizes>,
    pub rounds: usize,
    pub profile_runs: usize,
    pub agent_cpu: Option<usize>,
    pub runs: BTreeMap<(Workload, Mode), Vec<Outcome>>,
    pub costs: BTreeMap<Workload, Vec<AgentCost>>,
    /// The same, from the profile runs with `--bpf-stats` (kernel run time per program).
    pub profile: BTreeMap<Workload, Vec<AgentCost>>,
    /// Highest VmHWM of any agent instance, KiB.
    pub peak_hwm_kib: u64,
    /// VmRSS of the overhead agents at the end of their rounds, KiB.
    pub end_rss_kib: Vec<u64>,
    pub idle: Option<Idle>,
    pub latency: Vec<LatencySet>,
    pub scale: Vec<scale::SizeResult>,
    pub hot_path: BTreeMap<Workload, hot_path::SliceSet>,
    /// Wall time of each section run.
    pub section_seconds: Vec<(Section, f64)>,
    pub environment: machine::Environment,
}

impl Results {
    /// The profile runs (with `--bpf-stats`) of one workload; empty if there were none.
    pub fn profiled(&self, workload: Workload) -> &[AgentCost] {
        self.profile.get(&workload).map_or(&[], Vec::as_slice)
    }
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    if !options.no_build {
        build_ebpf::build(root)?;
        system::run(
            root,
            "cargo",
            &["build", "--release", "--package", "exitwatch"],
        )?;
    }
    if !system::is_root() {
        // BPF and bpftrace need root; the build above ran as the user.
        let exe = std::env::current_exe().context("locating the xtask binary")?;
        let mut command = vec![exe.display().to_string()];
        command.extend(std::env::args().skip(1));
        command.push("--no-build".into());
        return system::run_as_root(root, &command);
    }
    ensure_tools(!options.no_reference)?;
    let layout = Layout {
        root: root.to_path_buf(),
        agent: root.join("target/release/exitwatch"),
        work: root.join("target/bench"),
    };
    fs::create_dir_all(&layout.work).context("creating target/bench")?;
    workloads::compile(&layout)?;

    let plan = Plan::new(options);
    let mut results = Results {
        command: shown_command(),
        revision: machine::revision(root),
        sizes: Some(plan.sizes),
        rounds: plan.rounds,
        profile_runs: plan.profile_runs,
        agent_cpu: plan.agent_cpu,
        ..Results::default()
    };
    let started = Instant::now();
    results.environment.begin();
    for &section in &plan.sections {
        let clock = Instant::now();
        match section {
            Section::Overhead => {
                overhead(&layout, &plan, &mut results)?;
                profile(&layout, &plan, &mut results)?;
            }
            Section::HotPath => hot_path::measure(&layout, &plan, &mut results)?,
            Section::Idle => results.idle = Some(idle(&layout, &plan, &mut results)?),
            Section::Latency => detection(&layout, &plan, &mut results)?,
            Section::Scale => scale::sweep(&layout, &plan, &mut results)?,
        }
        let seconds = clock.elapsed().as_secs_f64();
        system::say(format!("section {section:?} took {seconds:.0} s"));
        results.section_seconds.push((section, seconds));
    }
    results.environment.end(started.elapsed());

    let relative = options.output.clone().unwrap_or_else(|| {
        PathBuf::from(if options.quick {
            "target/bench/BENCHMARKS-quick.md"
        } else {
            "BENCHMARKS.md"
        })
    });
    let output = root.join(&relative);
    let previous = fs::read_to_string(&output).unwrap_or_default();
    let text = report::render(&results, &previous);
    fs::write(&output, text).with_context(|| format!("writing {}", output.display()))?;
    system::say(format!(
        "bench done in {:.0} s; wrote {}",
        started.elapsed().as_secs_f64(),
        relative.display()
    ));
    print!("{}", report::summary_table(&results));
    print!("{}", report::hot_path_table(&results));
    Ok(())
}

/// The bench's settings after `--quick` and the machine's CPU count are applied.
pub struct Plan {
    sections: Vec<Section>,
    rounds: usize,
    profile_runs: usize,
    workloads: Vec<Workload>,
    quiet_wait: Duration,
    sizes: Sizes,
    reference: bool,
    idle: Duration,
    latency_trials: usize,
    default_latency_trials: usize,
    agent_cpu: Option<usize>,
    scale_divisors: Vec<usize>,
    scale_window: Duration,
    hot_path_blocks: usize,
    agent_args: Vec<String>,
}

impl Plan {
    fn new(options: &Options) -> Plan {
        let cpus = thread::available_parallelism().map_or(1, usize::from);
        let quick = options.quick;
        Plan {
            sections: if options.overhead_only {
                vec![Section::Overhead]
            } else if options.sections.is_empty() {
                Section::value_variants().to_vec()
            } else {
                options.sections.clone()
            },
            workloads: if options.workloads.is_empty() {
                Workload::ALL.to_vec()
            } else {
                options.workloads.clone()
            },
            quiet_wait: Duration::from_secs(options.quiet_wait),
            rounds: options.rounds.unwrap_or(if quick { 2 } else { 5 }).max(1),
            profile_runs: if quick { 1 } else { 3 },
            sizes: if quick {
                Sizes::FULL.scaled(4)
            } else {
                Sizes::FULL
            },
            reference: !options.no_reference,
            idle: Duration::from_secs(options.idle_seconds.unwrap_or(if quick { 10 } else { 30 })),
            latency_trials: options.latency_trials.unwrap_or(if quick { 1 } else { 5 }),
            default_latency_trials: if quick { 1 } else { 2 },
            agent_cpu: (cpus > 1).then_some(cpus - 1),
            scale_divisors: if options.scale_divisors.is_empty() {
                if quick {
                    vec![100, 20, 10]
                } else {
                    vec![10, 2, 1]
                }
            } else {
                options.scale_divisors.iter().map(|&d| d as usize).collect()
            },
            // Long enough for the agent's quiet findings (60–120 s old) to be looked at
            // again at their steady rate: the steady cost includes that.
            scale_window: Duration::from_secs(options.scale_seconds.unwrap_or(if quick {
                10
            } else {
                120
            })),
            hot_path_blocks: options
                .hot_path_blocks
                .unwrap_or(if quick { 20 } else { 300 })
                .max(2),
            agent_args: options.agent_args.clone(),
        }
    }
}

/// Interleaved rounds: no agent, agent, reference; every workload in each.
fn overhead(layout: &Layout, plan: &Plan, results: &mut Results) -> Result<()> {
    results.environment.wait_for_quiet(&[], plan.quiet_wait);
    system::say("warm-up: every workload once, not counted");
    for &workload in &plan.workloads {
        workload.run(layout, &plan.sizes, WORKLOAD_CPU)?;
    }
    let mut modes = vec![Mode::Off, Mode::On, Mode::Floor];
    if plan.reference {
        modes.push(Mode::Reference);
    }
    for round in 1..=plan.rounds {
        results.environment.wait_for_quiet(&[], plan.quiet_wait);
        // Every other round runs the modes backwards, so that no mode always runs first
        // and the per-round ratios carry no position effect of their own.
        let order: Vec<Mode> = if round % 2 == 0 {
            modes.iter().rev().copied().collect()
        } else {
            modes.clone()
        };
        for &mode in &order {
            results.environment.check(&[]);
            system::say(format!(
                "round {round}/{}: {}",
                plan.rounds,
                mode_name(mode)
            ));
            match mode {
                Mode::Off => run_workloads(layout, plan, results, mode, &plan.workloads)?,
                Mode::On | Mode::Profile => on_round(layout, plan, results, round)?,
                Mode::Floor => {
                    let mut hooks = hooks::Hooks::load(&layout.root)?;
                    hooks.attach(Some(hooks::Hook::Empty))?;
                    run_workloads(layout, plan, results, mode, &plan.workloads)?;
                    drop(hooks);
                }
                Mode::Reference => {
                    let reference = reference::Reference::start(layout, plan.agent_cpu)?;
                    results.environment.check(&[reference.pid()]);
                    // Syscall tracepoints slow a build severalfold: the reference is for
                    // the microbenchmarks, whose mechanism it mirrors.
                    let micro: Vec<Workload> = plan
                        .workloads
                        .iter()
                        .copied()
                        .filter(|w| *w != Workload::Build)
                        .collect();
                    run_workloads(layout, plan, results, mode, &micro)?;
                    reference.stop()?;
                }
            }
        }
    }
    Ok(())
}

/// Each of `workloads` once, with whatever `mode` has attached.
fn run_workloads(
    layout: &Layout,
    plan: &Plan,
    results: &mut Results,
    mode: Mode,
    workloads: &[Workload],
) -> Result<()> {
    for &workload in workloads {
        let outcome = workload.run(layout, &plan.sizes, WORKLOAD_CPU)?;
        record(results, workload, mode, outcome);
    }
    Ok(())
}

fn on_round(layout: &Layout, plan: &Plan, results: &mut Results, round: usize) -> Result<()> {
    let log = format!("agent-round-{round}.log");
    agent_round(layout, plan, results, Mode::On, 1, &log)
}

/// The agent with `--bpf-stats`, each workload `profile_runs` times: the kernel's run time
/// per program. Separate from the rounds because the stats slow every BPF program.
fn profile(layout: &Layout, plan: &Plan, results: &mut Results) -> Result<()> {
    system::say(format!(
        "profile: the agent with --bpf-stats, every workload {} time(s)",
        plan.profile_runs
    ));
    results.environment.wait_for_quiet(&[], plan.quiet_wait);
    agent_round(
        layout,
        plan,
        results,
        Mode::Profile,
        plan.profile_runs,
        "agent-profile.log",
    )
}

fn agent_round(
    layout: &Layout,
    plan: &Plan,
    results: &mut Results,
    mode: Mode,
    repeats: usize,
    log: &str,
) -> Result<()> {
    let mut args = OVERHEAD_ARGS.to_vec();
    args.extend(plan.agent_args.iter().map(String::as_str));
    if mode == Mode::Profile {
        args.push("--bpf-stats");
    }
    let agent = Agent::start(layout, &args, plan.agent_cpu, log)?;
    // Let start-up work (uprobe discovery, seeding from /proc) finish first.
    thread::sleep(Duration::from_secs(1));
    let ticks = proc::ticks_per_second();
    for &workload in &plan.workloads {
        for _ in 0..repeats {
            results.environment.check(&[agent.pid()]);
            let before = agent.sample()?;
            let outcome = workload.run(layout, &plan.sizes, WORKLOAD_CPU)?;
            let after = agent.sample()?;
            let cost = AgentCost {
                cpu_seconds: after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / ticks,
                wall_seconds: outcome.wall.as_secs_f64(),
                programs: after.programs_since(&before),
                dropped: after.metric("exitwatch_ringbuf_dropped_events_total")
                    - before.metric("exitwatch_ringbuf_dropped_events_total"),
                map_failures: after.total("exitwatch_map_insert_failures_total")
                    - before.total("exitwatch_map_insert_failures_total"),
                events: after.metric("exitwatch_ringbuf_events_total")
                    - before.metric("exitwatch_ringbuf_events_total"),
            };
            let costs = if mode == Mode::Profile {
                &mut results.profile
            } else {
                &mut results.costs
            };
            costs.entry(workload).or_default().push(cost);
            record(results, workload, mode, outcome);
        }
    }
    let (rss, hwm) = agent.memory_kib()?;
    results.peak_hwm_kib = results.peak_hwm_kib.max(hwm);
    if mode == Mode::On {
        results.end_rss_kib.push(rss);
    }
    agent.stop()
}

fn idle(layout: &Layout, plan: &Plan, results: &mut Results) -> Result<Idle> {
    system::say(format!(
        "idle: agent CPU over {} s with no workload",
        plan.idle.as_secs()
    ));
    let agent = Agent::start(layout, &OVERHEAD_ARGS, plan.agent_cpu, "agent-idle.log")?;
    results
        .environment
        .wait_for_quiet(&[agent.pid()], plan.quiet_wait);
    thread::sleep(Duration::from_secs(3));
    let ticks = proc::ticks_per_second();
    let metrics_before = agent.sample()?;
    let before = proc::cpu_ticks(agent.pid())?;
    let clock = Instant::now();
    thread::sleep(plan.idle);
    let after = proc::cpu_ticks(agent.pid())?;
    let seconds = clock.elapsed().as_secs_f64();
    let metrics_after = agent.sample()?;
    let (rss_kib, hwm_kib) = agent.memory_kib()?;
    let delta = |series: &str| metrics_after.metric(series) - metrics_before.metric(series);
    results.peak_hwm_kib = results.peak_hwm_kib.max(hwm_kib);
    results.environment.check(&[agent.pid()]);
    agent.stop()?;
    Ok(Idle {
        seconds,
        cpu_percent: 100.0 * after.saturating_sub(before) as f64 / ticks / seconds,
        rss_kib,
        hwm_kib,
        scans: delta("exitwatch_scan_duration_seconds_count"),
        scan_seconds: delta("exitwatch_scan_duration_seconds_sum"),
    })
}

fn detection(layout: &Layout, plan: &Plan, results: &mut Results) -> Result<()> {
    let configs = [
        (2.0, 1.0, plan.latency_trials),
        (10.0, 1.0, plan.default_latency_trials),
    ];
    for (hang_after, scan_interval, trials) in configs {
        if trials == 0 {
            continue;
        }
        system::say(format!(
            "detection latency: --hang-after {hang_after}s --scan-interval {scan_interval}s, {trials} trial(s)"
        ));
        let args = [
            "--hang-after".to_string(),
            format!("{hang_after}s"),
            "--scan-interval".to_string(),
            format!("{scan_interval}s"),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = format!("agent-latency-{hang_after}s.log");
        let agent = Agent::start(layout, &args, plan.agent_cpu, &log)?;
        let ready = Instant::now();
        let within = Duration::from_secs_f64(hang_after + scan_interval + 20.0);
        let mut set = LatencySet {
            hang_after,
            scan_interval,
            trials: Vec::new(),
            captures: latency::Captures::default(),
        };
        for i in 0..trials {
            results.environment.check(&[agent.pid()]);
            // Start each trial at a different point of the scan cycle (which began about
            // when the agent started serving), spread evenly over it.
            let phase = (i as f64 + 0.5) / trials as f64 * scan_interval;
            let now = ready.elapsed().as_secs_f64() % scan_interval;
            thread::sleep(Duration::from_secs_f64(
                (phase - now).rem_euclid(scan_interval),
            ));
            set.trials.push(latency::trial(layout, &agent, within)?);
            // Let the agent see the processes go before the next trial.
            thread::sleep(Duration::from_secs_f64(scan_interval * 1.5));
        }
        set.captures = latency::Captures::of(&agent.sample()?);
        let (_, hwm) = agent.memory_kib()?;
        results.peak_hwm_kib = results.peak_hwm_kib.max(hwm);
        agent.stop()?;
        results.latency.push(set);
    }
    Ok(())
}

fn record(results: &mut Results, workload: Workload, mode: Mode, outcome: Outcome) {
    results
        .runs
        .entry((workload, mode))
        .or_default()
        .push(outcome);
}

pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Off => "no agent",
        Mode::On => "exitwatch",
        Mode::Floor => "empty sched_switch",
        Mode::Reference => "bpftrace reference",
        Mode::Profile => "exitwatch --bpf-stats",
    }
}

/// `program` pinned to `cpu` with taskset, or unpinned.
pub fn pinned(program: impl AsRef<OsStr>, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.args(["-c", &cpu.to_string()]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// The command as the user typed it, minus what the bench adds itself.
fn shown_command() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--no-build")
        .collect();
    format!("cargo xtask {}", args.join(" "))
}

/// What the bench runs besides the agent: (command, Debian package).
const TOOLS: &[(&str, &str)] = &[
    ("perf", "linux-perf"),
    ("cc", "gcc"),
    ("taskset", "util-linux"),
    ("getconf", "libc-bin"),
];

fn ensure_tools(reference: bool) -> Result<()> {
    let mut missing = system::missing_packages(TOOLS);
    // `gcc` only recommends the C library headers.
    if !Path::new("/usr/include/stdio.h").exists() {
        missing.push("libc6-dev");
    }
    if !Path::new(latency::PYTHON).exists() {
        missing.push("python3");
    }
    if reference && !system::have("bpftrace") {
        missing.push("bpftrace");
    }
    if missing.is_empty() {
        return Ok(());
    }
    system::apt_install(&missing, "the benchmark's workloads and reference tracer")
}
