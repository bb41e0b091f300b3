//! From a snapshot to findings: knots in the wait-for graph first, then exit-phase rules
//! for processes the knots do not cover.
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{
    explain,
    model::{ChildTarget, Pid, Process, Snapshot, Thread, Wait},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    PipeDeadlock,
    ExitBlockedOnThreads,
    ExitBlockedOnPipe,
    StuckAfterSignal,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::PipeDeadlock,
        Kind::ExitBlockedOnThreads,
        Kind::ExitBlockedOnPipe,
        Kind::StuckAfterSignal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PipeDeadlock => "pipe_deadlock",
            Kind::ExitBlockedOnThreads => "exit_blocked_on_threads",
            Kind::ExitBlockedOnPipe => "exit_blocked_on_pipe",
            Kind::StuckAfterSignal => "stuck_after_signal",
        }
    }
}

/// One edge of the chain: a blocked thread and the processes that could release it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Link {
    pub pid: Pid,
    pub tid: Pid,
    pub wait: Wait,
    pub waits_on: Vec<Pid>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    /// Every process involved, sorted.
    pub pids: Vec<Pid>,
    pub chain: Vec<Link>,
    /// Processes that can never run again either, because they wait on this knot.
    pub behind: Vec<Pid>,
    /// Monotonic ns when the first wait of the finding began.
    pub started_ns: u64,
    pub summary: String,
}

pub fn analyze(snapshot: &Snapshot) -> Vec<Finding> {
    let mut findings = knots(snapshot);
    let covered: BTreeSet<Pid> = findings.iter().flat_map(|f| f.pids.clone()).collect();
    findings.extend(
        snapshot
            .processes
            .values()
            .filter(|process| !covered.contains(&process.pid))
            .filter_map(|process| exit_phase_finding(snapshot, process)),
    );
    findings
}

/// The processes that could end `thread`'s wait, or `None` when the wait ends by itself
/// or exitwatch cannot tell who would end it (such threads count as able to run).
fn releasers(snapshot: &Snapshot, process: &Process, thread: &Thread) -> Option<Vec<Pid>> {
    if !thread.stuck {
        return None;
    }
    let pids: Vec<Pid> = match thread.wait.as_ref()? {
        Wait::PipeWrite { pipe, .. } => snapshot.pipes.get(pipe)?.readers.iter().copied().collect(),
        Wait::PipeRead { pipe, .. } => snapshot.pipes.get(pipe)?.writers.iter().copied().collect(),
        Wait::PollRead { pipes } => {
            let mut writers = BTreeSet::new();
            for pipe in pipes {
                writers.extend(&snapshot.pipes.get(pipe)?.writers);
            }
            writers.into_iter().collect()
        }
        Wait::Child { target } => match *target {
            ChildTarget::Pid(pid) => vec![pid],
            ChildTarget::AnyChild => snapshot.children_of(process.pid).map(|c| c.pid).collect(),
            ChildTarget::Group(pgrp) => snapshot
                .children_of(process.pid)
                .filter(|c| c.pgrp == pgrp)
                .map(|c| c.pid)
                .collect(),
        },
        // An untimed futex is a lock, condition or join that only another thread of the
        // same process can release.
        Wait::Futex { timed: false } => vec![process.pid],
        Wait::Futex { timed: true } | Wait::Other { .. } => return None,
    };
    (!pids.is_empty()).then_some(pids)
}

type ThreadId = (Pid, Pid);

/// OR-model deadlock detection: a blocked thread is live if any of its releasers has a
/// live thread (other than itself); what stays not live after the fixpoint is a knot.
fn knots(snapshot: &Snapshot) -> Vec<Finding> {
    let mut blocked: BTreeMap<ThreadId, Vec<Pid>> = BTreeMap::new();
    let mut live: BTreeSet<ThreadId> = BTreeSet::new();
    for process in snapshot.processes.values() {
        for thread in &process.threads {
            let id = (process.pid, thread.tid);
            match releasers(snapshot, process, thread) {
                Some(pids) => {
                    blocked.insert(id, pids);
                }
                None => {
                    live.insert(id);
                }
            }
        }
    }
    let has_live_thread = |live: &BTreeSet<ThreadId>, pid: Pid, except: ThreadId| {
        // A releaser exitwatch did not inspect is assumed able to run.
        !snapshot.processes.contains_key(&pid)
            || live
                .range((pid, Pid::MIN)..=(pid, Pid::MAX))
                .any(|&id| id != except)
    };
    loop {
        let freed: Vec<ThreadId> = blocked
            .iter()
            .filter(|(id, pids)| {
                !live.contains(id) && pids.iter().any(|&pid| has_live_thread(&live, pid, **id))
            })
            .map(|(id, _)| *id)
            .collect();
        if freed.is_empty() {
            break;
        }
        live.extend(freed);
    }
    blocked.retain(|id, _| !live.contains(id));
    knot_cores(&blocked)
        .into_iter()
        .filter_map(|(core, behind)| knot_finding(snapshot, &blocked, &core, behind))
        .collect()
}

