//! Every common hung-at-exit shape as a real program, and the healthy look-alikes that
//! must stay silent. Each hang asserts the kind, the pids and the chain.
mod common;

use std::time::Duration;

use common::{pipe_inode, process_of, Agent, Subject, HANG_AFTER, SCAN_INTERVAL};
use exitwatch::pid::Pid;
use exitwatch::{
    graph::Kind,
    incidents::{Incident, State},
};

const SLACK: Duration = Duration::from_secs(3);

fn has_wait(incident: &Incident, pid: i32, wait: &str) -> bool {
    incident
        .processes
        .iter()
        .filter(|p| p.pid == pid)
        .flat_map(|p| &p.threads)
        .any(|t| t.wait == wait)
}

fn expect(agent: &Agent, kind: Kind, pids: &[i32]) -> Incident {
    agent.wait_for(HANG_AFTER + SLACK, kind.as_str(), |i| {
        i.kind == kind
            && i.state == State::Active
            && pids.iter().all(|&p| i.pids.contains(&Pid::from_raw(p)))
    })
}

/// A parent/child pipe deadlock, started after the agent: the incident names both, each
/// in the expected waits. The subject is handed back, alive, for further checks.
fn pipe_deadlock(
    start: impl FnOnce() -> Subject,
    parent_waits: &[&str],
    child_waits: &[&str],
) -> (Incident, Subject) {
    let agent = Agent::start();
    let subject = start();
    let (parent, child) = (subject.pid("parent"), subject.pid("child"));
    let incident = expect(&agent, Kind::PipeDeadlock, &[parent, child]);
    for (pid, wanted) in [(parent, parent_waits), (child, child_waits)] {
        for wait in wanted {
            assert!(
                has_wait(&incident, pid, wait),
                "pid {pid} in {wait}: {incident:#?}"
            );
        }
    }
    (incident, subject)
}

/// Both of the child's output pipes, sorted as the incident lists them.
fn output_pipes(subject: &Subject) -> Vec<u64> {
    let child = subject.pid("child");
    let mut pipes = vec![pipe_inode(child, 1), pipe_inode(child, 2)];
    pipes.sort_unstable();
    pipes
}

#[test]
fn multiprocessing_queue_join_before_get() {
    let (incident, _subject) = pipe_deadlock(
        || Subject::python("mp_queue_join.py", &[]),
        &["wait_child"],
        &["pipe_write", "futex"],
    );
    let summary = &incident.summary;
    assert!(summary.contains("cancel_join_thread()"), "{summary}");
}

#[test]
fn c_fork_waitpid_before_reading() {
    pipe_deadlock(
        || Subject::c("fork_waitpid.c", &[]),
        &["wait_child"],
        &["pipe_write"],
    );
}

#[test]
fn reading_stderr_to_eof_while_child_fills_stdout() {
    let (incident, subject) = pipe_deadlock(
        || Subject::python("stderr_then_stdout.py", &[]),
        &["pipe_read"],
        &["pipe_write"],
    );
    assert_eq!(incident.pipes, output_pipes(&subject), "{incident:#?}");
    let summary = &incident.summary;
    assert!(summary.contains("read all pipes concurrently"), "{summary}");
}

/// The parent waits with `poll`/`epoll_wait` on the child's stdout only.
fn polling_one_pipe(mode: &str) {
    let (incident, subject) = pipe_deadlock(
        || Subject::python("poll_stdout_only.py", &[mode]),
        &["poll"],
        &["pipe_write"],
    );
    assert_eq!(incident.pipes, output_pipes(&subject), "{incident:#?}");
}

#[test]
fn poll_on_stdout_while_child_fills_stderr() {
    polling_one_pipe("poll");
}

#[test]
fn epoll_on_stdout_while_child_fills_stderr() {
    polling_one_pipe("epoll");
}

#[test]
fn select_on_stdout_while_child_fills_stderr() {
    polling_one_pipe("select");
}

/// A reader waiting for EOF on a pipe that a background process, left behind by the
/// reader's exited child, holds open without writing.
fn pipe_held_by_an_orphan(start: impl FnOnce() -> Subject, reader_wait: &str) {
    let agent = Agent::start();
    let subject = start();
    let (reader, child, orphan) = (
        subject.pid("reader"),
        subject.pid("child"),
        subject.pid("orphan"),
    );
    let incident = expect(&agent, Kind::PipeHeldByOrphan, &[reader, orphan]);
    assert_eq!(incident.pids, [reader, orphan]);
    assert!(has_wait(&incident, reader, reader_wait), "{incident:#?}");
    let summary = &incident.summary;
    for part in [
        format!("no child of {}", process_name(&incident, reader)),
        format!("child sh (pid {child}), which has exited"),
        "start_new_session=True".to_string(),
    ] {
        assert!(summary.contains(&part), "{part:?} in {summary}");
    }
    assert_eq!(
        incident.pipes,
        pipes_of(orphan, reader_wait),
        "{incident:#?}"
    );
}

