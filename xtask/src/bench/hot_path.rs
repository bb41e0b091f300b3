//! The programs' cost where it is largest, measured so that a shared VM's noise cannot
//! hide a 1 % difference: pipe and futex ping-pong, where every switch is a tracked sleep,
//! and thread churn, where every thread runs the lifecycle programs. Whole runs minutes
//! apart differ by far more than that (ten runs of `perf bench sched pipe -l 200000` in a
//! row on the development VM: 2.50–3.91 µs per round trip); slices a fraction of a second
//! apart share the machine's state of the moment. So each block runs a short slice (about
//! 60 ms: 20,000 round trips of about 3 µs, or 3,200 threads) with no program, the empty
//! `sched_switch` program and the agent's programs attached, in a different order each
//! block, and gives one ratio per pair: the drift cancels out of the ratio, and many blocks
//! narrow its confidence interval. A last pass with the kernel's BPF stats on measures the
//! programs' run time per run, which wall time cannot blur.
//!
//! The agent's programs here are `sched_switch`, `task_newtask` and `sched_process_exit`,
//! without the agent's user space: a thread's exit that does not end its process sends no
//! event, so only each slice's own process start and exit send one (not read), and on the
//! ping-pongs nearly every run is `sched_switch`'s.
use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result};

use super::{
    hooks::{Hook, Hooks},
    workloads::{Sizes, Workload},
    Layout, Plan, Results, WORKLOAD_CPU,
};
use crate::system;

/// The workloads whose cost is the programs'.
const WORKLOADS: [Workload; 3] = [Workload::Pipe, Workload::Futex, Workload::Threads];
/// A slice is the full workload divided by this: about 60 ms on this kind of machine.
const SLICE_DIVISOR: u64 = 25;
/// What is attached in each slot of a block.
const SLOTS: [Option<Hook>; 3] = [None, Some(Hook::Empty), Some(Hook::Agent)];
/// Indexes of the slots.
pub const NONE: usize = 0;
pub const EMPTY: usize = 1;
pub const AGENT: usize = 2;
/// Every order of the three slots, one per block in turn, so no slot is always first
/// after a detach or last before one.
const ORDERS: [[usize; 3]; 6] = [
    [0, 1, 2],
    [1, 2, 0],
    [2, 0, 1],
    [0, 2, 1],
    [2, 1, 0],
    [1, 0, 2],
];
/// Slices of each workload per program in the BPF stats pass.
const PROFILED_ROUNDS: u64 = 20;

/// What one workload gave.
#[derive(Clone, Debug, Default)]
pub struct SliceSet {
    /// Operations per slice.
    pub ops: u64,
    /// Per block: the slice's figure (µs per operation) in each slot of [`SLOTS`].
    pub blocks: Vec<[f64; 3]>,
    /// From the stats pass, per hook (its programs together): runs per operation and
    /// nanoseconds per run. The runs are every CPU's during the slices, the workload's and
    /// a few others' (the idle CPU's, the spawning of the workload), so they count slightly
    /// more than the workload's own.
    pub profile: BTreeMap<Hook, RunTime>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RunTime {
    pub runs_per_op: f64,
    pub ns_per_run: f64,
}

impl RunTime {
    pub fn ns_per_op(self) -> f64 {
        self.runs_per_op * self.ns_per_run
    }
}

impl SliceSet {
    /// Per block, the figure in slot `numerator` over the figure in slot `denominator`.
    pub fn ratios(&self, numerator: usize, denominator: usize) -> Vec<f64> {
        self.blocks
            .iter()
            .map(|block| block[numerator] / block[denominator])
            .collect()
    }
}

pub fn measure(layout: &Layout, plan: &Plan, results: &mut Results) -> Result<()> {
    results.environment.wait_for_quiet(&[], plan.quiet_wait);
    let sizes = Sizes::FULL.scaled(SLICE_DIVISOR);
    let mut hooks = Hooks::load(&layout.root)?;
    let mut sets: BTreeMap<Workload, SliceSet> = WORKLOADS
        .into_iter()
        .map(|w| {
            let set = SliceSet {
                ops: w.ops(&sizes),
                ..SliceSet::default()
            };
            (w, set)
        })
        .collect();
    // Whole cycles of the orders, so that each slot is in each position equally often.
    let blocks = plan.hot_path_blocks.div_ceil(ORDERS.len()) * ORDERS.len();
    system::say(format!(
        "hot path: {blocks} blocks of slices (no program, empty sched_switch, the agent's), \
         pipe and futex ping-pong, thread churn"
    ));
    for block in 0..blocks {
        if block % 50 == 0 {
            results.environment.check(&[]);
        }
        let mut figures: BTreeMap<Workload, [f64; 3]> = BTreeMap::new();
        for slot in ORDERS[block % ORDERS.len()] {
            hooks.attach(SLOTS[slot])?;
            for workload in WORKLOADS {
                let outcome = workload.run(layout, &sizes, WORKLOAD_CPU)?;
                figures.entry(workload).or_default()[slot] = outcome.value;
            }
        }
        hooks.attach(None)?;
        for (workload, figures) in figures {
            sets.entry(workload).or_default().blocks.push(figures);
        }
    }
    profile(layout, &sizes, &mut hooks, &mut sets)?;
    results.hot_path = sets;
    Ok(())
}

/// Each program attached with the kernel's BPF stats on, in turn, for `PROFILED_ROUNDS`
/// slices of each workload: like the slices, interleaved, since the stats' own clock
/// reads drift with the machine too.
fn profile(
    layout: &Layout,
    sizes: &Sizes,
    hooks: &mut Hooks,
    sets: &mut BTreeMap<Workload, SliceSet>,
) -> Result<()> {
    system::say("hot path: the programs' run time, with the kernel's BPF stats on");
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("turning the kernel's BPF stats on")?;
    let mut totals: BTreeMap<(Workload, Hook), (u64, Duration)> = BTreeMap::new();
    for round in 0..PROFILED_ROUNDS {
        let order = if round % 2 == 0 {
            [Hook::Empty, Hook::Agent]
        } else {
            [Hook::Agent, Hook::Empty]
        };
        for hook in order {
            hooks.attach(Some(hook))?;
            for workload in WORKLOADS {
                let (runs_before, time_before) = hooks.stats(hook)?;
                workload.run(layout, sizes, WORKLOAD_CPU)?;
                let (runs_after, time_after) = hooks.stats(hook)?;
                let total = totals.entry((workload, hook)).or_default();
                total.0 += runs_after.saturating_sub(runs_before);
                total.1 += time_after.saturating_sub(time_before);
            }
        }
    }
    // No runs means the stats were not in effect: leave the figure out rather than
    // report a free program.
    for ((workload, hook), (runs, time)) in totals.into_iter().filter(|(_, (runs, _))| *runs > 0) {
        let set = sets.entry(workload).or_default();
        set.profile.insert(
            hook,
            RunTime {
                runs_per_op: runs as f64 / (set.ops * PROFILED_ROUNDS) as f64,
                ns_per_run: time.as_nanos() as f64 / runs as f64,
            },
        );
    }
    hooks.attach(None)
}
