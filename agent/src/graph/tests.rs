//! The classifier on hand-built snapshots of each shape, and of healthy look-alikes.
use exitwatch_common::exit_reason;

use super::*;
use crate::pid::Pid;

pub(super) const SECOND: u64 = 1_000_000_000;
pub(super) const NOW: u64 = 1_000 * SECOND;
const HANG_AFTER: u64 = 10 * SECOND;

pub(super) fn stuck(tid: i32, wait: Wait) -> Thread {
    Thread {
        tid: Pid::from_raw(tid),
        wait: Some(wait),
        since_ns: NOW - 30 * SECOND,
        stuck: true,
        state: 'S',
        wchan: String::new(),
        stack: None,
    }
}

/// In a wait right now, but not past the threshold (or making progress).
pub(super) fn waiting(tid: i32, wait: Wait) -> Thread {
    Thread {
        stuck: false,
        since_ns: NOW - SECOND,
        ..stuck(tid, wait)
    }
}

pub(super) fn running(tid: i32) -> Thread {
    Thread {
        tid: Pid::from_raw(tid),
        state: 'R',
        ..Thread::default()
    }
}

pub(super) fn process(pid: i32, ppid: i32, threads: Vec<Thread>) -> Process {
    Process {
        pid: Pid::from_raw(pid),
        ppid: Pid::from_raw(ppid),
        pgrp: Pid::from_raw(ppid),
        start_ticks: 1,
        comm: format!("prog{pid}"),
        cmdline: format!("prog{pid}"),
        threads,
        exit: None,
    }
}

pub(super) fn exiting(mut process: Process, reasons: u32, for_ns: u64, spawns: u64) -> Process {
    process.exit = Some(ExitPhase {
        since_ns: NOW - for_ns,
        reasons,
        thread_spawns: spawns,
        signal: if reasons & exit_reason::SIGNAL != 0 {
            15
        } else {
            0
        },
        exit_tid: process.pid,
    });
    process
}

pub(super) fn snapshot(processes: Vec<Process>, pipes: Vec<(u64, Vec<i32>, Vec<i32>)>) -> Snapshot {
    Snapshot {
        now_ns: NOW,
        hang_after_ns: HANG_AFTER,
        processes: processes.into_iter().map(|p| (p.pid, p)).collect(),
        pipes: pipes
            .into_iter()
            .map(|(inode, readers, writers)| {
                let ends = PipeEnds {
                    readers: readers.into_iter().map(Pid::from_raw).collect(),
                    writers: writers.into_iter().map(Pid::from_raw).collect(),
                };
                (inode, ends)
            })
            .collect(),
    }
}

pub(super) const WRITE_PIPE: Wait = Wait::PipeWrite { fd: 1, pipe: 77 };
pub(super) const FUTEX: Wait = Wait::Futex { timed: false };
pub(super) const TIMED_FUTEX: Wait = Wait::Futex { timed: true };

pub(super) fn wait_for(pid: i32) -> Wait {
    Wait::Child {
        target: ChildTarget::Pid(Pid::from_raw(pid)),
    }
}

#[test]
fn seed_popen_wait_is_a_pipe_deadlock() {
    let snap = snapshot(
        vec![
            process(10, 1, vec![stuck(10, wait_for(11))]),
            process(11, 10, vec![stuck(11, WRITE_PIPE)]),
        ],
        vec![(77, vec![10], vec![11])],
    );
    let findings = analyze(&snap);
    assert_eq!(findings.len(), 1, "{findings:?}");
    let finding = &findings[0];
    assert_eq!(finding.kind, Kind::PipeDeadlock);
    assert_eq!(finding.pids, vec![10, 11]);
    assert_eq!(finding.started_ns, NOW - 30 * SECOND);
    assert!(finding.summary.contains("pipe 77"), "{}", finding.summary);
    assert!(
        finding.summary.contains("communicate()"),
        "{}",
        finding.summary
    );
}