/// Splits the deadlocked processes into knots and the processes stuck behind them.
///
/// A knot is a sink in the graph of "process p waits on process q": a set whose members
/// all wait on each other and on nothing outside. Others (a `tee` reading a deadlocked
/// program's output) can never run either, but they are victims, not causes; they are
/// reported with the knot they wait on, not as part of it.
fn knot_cores(blocked: &BTreeMap<ThreadId, Vec<Pid>>) -> Vec<(BTreeSet<Pid>, Vec<Pid>)> {
    let dead: BTreeSet<Pid> = blocked.keys().map(|(pid, _)| *pid).collect();
    let mut edges: BTreeMap<Pid, BTreeSet<Pid>> = BTreeMap::new();
    for ((pid, _), releasers) in blocked {
        let targets = edges.entry(*pid).or_default();
        targets.extend(releasers.iter().filter(|q| dead.contains(q)));
    }
    let reach = |from: Pid| {
        let mut seen = BTreeSet::from([from]);
        let mut stack = vec![from];
        while let Some(pid) = stack.pop() {
            for next in edges.get(&pid).into_iter().flatten() {
                if seen.insert(*next) {
                    stack.push(*next);
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<Pid, BTreeSet<Pid>> = dead.iter().map(|&p| (p, reach(p))).collect();
    let mut cores: Vec<BTreeSet<Pid>> = Vec::new();
    for (&pid, reachable) in &reaches {
        let mutual: BTreeSet<Pid> = reachable
            .iter()
            .copied()
            .filter(|q| reaches[q].contains(&pid))
            .collect();
        if mutual == *reachable && !cores.contains(&mutual) {
            cores.push(mutual);
        }
    }
    let in_core: BTreeSet<Pid> = cores.iter().flatten().copied().collect();
    cores
        .into_iter()
        .map(|core| {
            let behind = reaches
                .iter()
                .filter(|(pid, reachable)| !in_core.contains(pid) && !reachable.is_disjoint(&core))
                .map(|(pid, _)| *pid)
                .collect();
            (core, behind)
        })
        .collect()
}

fn knot_finding(
    snapshot: &Snapshot,
    blocked: &BTreeMap<ThreadId, Vec<Pid>>,
    core: &BTreeSet<Pid>,
    behind: Vec<Pid>,
) -> Option<Finding> {
    let mut chain = Vec::new();
    let mut started_ns = u64::MAX;
    for &(pid, tid) in blocked.keys().filter(|(pid, _)| core.contains(pid)) {
        let Some(thread) = snapshot.processes.get(&pid).and_then(|p| p.thread(tid)) else {
            continue;
        };
        let Some(wait) = thread.wait.clone() else {
            continue;
        };
        started_ns = started_ns.min(thread.since_ns);
        chain.push(Link {
            pid,
            tid,
            wait,
            waits_on: blocked.get(&(pid, tid)).cloned().unwrap_or_default(),
        });
    }
    let pids: BTreeSet<Pid> = chain.iter().map(|link| link.pid).collect();
    let exits = || {
        pids.iter()
            .filter_map(|pid| snapshot.processes.get(pid)?.exit)
    };
    // Threads of a live process deadlocked on their own locks are a bug, but not a hang
    // at exit: they are reported only once the process tries to exit or is told to.
    let kind = if chain.iter().any(|link| !link.wait.pipes().is_empty()) {
        Kind::PipeDeadlock
    } else if exits().any(|exit| exit.is_exiting()) {
        Kind::ExitBlockedOnThreads
    } else if exits().any(|exit| exit.was_signalled()) {
        Kind::StuckAfterSignal
    } else {
        return None;
    };
    let mut finding = Finding {
        kind,
        pids: pids.into_iter().collect(),
        chain,
        behind,
        started_ns,
        summary: String::new(),
    };
    finding.summary = explain::summary(snapshot, &finding);
    Some(finding)
}

/// Rules for one exiting (or signalled) process that is not part of a knot.
fn exit_phase_finding(snapshot: &Snapshot, process: &Process) -> Option<Finding> {
    let exit = process.exit?;
    if snapshot.now_ns.saturating_sub(exit.since_ns) < snapshot.hang_after_ns {
        return None;
    }
    let stuck_pipe_writer = process
        .threads
        .iter()
        .find(|t| t.stuck && matches!(t.wait, Some(Wait::PipeWrite { .. })));
    let exit_thread_joins = process
        .exit_thread()
        .is_some_and(|t| t.wait == Some(Wait::Futex { timed: false }))
        && process.threads.len() > 1;

    let (kind, threads): (Kind, Vec<&Thread>) = match stuck_pipe_writer {
        Some(writer) if exit.is_exiting() => (Kind::ExitBlockedOnPipe, vec![writer]),
        _ if exit.is_exiting() && exit_thread_joins => (
            Kind::ExitBlockedOnThreads,
            process
                .threads
                .iter()
                .filter(|t| t.wait.is_some())
                .collect(),
        ),
        _ if exit.was_signalled() && process.threads.iter().any(|t| t.stuck) => (
            Kind::StuckAfterSignal,
            process.threads.iter().filter(|t| t.stuck).collect(),
        ),
        _ => return None,
    };
    let chain = threads
        .into_iter()
        .filter_map(|thread| {
            let wait = thread.wait.clone()?;
            let waits_on = match &wait {
                Wait::PipeWrite { pipe, .. } => snapshot
                    .pipes
                    .get(pipe)
                    .map(|ends| ends.readers.iter().copied().collect())
                    .unwrap_or_default(),
                _ => vec![process.pid],
            };
            Some(Link {
                pid: process.pid,
                tid: thread.tid,
                wait,
                waits_on,
            })
        })
        .collect();
    let mut pids = vec![process.pid];
    if kind == Kind::ExitBlockedOnPipe {
        if let Some(pipe) = stuck_pipe_writer.and_then(|t| t.wait.as_ref()?.pipe()) {
            pids.extend(
                snapshot
                    .pipes
                    .get(&pipe)
                    .into_iter()
                    .flat_map(|e| e.readers.clone()),
            );
        }
        pids.sort_unstable();
        pids.dedup();
    }
    let mut finding = Finding {
        kind,
        pids,
        chain,
        behind: Vec::new(),
        started_ns: exit.since_ns,
        summary: String::new(),
    };
    finding.summary = explain::summary(snapshot, &finding);
    Some(finding)
}