/// `comm (pid N)` as summaries name a process.
fn process_name(incident: &Incident, pid: i32) -> String {
    format!("{} (pid {pid})", process_of(incident, pid).comm)
}

/// The orphan's output pipes that the reader waits on: stdout, and stderr for a poller
/// (communicate() polls both).
fn pipes_of(orphan: i32, reader_wait: &str) -> Vec<u64> {
    let mut pipes = vec![pipe_inode(orphan, 1)];
    if reader_wait == "poll" {
        pipes.push(pipe_inode(orphan, 2));
    }
    pipes.sort_unstable();
    pipes
}

#[test]
fn subprocess_run_capturing_output_of_a_shell_that_left_a_daemon_behind() {
    pipe_held_by_an_orphan(|| Subject::python("orphan_holds_pipe.py", &[]), "poll");
}

#[test]
fn c_popen_read_to_eof_of_a_shell_that_left_a_daemon_behind() {
    pipe_held_by_an_orphan(|| Subject::c("orphan_holds_popen.c", &[]), "pipe_read");
}

#[test]
fn c_atexit_handler_in_futex_wait_without_timeout() {
    exit_blocked_on_threads(
        || Subject::c("futex_wait_at_exit.c", &["wait"]),
        "libc_exit",
        "atexit handler",
    );
}

#[test]
fn c_atexit_handler_in_futex_waitv_without_timeout() {
    exit_blocked_on_threads(
        || Subject::c("futex_wait_at_exit.c", &["waitv"]),
        "libc_exit",
        "atexit handler",
    );
}

/// The agent starts first: an exit marker that fired before it attached is not seen.
/// `advice` is in the summary whether or not the stacks are captured yet: in the
/// program's language, and the phase's when the stacks show one.
fn exit_blocked_on_threads(start: impl FnOnce() -> Subject, marker: &str, advice: &str) {
    let agent = Agent::start();
    let subject = start();
    let pid = subject.pid("pid");
    let incident = expect(&agent, Kind::ExitBlockedOnThreads, &[pid]);
    assert_eq!(incident.pids, [pid]);
    let process = process_of(&incident, pid);
    assert!(
        process.exiting.iter().any(|m| m == marker),
        "expected exit marker {marker}: {incident:#?}"
    );
    assert!(process.threads.len() >= 2, "{incident:#?}");
    assert!(
        process.threads.iter().all(|t| t.wait == "futex"),
        "every remaining thread's wait is reported: {incident:#?}"
    );
    assert!(incident.summary.contains(advice), "{}", incident.summary);
    drop(subject);
}

#[test]
fn non_daemon_thread_blocked_on_queue_get() {
    exit_blocked_on_threads(
        || Subject::python("queue_get_thread.py", &[]),
        "py_finalize",
        "daemon=True",
    );
}

#[test]
fn thread_pool_executor_task_that_never_ends() {
    exit_blocked_on_threads(
        || Subject::python("executor_stuck.py", &[]),
        "py_finalize",
        "executor.shutdown(cancel_futures=True)",
    );
}

#[test]
fn c_atexit_handler_joining_a_thread_that_never_returns() {
    exit_blocked_on_threads(
        || Subject::c("atexit_join.c", &[]),
        "libc_exit",
        "atexit handler",
    );
}

/// A writer in its exit phase (marked `marker`) stuck on a pipe whose reader is stopped.
fn exiting_writer_blocked_on_a_stopped_reader(start: impl FnOnce() -> Subject, marker: &str) {
    let agent = Agent::start();
    let subject = start();
    let (writer, reader) = (subject.pid("writer"), subject.pid("reader"));
    let incident = expect(&agent, Kind::ExitBlockedOnPipe, &[writer, reader]);
    assert!(has_wait(&incident, writer, "pipe_write"), "{incident:#?}");
    let reader_state = process_of(&incident, reader)
        .threads
        .first()
        .map(|t| t.state.as_str());
    assert_eq!(reader_state, Some("T"), "{incident:#?}");
    assert!(
        process_of(&incident, writer)
            .exiting
            .iter()
            .any(|m| m == marker),
        "expected exit marker {marker}: {incident:#?}"
    );
}

#[test]
fn exiting_writer_whose_reader_is_stopped() {
    exiting_writer_blocked_on_a_stopped_reader(
        || Subject::python("stopped_reader.py", &[]),
        "py_finalize",
    );
}