#[test]
fn a_reader_of_a_deadlocked_program_is_behind_the_knot_not_in_it() {
    // `tee` reads the parent's stderr: it can never run again, but it is no cause.
    let snap = snapshot(
        vec![
            process(10, 1, vec![stuck(10, wait_for(11))]),
            process(11, 10, vec![stuck(11, WRITE_PIPE)]),
            process(12, 1, vec![stuck(12, Wait::PipeRead { fd: 0, pipe: 90 })]),
        ],
        vec![(77, vec![10], vec![11]), (90, vec![12], vec![10])],
    );
    let findings = analyze(&snap);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].pids, vec![10, 11]);
    assert_eq!(findings[0].behind, vec![12]);
    assert!(findings[0].chain.iter().all(|link| link.pid != 12));
}

#[test]
fn a_reader_with_a_free_thread_can_still_drain_the_pipe() {
    let snap = snapshot(
        vec![
            process(10, 1, vec![stuck(10, wait_for(11)), running(12)]),
            process(11, 10, vec![stuck(11, WRITE_PIPE)]),
        ],
        vec![(77, vec![10], vec![11])],
    );
    assert_eq!(analyze(&snap), vec![]);
}

#[test]
fn a_writer_that_makes_progress_is_not_stuck() {
    let snap = snapshot(
        vec![
            process(10, 1, vec![stuck(10, wait_for(11))]),
            process(11, 10, vec![waiting(11, WRITE_PIPE)]),
        ],
        vec![(77, vec![10], vec![11])],
    );
    assert_eq!(analyze(&snap), vec![]);
}

#[test]
fn reading_stderr_to_eof_while_the_child_fills_stdout_is_a_deadlock() {
    let read_stderr = Wait::PipeRead { fd: 5, pipe: 78 };
    let snap = snapshot(
        vec![
            process(10, 1, vec![stuck(10, read_stderr)]),
            process(11, 10, vec![stuck(11, WRITE_PIPE)]),
        ],
        vec![(77, vec![10], vec![11]), (78, vec![10], vec![11])],
    );
    let findings = analyze(&snap);
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].kind, Kind::PipeDeadlock);
    assert!(findings[0].summary.contains("read all pipes concurrently"));
}

#[test]
fn polling_only_stdout_while_the_child_fills_stderr_is_a_deadlock() {
    let poll_stdout = Wait::PollRead { pipes: vec![78] };
    let deadlocked = snapshot(
        vec![
            process(10, 1, vec![stuck(10, poll_stdout.clone())]),
            process(11, 10, vec![stuck(11, WRITE_PIPE)]),
        ],
        vec![(77, vec![10], vec![11]), (78, vec![10], vec![11])],
    );
    let findings = analyze(&deadlocked);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].kind, Kind::PipeDeadlock);
    assert!(
        findings[0].summary.contains("polling"),
        "{}",
        findings[0].summary
    );

    // The same poll on a pipe whose writer is running is just waiting for output.
    let waiting = snapshot(
        vec![
            process(10, 1, vec![stuck(10, poll_stdout)]),
            process(11, 10, vec![running(11)]),
        ],
        vec![(78, vec![10], vec![11])],
    );
    assert_eq!(analyze(&waiting), vec![]);
}

#[test]
fn multiprocessing_queue_join_before_get_is_a_deadlock_through_the_feeder() {
    // Child: main joins its feeder thread, which is stuck writing the queue pipe; both
    // processes hold the read end; the parent waits for the child.
    let snap = snapshot(
        vec![
            process(10, 1, vec![stuck(10, wait_for(11))]),
            process(11, 10, vec![stuck(11, FUTEX), stuck(12, WRITE_PIPE)]),
        ],
        vec![(77, vec![10, 11], vec![10, 11])],
    );
    let findings = analyze(&snap);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].kind, Kind::PipeDeadlock);
    assert_eq!(findings[0].pids, vec![10, 11]);
    assert_eq!(findings[0].chain.len(), 3);
    assert!(findings[0].summary.contains("cancel_join_thread()"));
}

