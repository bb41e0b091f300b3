//! One sentence per finding: who is stuck, in which wait, on what, and the usual fix.
use exitwatch_common::exit_reason;

use super::{
    analyze::{Finding, Kind, Link},
    model::{ChildTarget, Pid, Snapshot, Thread, Wait},
    orphan::exited_children,
    phase::{self, thread_name, Found},
};
use crate::stacks::Stack;

/// A sentence stays readable, and its size linear in the processes involved, however
/// big the knot: this many clauses, and this many processes named in a list.
const MAX_CLAUSES: usize = 8;
const MAX_NAMED: usize = 4;

/// Writes the finding's summary and exit phase, both from one reading of its stacks.
pub fn describe(snapshot: &Snapshot, finding: &mut Finding) {
    let found = phase::classify(snapshot, finding);
    finding.phase = found.map(|found| found.phase());
    finding.summary = summary(snapshot, finding, found);
}

fn summary(snapshot: &Snapshot, finding: &Finding, found: Option<Found>) -> String {
    let mut clauses: Vec<String> = finding
        .chain
        .iter()
        .take(MAX_CLAUSES)
        .map(|link| clause(snapshot, link))
        .collect();
    let more = finding.chain.len().saturating_sub(MAX_CLAUSES);
    if more > 0 {
        clauses.push(format!(
            "{more} more thread{} {} blocked the same way",
            pick(more, "", "s"),
            pick(more, "is", "are")
        ));
    }
    let mut clauses = clauses.join("; ");
    if !finding.behind.is_empty() {
        clauses.push_str(&format!(
            "; {} {} on them too",
            holders(snapshot, &finding.behind),
            pick(finding.behind.len(), "waits", "wait")
        ));
    }
    let phase = found
        .map(|found| found.sentence())
        .filter(|sentence| !sentence.is_empty())
        .map_or_else(String::new, |sentence| format!(" {sentence}"));
    match finding.kind {
        Kind::PipeDeadlock => format!(
            "Pipe deadlock: {clauses}; none of them can proceed.{phase} Fix: {}",
            match found {
                Some(found @ Found::MultiprocessingExit { .. }) => found.fix(),
                _ => format!("{}.", pipe_fix(&finding.chain)),
            }
        ),
        Kind::ExitBlockedOnThreads => {
            exit_blocked_on_threads(snapshot, finding, &clauses, &phase, found)
        }
        Kind::ExitBlockedOnPipe => format!(
            "Exit blocked on a pipe: {} is exiting, but {clauses}, and no reader drains it.\
             {phase} Fix: make sure the reader keeps reading (or is not stopped) until the \
             writer exits, or close the pipe before exiting.",
            who(snapshot, first_pid(finding))
        ),
        Kind::StuckAfterSignal => format!(
            "Stuck after {}: {} got the signal {:.0} s ago but {clauses}. Fix: let the signal \
             handler wake or cancel the blocking wait (or exit), instead of only setting a flag.",
            signal_name(exit_of(snapshot, finding).map_or(0, |e| e.signal)),
            who(snapshot, first_pid(finding)),
            seconds(snapshot.now_ns.saturating_sub(finding.started_ns)),
        ),
        Kind::PipeHeldByOrphan => pipe_held_by_orphan(snapshot, finding, &clauses),
    }
}

fn pipe_held_by_orphan(snapshot: &Snapshot, finding: &Finding, clauses: &str) -> String {
    let reader = first_pid(finding);
    let orphans: Vec<Pid> = finding
        .pids
        .iter()
        .copied()
        .filter(|&pid| pid != reader)
        .collect();
    let parents: std::collections::BTreeSet<Pid> = orphans
        .iter()
        .filter_map(|pid| Some(snapshot.processes.get(pid)?.ppid))
        .collect();
    let adopted = match parents.iter().next() {
        Some(&parent) if parents.len() == 1 => {
            format!(" (re-parented to {})", who(snapshot, parent))
        }
        _ => String::new(),
    };
    let exited: Vec<Pid> = exited_children(snapshot, reader).map(|c| c.pid).collect();
    // Which child started the orphan is nowhere in /proc: only unreaped children are seen.
    let origin = match exited.len() {
        0 => "The child that started it in the background has already been reaped, so \
              exitwatch cannot name it."
            .to_string(),
        1 => format!(
            "It was most likely started in the background by the reader's child {}, which \
             has exited (not yet reaped).",
            who(snapshot, exited[0])
        ),
        n => format!(
            "It was most likely started in the background by one of the reader's {n} exited \
             (not yet reaped) children {}.",
            holders(snapshot, &exited)
        ),
    };
    format!(
        "Pipe held open by an orphan: {clauses}; {} {} of {}{adopted} and {} not writing, \
         so end-of-file never comes. {origin} Fix: redirect the background \
         process's output (cmd >/dev/null 2>&1 &; from Python, stdin/stdout/stderr=DEVNULL \
         and start_new_session=True), or do not let it inherit the pipe (close_fds, or close \
         the pipe's fds before starting it).",
        holders(snapshot, &orphans),
        pick(orphans.len(), "is no child", "are no children"),
        who(snapshot, reader),
        pick(orphans.len(), "is", "are"),
    )
}