#[test]
fn c_stdio_flushed_at_exit_into_a_stopped_reader() {
    exiting_writer_blocked_on_a_stopped_reader(
        || Subject::c("stdio_flush_at_exit.c", &[]),
        "libc_exit",
    );
}

#[test]
fn sigterm_noted_but_still_blocked() {
    let agent = Agent::start();
    let subject = Subject::python("sigterm_stuck.py", &[]);
    let pid = subject.pid("pid");
    std::thread::sleep(Duration::from_millis(300));
    subject.signal("pid", libc::SIGTERM);
    let incident = expect(&agent, Kind::StuckAfterSignal, &[pid]);
    assert!(incident.summary.contains("SIGTERM"), "{incident:#?}");
}

/// Runs healthy programs for longer than the threshold and asserts no incident names them.
fn silent(subjects: Vec<Subject>, run_for: Duration) {
    let agent = Agent::start();
    let pids: Vec<i32> = subjects.iter().flat_map(Subject::pids).collect();
    std::thread::sleep(run_for);
    let noisy = agent.incidents_involving(&pids);
    assert!(
        noisy.is_empty(),
        "healthy programs raised incidents: {noisy:#?}"
    );
}

/// Scans stop looking at a blocked reader once they found what keeps it live (its
/// writer, asleep but able to run); the knot that forms when that writer blocks, long
/// after, must still be found within a threshold.
#[test]
fn a_knot_that_forms_long_after_its_reader_blocked() {
    let agent = Agent::start();
    let delay = HANG_AFTER * 3;
    let subject = Subject::python("late_knot.py", &[&delay.as_secs_f64().to_string()]);
    let (parent, child) = (subject.pid("parent"), subject.pid("child"));
    std::thread::sleep(delay - SCAN_INTERVAL);
    assert!(
        agent.incidents_involving(&[parent, child]).is_empty(),
        "a reader whose writer can run is no hang"
    );
    let incident = expect(&agent, Kind::PipeDeadlock, &[parent, child]);
    assert!(has_wait(&incident, parent, "pipe_read"), "{incident:#?}");
    assert!(has_wait(&incident, child, "pipe_write"), "{incident:#?}");
}

#[test]
fn idle_reader_and_condition_variable_server_stay_silent() {
    silent(
        vec![
            Subject::python("idle_reader.py", &[]),
            Subject::python("condvar_server.py", &[]),
        ],
        HANG_AFTER * 2 + SCAN_INTERVAL * 2,
    );
}

#[test]
fn futex2_waits_with_a_timeout_and_a_select_loop_with_a_timeout_stay_silent() {
    silent(
        vec![
            Subject::c("futex_wait_at_exit.c", &["wait-timed"]),
            Subject::c("futex_wait_at_exit.c", &["waitv-timed"]),
            Subject::python("poll_stdout_only.py", &["select-timeout"]),
        ],
        HANG_AFTER * 2 + SCAN_INTERVAL * 2,
    );
}

#[test]
fn a_daemon_that_keeps_writing_into_the_inherited_pipe_is_no_hang() {
    let agent = Agent::start();
    let mut chatty = Subject::python("orphan_holds_pipe.py", &["chatty"]);
    let pids = chatty.pids();
    assert!(chatty.wait(Duration::from_secs(30)).success());
    let noisy = agent.incidents_involving(&pids);
    assert!(
        noisy.is_empty(),
        "a reader that keeps getting data raised incidents: {noisy:#?}"
    );
}

#[test]
fn slow_consumer_at_exit_is_progress_not_a_hang() {
    let agent = Agent::start();
    let mut slow = Subject::python("slow_consumer.py", &["5", "--at-exit"]);
    let pids = slow.pids();
    assert!(slow.wait(Duration::from_secs(30)).success());
    let noisy = agent.incidents_involving(&pids);
    assert!(
        noisy.is_empty(),
        "a slow but moving pipe raised incidents: {noisy:#?}"
    );
}

#[test]
fn a_daemon_reloading_on_sighup_sleeps_in_timed_waits_and_stays_silent() {
    let agent = Agent::start();
    let subject = Subject::python("sighup_reload.py", &[]);
    let pid = subject.pid("pid");
    std::thread::sleep(Duration::from_millis(300));
    subject.signal("pid", libc::SIGHUP);
    std::thread::sleep(HANG_AFTER * 2 + SCAN_INTERVAL * 2);
    assert!(
        agent.metric(r#"exitwatch_exit_phase_entries_total{reason="signal"}"#) >= 1.0,
        "the SIGHUP was not seen"
    );
    let noisy = agent.incidents_involving(&[pid]);
    assert!(
        noisy.is_empty(),
        "a timed wait after SIGHUP raised incidents: {noisy:#?}"
    );
}