#[test]
fn idle_reader_of_a_live_writer_is_silent() {
    let snap = snapshot(
        vec![
            process(10, 1, vec![waiting(10, TIMED_FUTEX)]),
            process(11, 10, vec![stuck(11, Wait::PipeRead { fd: 0, pipe: 77 })]),
        ],
        vec![(77, vec![11], vec![10])],
    );
    assert_eq!(analyze(&snap), vec![]);
}

#[test]
fn timer_rearming_during_finalize_blocks_exit_on_threads() {
    // The main thread re-blocks on a new join every period, so it is never stuck itself.
    let timer = exiting(
        process(20, 1, vec![waiting(20, FUTEX), waiting(21, TIMED_FUTEX)]),
        exit_reason::PY_FINALIZE,
        15 * SECOND,
        30,
    );
    let findings = analyze(&snapshot(vec![timer], vec![]));
    assert_eq!(findings.len(), 1, "{findings:?}");
    let finding = &findings[0];
    assert_eq!(finding.kind, Kind::ExitBlockedOnThreads);
    assert_eq!(finding.pids, vec![20]);
    assert!(
        finding.summary.contains("30 new threads"),
        "{}",
        finding.summary
    );
    assert!(finding.summary.contains("daemon=True"));
}

#[test]
fn a_young_exit_phase_is_not_a_hang() {
    let timer = exiting(
        process(20, 1, vec![waiting(20, FUTEX), waiting(21, TIMED_FUTEX)]),
        exit_reason::PY_FINALIZE,
        2 * SECOND,
        1,
    );
    assert_eq!(analyze(&snapshot(vec![timer], vec![])), vec![]);
}

#[test]
fn non_daemon_thread_blocked_forever_is_a_knot_at_exit() {
    let worker = exiting(
        process(20, 1, vec![stuck(20, FUTEX), stuck(21, FUTEX)]),
        exit_reason::PY_FINALIZE,
        30 * SECOND,
        0,
    );
    let findings = analyze(&snapshot(vec![worker], vec![]));
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].kind, Kind::ExitBlockedOnThreads);
    assert_eq!(findings[0].chain.len(), 2);
}

#[test]
fn condition_variable_server_is_silent() {
    let idle_workers = process(
        30,
        1,
        vec![waiting(30, TIMED_FUTEX), stuck(31, FUTEX), stuck(32, FUTEX)],
    );
    // Even with every thread parked, a process that is not exiting is not hung at exit.
    let all_parked = process(40, 1, vec![stuck(40, FUTEX), stuck(41, FUTEX)]);
    assert_eq!(
        analyze(&snapshot(vec![idle_workers, all_parked], vec![])),
        vec![]
    );
}

#[test]
fn signalled_process_that_stays_blocked_is_stuck_after_signal() {
    let ignored = exiting(
        process(50, 1, vec![stuck(50, FUTEX), stuck(51, FUTEX)]),
        exit_reason::SIGNAL,
        20 * SECOND,
        0,
    );
    let findings = analyze(&snapshot(vec![ignored], vec![]));
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].kind, Kind::StuckAfterSignal);
    assert!(
        findings[0].summary.contains("SIGTERM"),
        "{}",
        findings[0].summary
    );
}

#[test]
fn exiting_writer_whose_reader_is_stopped_is_blocked_on_the_pipe() {
    let writer = exiting(
        process(60, 1, vec![stuck(60, WRITE_PIPE)]),
        exit_reason::PY_FINALIZE,
        20 * SECOND,
        0,
    );
    let reader = process(
        61,
        60,
        vec![Thread {
            state: 'T',
            ..running(61)
        }],
    );
    let findings = analyze(&snapshot(
        vec![writer, reader],
        vec![(77, vec![61], vec![60])],
    ));
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].kind, Kind::ExitBlockedOnPipe);
    assert_eq!(findings[0].pids, vec![60, 61]);
}

