//! Exit phases that the stacks reveal, from real hanging Python programs and the real
//! agent: the incident names the phase (`exit_phase`), and its summary the code the exit
//! waits for, with the fix for that phase. `asyncio.run()` tearing down hangs before
//! the interpreter finalizes, where no probe fires: the agent finds it on the stack.
mod common;

use std::{path::Path, time::Duration};

use common::{process_of, pyenv_python, python, Agent, Subject};
use exitwatch::{
    graph::{Kind, Phase},
    incidents::{Incident, State},
    pid::Pid,
};

/// How long an incident with its stacks may take to appear: generous, because the
/// machines that run these tests are often busy with other builds (a limit, not a
/// measurement).
const WITHIN: Duration = Duration::from_secs(60);

/// The active incident of `kind` naming `pid` once it names `phase`.
fn incident_in(agent: &Agent, pid: i32, kind: Kind, phase: Phase) -> Incident {
    agent.wait_for(WITHIN, &format!("{} in {phase:?}", kind.as_str()), |i| {
        i.kind == kind
            && i.state == State::Active
            && i.pids.contains(&Pid::from_raw(pid))
            && i.exit_phase == Some(phase)
    })
}

fn assert_mentions(incident: &Incident, parts: &[&str]) {
    for part in parts {
        assert!(
            incident.summary.contains(part),
            "{part:?} in {}",
            incident.summary
        );
    }
}

/// Whether a thread of `pid` has the Python frame `function` (or `Class.function`) of
/// the file `file` ends with.
fn has_python_frame(incident: &Incident, pid: i32, file: &str, function: &str) -> bool {
    process_of(incident, pid)
        .threads
        .iter()
        .filter_map(|t| t.stack.as_ref())
        .flat_map(|stack| &stack.frames)
        .filter(|frame| frame.file.as_deref().is_some_and(|f| f.ends_with(file)))
        .filter_map(|frame| frame.function.as_deref())
        .any(|name| name.rsplit('.').next() == Some(function))
}

/// `asyncio.run()` whose default executor runs a job that never ends: no exit marker
/// fires (the interpreter has not begun to finalize), and still an exit hang.
fn asyncio_default_executor_never_finishes(python: &Path) {
    let agent = Agent::start();
    let subject = Subject::python_with(python, "asyncio_executor_stuck.py", &[]);
    let pid = subject.pid("pid");
    let incident = incident_in(
        &agent,
        pid,
        Kind::ExitBlockedOnThreads,
        Phase::AsyncioShutdown,
    );
    let process = process_of(&incident, pid);
    assert_eq!(process.exiting, ["asyncio_shutdown"], "{incident:#?}");
    assert!(
        has_python_frame(&incident, pid, "asyncio/base_events.py", "_do_shutdown"),
        "{incident:#?}"
    );
    assert_mentions(
        &incident,
        &[
            "loop.shutdown_default_executor()",
            "`blocking_forever` at ",
            "make the run_in_executor() job return",
        ],
    );
    assert!(
        !incident.summary.contains("daemon=True"),
        "{}",
        incident.summary
    );
    assert!(
        agent.metric(r#"exitwatch_exit_phase_entries_total{reason="asyncio_shutdown"}"#) >= 1.0,
        "{}",
        agent.metrics()
    );
}

#[test]
fn asyncio_run_with_a_default_executor_job_that_never_ends_on_3_11() {
    asyncio_default_executor_never_finishes(&python());
}

#[test]
fn asyncio_run_with_a_default_executor_job_that_never_ends_on_3_13() {
    asyncio_default_executor_never_finishes(&pyenv_python("3.13"));
}

/// The incident of `kind` in `phase` about the process `key` of `script` (run by
/// Debian's interpreter).
fn phase_of(script: &str, key: &str, kind: Kind, phase: Phase) -> (Incident, Subject) {
    let agent = Agent::start();
    let subject = Subject::python(script, &[]);
    let incident = incident_in(&agent, subject.pid(key), kind, phase);
    (incident, subject)
}

#[test]
fn python_atexit_handler_joining_a_thread_is_named() {
    let (incident, _subject) = phase_of(
        "atexit_join.py",
        "pid",
        Kind::ExitBlockedOnThreads,
        Phase::AtexitHandler,
    );
    assert_mentions(
        &incident,
        &[
            "It is in the atexit handler `stop_worker` at ",
            "atexit_join.py:",
        ],
    );
}

#[test]
fn executor_worker_joined_at_exit_is_concurrent_futures_shutdown() {
    let (incident, _subject) = phase_of(
        "executor_stuck.py",
        "pid",
        Kind::ExitBlockedOnThreads,
        Phase::ExecutorShutdown,
    );
    assert_mentions(
        &incident,
        &["_python_exit", "executor.shutdown(cancel_futures=True)"],
    );
}

#[test]
fn multiprocessing_child_joining_its_feeder_is_multiprocessing_exit() {
    let (incident, subject) = phase_of(
        "mp_queue_join.py",
        "child",
        Kind::PipeDeadlock,
        Phase::MultiprocessingExit,
    );
    assert!(
        incident
            .pids
            .contains(&Pid::from_raw(subject.pid("parent"))),
        "{incident:#?}"
    );
    assert_mentions(&incident, &["feeder thread", "q.cancel_join_thread()"]);
}

#[test]
fn seed_timer_is_threading_shutdown() {
    let (incident, _subject) = phase_of(
        "seed_timer_exit.py",
        "pid",
        Kind::ExitBlockedOnThreads,
        Phase::ThreadingShutdown,
    );
    assert_mentions(&incident, &["threading._shutdown()", "`Timer.run`"]);
}