fn exit_blocked_on_threads(
    snapshot: &Snapshot,
    finding: &Finding,
    clauses: &str,
    phase: &str,
    found: Option<Found>,
) -> String {
    let pid = first_pid(finding);
    let exit = exit_of(snapshot, finding).unwrap_or_default();
    let age = seconds(snapshot.now_ns.saturating_sub(exit.since_ns));
    let spawns = if exit.thread_spawns > 0 {
        format!(
            " {} new thread{} started during exit, the mark of a threading.Timer (or worker) \
             that re-arms itself.",
            exit.thread_spawns,
            pick(exit.thread_spawns as usize, "", "s")
        )
    } else {
        String::new()
    };
    format!(
        "Exit blocked on threads: {} has been exiting for {age:.0} s ({}) but cannot finish: \
         {clauses}.{phase}{spawns} Fix: {}",
        who(snapshot, pid),
        reasons(exit.reasons),
        exit_fix(found, exit.reasons),
    )
}

/// Advice for the exit phase the stacks show, else in the program's own language: an
/// interpreter's exit, or C/C++ code blocked inside `exit()` (found on a stack).
fn exit_fix(found: Option<Found>, reasons: u32) -> String {
    let native_exit =
        reasons & exit_reason::LIBC_EXIT != 0 && reasons & exit_reason::PY_FINALIZE == 0;
    match found {
        Some(found) => found.fix(),
        None if native_exit => Found::AtexitHandler {
            handler: None,
            python: false,
        }
        .fix(),
        None => "make background threads daemon=True, cancel() timers and stop workers \
                 (executor.shutdown(cancel_futures=True)) before exit, or do not join threads \
                 that never return in atexit handlers."
            .to_string(),
    }
}

fn clause(snapshot: &Snapshot, link: &Link) -> String {
    let waiting = snapshot
        .processes
        .get(&link.pid)
        .and_then(|p| p.thread(link.tid));
    let thread = if link.tid == link.pid {
        who(snapshot, link.pid)
    } else {
        format!(
            "{} of {}",
            thread_name(link.tid, waiting.and_then(Thread::python_name)),
            who(snapshot, link.pid)
        )
    };
    let code = waiting
        .and_then(|t| t.stack.as_deref())
        .and_then(Stack::user_call)
        .map(|(call, source)| format!(" in `{call}`{source}"))
        .unwrap_or_default();
    // Only a stuck thread's sleep is timed: others re-block as they go.
    let blocked = waiting
        .filter(|t| t.stuck)
        .map(|t| {
            let blocked = seconds(snapshot.now_ns.saturating_sub(t.since_ns));
            format!(", blocked for {blocked:.0} s,")
        })
        .unwrap_or_default();
    let holders_of = |end: &str| {
        format!(
            ", whose {end} end only {} {}",
            holders(snapshot, &link.waits_on),
            pick(link.waits_on.len(), "holds", "hold")
        )
    };
    // Summaries name the processes on the other side of the wait, not only their pids.
    let what = match &link.wait {
        Wait::PipeWrite { .. } => format!("is {}{}", link.wait, holders_of("read")),
        Wait::PipeRead { .. } => format!("is {}{}", link.wait, holders_of("write")),
        Wait::PollRead { .. } => format!("is {} only{}", link.wait, holders_of("write")),
        Wait::Child {
            target: ChildTarget::Pid(child),
        } => format!("is in wait() for its child {}", who(snapshot, *child)),
        Wait::Child { .. } => format!(
            "is in wait() for its children {}",
            holders(snapshot, &link.waits_on)
        ),
        Wait::Futex { .. } | Wait::Other { .. } => format!("is {}", link.wait),
    };
    format!("{thread}{code}{blocked} {what}")
}

fn pipe_fix(chain: &[Link]) -> &'static str {
    let waits = |f: fn(&Wait) -> bool| chain.iter().any(|l| f(&l.wait));
    let child = waits(|w| matches!(w, Wait::Child { .. }));
    let futex = waits(|w| matches!(w, Wait::Futex { .. }));
    let read = waits(|w| matches!(w, Wait::PipeRead { .. } | Wait::PollRead { .. }));
    if child && futex {
        "take the data off the queue (get()) before join()ing the producer, or call \
         cancel_join_thread() in the child"
    } else if read {
        "read all pipes concurrently (Popen.communicate(), threads or selectors) instead of \
         one to EOF after another"
    } else if child {
        "read the pipe while waiting (Popen.communicate() instead of wait()), or send the \
         output to a file instead of a pipe"
    } else {
        "make sure every pipe has a reader that keeps reading while its writers run"
    }
}

fn who(snapshot: &Snapshot, pid: Pid) -> String {
    match snapshot.processes.get(&pid) {
        Some(process) => format!("{} (pid {pid})", process.comm),
        None => format!("pid {pid}"),
    }
}

fn holders(snapshot: &Snapshot, pids: &[Pid]) -> String {
    let mut names: Vec<String> = pids
        .iter()
        .take(MAX_NAMED)
        .map(|&pid| who(snapshot, pid))
        .collect();
    let more = pids.len().saturating_sub(MAX_NAMED);
    if more > 0 {
        names.push(format!("{more} other process{}", pick(more, "", "es")));
    }
    names.join(", ")
}

/// The word for `count` things: `one` or `many`.
fn pick<'a>(count: usize, one: &'a str, many: &'a str) -> &'a str {
    if count == 1 {
        one
    } else {
        many
    }
}

fn first_pid(finding: &Finding) -> Pid {
    finding.chain.first().map_or_else(
        || finding.pids.first().copied().unwrap_or_default(),
        |l| l.pid,
    )
}

fn exit_of(snapshot: &Snapshot, finding: &Finding) -> Option<super::model::ExitPhase> {
    snapshot.processes.get(&first_pid(finding))?.exit
}

fn reasons(bits: u32) -> String {
    exit_reason::names(bits).collect::<Vec<_>>().join(", ")
}

fn signal_name(signal: u32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        15 => "SIGTERM",
        _ => "a termination signal",
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}