/// Every process writes its own pipe, and every process holds the read end of every pipe
/// (inherited fds): a knot in which naming every holder would grow quadratically.
fn knot_of_inherited_pipes(size: i32) -> Snapshot {
    let pids: Vec<i32> = (100..100 + size).collect();
    let processes = pids
        .iter()
        .map(|&pid| {
            let wait = Wait::PipeWrite {
                fd: 1,
                pipe: pid as u64,
            };
            process(pid, 1, vec![stuck(pid, wait)])
        })
        .collect();
    let pipes = pids
        .iter()
        .map(|&pid| (pid as u64, pids.clone(), vec![pid]))
        .collect();
    snapshot(processes, pipes)
}

#[test]
fn summaries_stay_short_however_big_the_knot() {
    let small = analyze(&knot_of_inherited_pipes(5));
    let big = analyze(&knot_of_inherited_pipes(500));
    assert_eq!((small.len(), big.len()), (1, 1), "{small:?}");
    assert_eq!(big[0].pids.len(), 500);
    let summary = &big[0].summary;
    assert!(summary.len() < 2048, "{} bytes: {summary}", summary.len());
    assert!(
        summary.contains("492 more threads are blocked"),
        "{summary}"
    );
    assert!(summary.contains("496 other processes"), "{summary}");
    assert!(
        !small[0].summary.contains("more threads"),
        "{}",
        small[0].summary
    );
}

/// Process `first + i` waits for its child `first + i + 1`; the last one runs, or (closed)
/// writes into a full pipe that only the first reads.
fn wait_chain(length: i32, closed: bool) -> Snapshot {
    let first = 1000;
    let last = first + length - 1;
    let processes = (first..=last)
        .map(|pid| {
            let thread = match pid {
                _ if pid < last => stuck(pid, wait_for(pid + 1)),
                _ if closed => stuck(pid, WRITE_PIPE),
                _ => running(pid),
            };
            process(pid, pid - 1, vec![thread])
        })
        .collect();
    snapshot(processes, vec![(77, vec![first], vec![last])])
}

#[test]
fn a_long_chain_ending_in_a_running_process_is_no_knot() {
    // 10,000 levels: freeing one level per pass over all waits would take 10^8 steps.
    assert!(analyze(&wait_chain(10_000, false)).is_empty());
    let closed = analyze(&wait_chain(10_000, true));
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].pids.len(), 10_000);
}

/// `subprocess.run(capture_output=True)` of a shell that left `sleep` behind: the reader
/// polls both pipes, the shell (10's child) has exited unreaped, and the orphan, now
/// init's child, holds both write ends.
fn orphan_case(reader: Thread, orphan_ppid: i32, reader_children: Vec<Process>) -> Snapshot {
    let mut processes = vec![
        process(10, 5, vec![reader]),
        process(12, orphan_ppid, vec![waiting(12, TIMED_FUTEX)]),
    ];
    processes.extend(reader_children);
    snapshot(
        processes,
        vec![(77, vec![10], vec![12]), (78, vec![10], vec![12])],
    )
}

fn zombie(pid: i32, ppid: i32) -> Process {
    let mut child = process(pid, ppid, vec![running(pid)]);
    child.threads[0].state = 'Z';
    child.comm = "sh".into();
    child
}

fn poll_both() -> Wait {
    Wait::PollRead {
        pipes: vec![77, 78],
    }
}

#[test]
fn a_reader_waiting_on_an_idle_orphan_is_a_pipe_held_by_an_orphan() {
    let snap = orphan_case(stuck(10, poll_both()), 1, vec![zombie(11, 10)]);
    let findings = analyze(&snap);
    assert_eq!(findings.len(), 1, "{findings:?}");
    let finding = &findings[0];
    assert_eq!(finding.kind, Kind::PipeHeldByOrphan);
    assert_eq!(finding.pids, vec![10, 12]);
    assert_eq!(finding.chain[0].waits_on, vec![12]);
    let summary = &finding.summary;
    for part in [
        "prog12 (pid 12) is no child of prog10 (pid 10) (re-parented to pid 1)",
        "child sh (pid 11), which has exited",
        "DEVNULL",
        "start_new_session=True",
    ] {
        assert!(summary.contains(part), "{part:?} in {summary}");
    }
    assert!(summary.len() < 1024, "{summary}");
}

