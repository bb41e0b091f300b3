//! From a snapshot to findings: knots in the wait-for graph first, then exit-phase rules
//! for processes the knots do not cover.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{
    explain,
    model::{ChildTarget, Pid, Process, Snapshot, Thread, Wait},
    orphan,
    phase::Phase,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    PipeDeadlock,
    ExitBlockedOnThreads,
    ExitBlockedOnPipe,
    StuckAfterSignal,
    PipeHeldByOrphan,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::PipeDeadlock,
        Kind::ExitBlockedOnThreads,
        Kind::ExitBlockedOnPipe,
        Kind::StuckAfterSignal,
        Kind::PipeHeldByOrphan,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PipeDeadlock => "pipe_deadlock",
            Kind::ExitBlockedOnThreads => "exit_blocked_on_threads",
            Kind::ExitBlockedOnPipe => "exit_blocked_on_pipe",
            Kind::StuckAfterSignal => "stuck_after_signal",
            Kind::PipeHeldByOrphan => "pipe_held_by_orphan",
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
    /// The exit phase its stacks show, if any.
    pub phase: Option<Phase>,
}

/// Findings, and why the rest is not one.
pub struct Analysis {
    pub findings: Vec<Finding>,
    /// Each process found able to run, with the process that makes it so: itself when one
    /// of its threads can run, else the releaser whose progress ends one of its waits.
    pub live_by: BTreeMap<Pid, Pid>,
}

pub fn analyze(snapshot: &Snapshot) -> Vec<Finding> {
    analysis(snapshot).findings
}

pub fn analysis(snapshot: &Snapshot) -> Analysis {
    let (mut findings, live_by) = knots(snapshot);
    let covered = |findings: &[Finding]| -> BTreeSet<Pid> {
        findings
            .iter()
            .flat_map(|f| f.pids.iter().chain(&f.behind).copied())
            .collect()
    };
    findings.extend(orphan::findings(snapshot, &covered(&findings)));
    let covered: BTreeSet<Pid> = findings.iter().flat_map(|f| f.pids.clone()).collect();
    findings.extend(
        snapshot
            .processes
            .values()
            .filter(|process| !covered.contains(&process.pid))
            .filter_map(|process| exit_phase_finding(snapshot, process)),
    );
    Analysis { findings, live_by }
}

/// The processes that could end `thread`'s wait, or `None` when the wait ends by itself
/// or exitwatch cannot tell who would end it (such threads count as able to run).
fn releasers(
    snapshot: &Snapshot,
    children: &Children,
    process: &Process,
    thread: &Thread,
) -> Option<Vec<Pid>> {
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
        Wait::Child { target } => {
            let children = children.get(&process.pid).into_iter().flatten();
            match *target {
                ChildTarget::Pid(pid) => vec![pid],
                ChildTarget::AnyChild => children.map(|c| c.pid).collect(),
                ChildTarget::Group(pgrp) => {
                    children.filter(|c| c.pgrp == pgrp).map(|c| c.pid).collect()
                }
            }
        }
        // An untimed futex is a lock, condition or join that only another thread of the
        // same process can release.
        Wait::Futex { timed: false } => vec![process.pid],
        Wait::Futex { timed: true } | Wait::Other { .. } => return None,
    };
    (!pids.is_empty()).then_some(pids)
}

type ThreadId = (Pid, Pid);

/// The snapshot's processes by parent, built once per analysis: looking children up by
/// scanning every process for each waiter would be quadratic.
type Children<'a> = BTreeMap<Pid, Vec<&'a Process>>;

/// OR-model deadlock detection: a blocked thread is live if any of its releasers has a
/// live thread; what stays not live is a knot. A worklist frees each waiter once, as soon
/// as one of its releasers can run, so the cost is linear in the waits (a pass over all
/// of them per freed level would be quadratic in a long chain).
fn knots(snapshot: &Snapshot) -> (Vec<Finding>, BTreeMap<Pid, Pid>) {
    let mut blocked: BTreeMap<ThreadId, Vec<Pid>> = BTreeMap::new();
    let mut children: Children = BTreeMap::new();
    for process in snapshot.processes.values() {
        children.entry(process.ppid).or_default().push(process);
    }
    // Processes with a thread that can run.
    let mut runnable: BTreeSet<Pid> = BTreeSet::new();
    for process in snapshot.processes.values() {
        for thread in &process.threads {
            match releasers(snapshot, &children, process, thread) {
                Some(pids) => {
                    blocked.insert((process.pid, thread.tid), pids);
                }
                None => {
                    runnable.insert(process.pid);
                }
            }
        }
    }
    let mut waiters: BTreeMap<Pid, Vec<ThreadId>> = BTreeMap::new();
    for (id, pids) in &blocked {
        for &pid in pids {
            // A releaser exitwatch did not inspect is assumed able to run.
            if !snapshot.processes.contains_key(&pid) {
                runnable.insert(pid);
            }
            waiters.entry(pid).or_default().push(*id);
        }
    }
    let mut live_by: BTreeMap<Pid, Pid> = runnable.iter().map(|&pid| (pid, pid)).collect();
    let mut ready: Vec<Pid> = runnable.iter().copied().collect();
    let mut live: BTreeSet<ThreadId> = BTreeSet::new();
    while let Some(pid) = ready.pop() {
        for id in waiters.remove(&pid).unwrap_or_default() {
            if live.insert(id) && runnable.insert(id.0) {
                live_by.insert(id.0, pid);
                ready.push(id.0);
            }
        }
    }
    blocked.retain(|id, _| !live.contains(id));
    let findings = knot_cores(&blocked)
        .into_iter()
        .filter_map(|(core, behind)| knot_finding(snapshot, &blocked, &core, behind))
        .collect();
    (findings, live_by)
}

