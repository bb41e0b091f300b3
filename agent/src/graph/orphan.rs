//! A pipe held open by an orphan: a reader waits for input (or end-of-file) on a pipe
//! whose write end only processes that are not its children hold, re-parented when the
//! child that started them exited, and none of them writes. Nothing is deadlocked (the
//! orphan is alive, merely idle), so the wait-for search sees a live releaser; this rule
//! names the shape instead.
use std::collections::BTreeSet;

use super::{
    analyze::{Finding, Kind, Link},
    explain,
    model::{Pid, Process, Snapshot, Wait},
};

/// One finding per stuck reader process outside `covered` whose every stuck pipe read
/// waits on orphans only.
pub fn findings(snapshot: &Snapshot, covered: &BTreeSet<Pid>) -> Vec<Finding> {
    snapshot
        .processes
        .values()
        .filter(|reader| !covered.contains(&reader.pid))
        .filter_map(|reader| finding(snapshot, reader))
        .collect()
}

fn finding(snapshot: &Snapshot, reader: &Process) -> Option<Finding> {
    let mut chain = Vec::new();
    let mut started_ns = u64::MAX;
    for thread in reader.threads.iter().filter(|t| t.stuck) {
        let Some(wait @ (Wait::PipeRead { .. } | Wait::PollRead { .. })) = &thread.wait else {
            continue;
        };
        let pipes = wait.pipes();
        let Some(writers) = writers(snapshot, &pipes) else {
            continue;
        };
        if writers.is_empty()
            || !writers
                .iter()
                .all(|&w| is_orphan(snapshot, reader, w, &pipes))
        {
            return None;
        }
        started_ns = started_ns.min(thread.since_ns);
        chain.push(Link {
            pid: reader.pid,
            tid: thread.tid,
            wait: wait.clone(),
            waits_on: writers.into_iter().collect(),
        });
    }
    if chain.is_empty() {
        return None;
    }
    let mut pids: BTreeSet<Pid> = chain.iter().flat_map(|l| l.waits_on.clone()).collect();
    pids.insert(reader.pid);
    let mut finding = Finding {
        kind: Kind::PipeHeldByOrphan,
        pids: pids.into_iter().collect(),
        chain,
        behind: Vec::new(),
        started_ns,
        summary: String::new(),
        phase: None,
    };
    explain::describe(snapshot, &mut finding);
    Some(finding)
}

/// Every holder of a write end of `pipes`, or `None` if a pipe's holders are unknown.
fn writers(snapshot: &Snapshot, pipes: &[u64]) -> Option<BTreeSet<Pid>> {
    let mut writers = BTreeSet::new();
    for pipe in pipes {
        writers.extend(&snapshot.pipes.get(pipe)?.writers);
    }
    Some(writers)
}

/// `holder` is alive, is neither the reader nor its parent or child, and writes none of
/// `pipes`.
///
/// A sibling (same parent as the reader) is the producer of a shell pipeline, which may
/// be quiet for as long as it likes; it counts as an orphan only when the reader has a
/// child that exited unreaped, the mark of a parent reading its child's output to EOF
/// (when the reader's parent is the subreaper the orphan went to).
fn is_orphan(snapshot: &Snapshot, reader: &Process, holder: Pid, pipes: &[u64]) -> bool {
    let Some(process) = snapshot.processes.get(&holder) else {
        return false;
    };
    let writing = process.threads.iter().any(|t| match &t.wait {
        Some(Wait::PipeWrite { pipe, .. }) => pipes.contains(pipe),
        _ => false,
    });
    holder != reader.pid
        && holder != reader.ppid
        && process.ppid != reader.pid
        && !exited(process)
        && !writing
        && (process.ppid != reader.ppid || exited_children(snapshot, reader.pid).next().is_some())
}

/// Children of `parent` that have exited and wait to be reaped (zombies).
pub fn exited_children(snapshot: &Snapshot, parent: Pid) -> impl Iterator<Item = &Process> {
    snapshot.children_of(parent).filter(|child| exited(child))
}

fn exited(process: &Process) -> bool {
    !process.threads.is_empty() && process.threads.iter().all(|t| t.state == 'Z')
}