#[test]
fn a_reaped_child_is_not_named_but_said_to_be_unknown() {
    // bash reaps `$(...)` children while it reads: only the orphan is left to see.
    let snap = orphan_case(stuck(10, Wait::PipeRead { fd: 3, pipe: 77 }), 1, vec![]);
    let findings = analyze(&snap);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(
        findings[0].summary.contains("cannot name it"),
        "{}",
        findings[0].summary
    );
}

#[test]
fn a_reader_that_keeps_getting_data_from_a_daemon_is_silent() {
    // The daemon writes now and then: every read returns, so the reader is never stuck.
    let snap = orphan_case(waiting(10, poll_both()), 1, vec![zombie(11, 10)]);
    assert_eq!(analyze(&snap), vec![]);
}

#[test]
fn a_quiet_pipeline_producer_is_no_orphan() {
    // `tail -f log | grep x` on a quiet log: the producer is the consumer's sibling.
    let quiet = orphan_case(stuck(10, Wait::PipeRead { fd: 0, pipe: 77 }), 5, vec![]);
    assert_eq!(analyze(&quiet), vec![]);
    // Unless the reader left a child unreaped: its parent is the subreaper that adopted
    // the orphan (a container's init, a service manager).
    let adopted = orphan_case(stuck(10, poll_both()), 5, vec![zombie(11, 10)]);
    let findings = analyze(&adopted);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].kind, Kind::PipeHeldByOrphan);
}

#[test]
fn pipes_held_by_the_readers_own_family_or_a_writer_are_no_orphans() {
    let read = |pipe| Wait::PipeRead { fd: 0, pipe };
    // A quiet child of the reader (Popen still running), the reader's parent
    // (idle_reader.py), the reader itself (forgot to close its write end), and a holder
    // blocked writing into the pipe.
    let child = snapshot(
        vec![
            process(10, 5, vec![stuck(10, read(77))]),
            process(12, 10, vec![waiting(12, TIMED_FUTEX)]),
        ],
        vec![(77, vec![10], vec![12])],
    );
    let parent = snapshot(
        vec![
            process(10, 5, vec![stuck(10, read(77))]),
            process(5, 1, vec![waiting(5, TIMED_FUTEX)]),
        ],
        vec![(77, vec![10], vec![5])],
    );
    let mut itself = orphan_case(stuck(10, read(77)), 1, vec![zombie(11, 10)]);
    if let Some(ends) = itself.pipes.get_mut(&77) {
        ends.writers.insert(Pid::from_raw(10));
    }
    let writing = snapshot(
        vec![
            process(10, 5, vec![stuck(10, poll_both())]),
            process(
                12,
                1,
                vec![waiting(12, Wait::PipeWrite { fd: 1, pipe: 77 })],
            ),
            zombie(11, 10),
        ],
        vec![(77, vec![10], vec![12]), (78, vec![10], vec![12])],
    );
    for snap in [child, parent, itself, writing] {
        assert_eq!(analyze(&snap), vec![], "{:?}", snap.processes);
    }
}

#[test]
fn a_reader_behind_a_deadlock_is_reported_with_the_knot_not_as_an_orphan_case() {
    let snap = snapshot(
        vec![
            process(10, 1, vec![stuck(10, wait_for(11))]),
            process(11, 10, vec![stuck(11, WRITE_PIPE)]),
            process(12, 3, vec![stuck(12, Wait::PipeRead { fd: 0, pipe: 90 })]),
        ],
        vec![(77, vec![10], vec![11]), (90, vec![12], vec![10])],
    );
    let kinds: Vec<Kind> = analyze(&snap).iter().map(|f| f.kind).collect();
    assert_eq!(kinds, vec![Kind::PipeDeadlock]);
}