/// Splits the deadlocked processes into knots and the processes stuck behind them.
///
/// A knot is a sink in the graph of "process p waits on process q": a set whose members
/// all wait on each other and on nothing outside. Others (a `tee` reading a deadlocked
/// program's output) can never run either, but they are victims, not causes; they are
/// reported with the knot they wait on, not as part of it.
fn knot_cores(blocked: &BTreeMap<ThreadId, Vec<Pid>>) -> Vec<(BTreeSet<Pid>, Vec<Pid>)> {
    let nodes: Vec<Pid> = blocked
        .keys()
        .map(|(pid, _)| *pid)
        .collect::<BTreeSet<Pid>>()
        .into_iter()
        .collect();
    let index: BTreeMap<Pid, usize> = nodes.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let mut edges: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); nodes.len()];
    for ((pid, _), releasers) in blocked {
        let from = index[pid];
        edges[from].extend(releasers.iter().filter_map(|q| index.get(q).copied()));
    }
    let edges: Vec<Vec<usize>> = edges.into_iter().map(Vec::from_iter).collect();
    let component = strongly_connected(&edges);
    let components = component.iter().max().map_or(0, |max| max + 1);
    // A knot is a component that no edge leaves.
    let mut leaves = vec![false; components];
    for (from, targets) in edges.iter().enumerate() {
        if targets.iter().any(|&to| component[to] != component[from]) {
            leaves[component[from]] = true;
        }
    }
    let mut reversed: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (from, targets) in edges.iter().enumerate() {
        for &to in targets {
            reversed[to].push(from);
        }
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); components];
    for (node, &c) in component.iter().enumerate() {
        members[c].push(node);
    }
    members
        .into_iter()
        .enumerate()
        .filter(|&(c, _)| !leaves[c])
        .map(|(_, members)| {
            // Everything that reaches the knot and is no knot itself waits behind it.
            let mut seen: BTreeSet<usize> = members.iter().copied().collect();
            let mut stack = members.clone();
            let mut behind = Vec::new();
            while let Some(node) = stack.pop() {
                for &from in &reversed[node] {
                    if seen.insert(from) {
                        stack.push(from);
                        if leaves[component[from]] {
                            behind.push(nodes[from]);
                        }
                    }
                }
            }
            behind.sort_unstable();
            (members.into_iter().map(|n| nodes[n]).collect(), behind)
        })
        .collect()
}

/// Tarjan's algorithm without recursion (a hostile host can make the graph deep): the
/// strongly connected component of each node, numbered from 0.
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<usize> {
    const UNVISITED: usize = usize::MAX;
    let count = edges.len();
    let (mut order, mut low) = (vec![UNVISITED; count], vec![0; count]);
    let mut component = vec![UNVISITED; count];
    let (mut next_order, mut components) = (0, 0);
    let mut stack: Vec<usize> = Vec::new();
    // (node, index of the next edge to follow)
    let mut calls: Vec<(usize, usize)> = Vec::new();
    for root in 0..count {
        if order[root] != UNVISITED {
            continue;
        }
        calls.push((root, 0));
        while let Some(&mut (node, ref mut next)) = calls.last_mut() {
            if *next == 0 {
                order[node] = next_order;
                low[node] = next_order;
                next_order += 1;
                stack.push(node);
            }
            if let Some(&to) = edges[node].get(*next) {
                *next += 1;
                if order[to] == UNVISITED {
                    calls.push((to, 0));
                } else if component[to] == UNVISITED {
                    low[node] = low[node].min(order[to]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                low[parent] = low[parent].min(low[node]);
            }
            if low[node] == order[node] {
                while let Some(member) = stack.pop() {
                    component[member] = components;
                    if member == node {
                        break;
                    }
                }
                components += 1;
            }
        }
    }
    component
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
        phase: None,
    };
    explain::describe(snapshot, &mut finding);
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
        phase: None,
    };
    explain::describe(snapshot, &mut finding);
    Some(finding)
}
