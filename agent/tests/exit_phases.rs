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

/// The active incident of `kind` naming `pid` once it names `phase`, its summary says
/// every one of `says`, and it passes `also` (stacks arrive over scans: the phase may
/// be known first).
fn incident_in(
    agent: &Agent,
    pid: i32,
    (kind, phase): (Kind, Phase),
    says: &[&str],
    also: impl Fn(&Incident) -> bool,
) -> Incident {
    let what = format!("{} in {phase:?} saying {says:?}", kind.as_str());
    agent.wait_for(WITHIN, &what, |i| {
        i.kind == kind
            && i.state == State::Active
            && i.pids.contains(&Pid::from_raw(pid))
            && i.exit_phase == Some(phase)
            && says.iter().all(|part| i.summary.contains(part))
            && also(i)
    })
}

/// Whether a thread of `pid` has the Python frame `function` (or `Class.function`) of
/// the file `file` ends with.
fn has_python_frame(incident: &Incident, pid: i32, file: &str, function: &str) -> bool {
    incident
        .processes
        .iter()
        .filter(|p| p.pid == pid)
        .flat_map(|p| &p.threads)
        .filter_map(|t| t.stack.as_ref())
        .flat_map(|stack| &stack.frames)
        .filter(|frame| frame.file.as_deref().is_some_and(|f| f.ends_with(file)))
        .filter_map(|frame| frame.function.as_deref())
        .any(|name| name.rsplit('.').next() == Some(function))
}

/// `asyncio.run()` whose default executor runs a job that never ends: no exit marker
/// fires (the interpreter has not begun to finalize), and still an exit hang, with the
/// thread that joins the executor (`_do_shutdown`) in its stacks, and the coroutine the
/// loop awaits (`shutdown_default_executor`, suspended: on no thread's stack) as an
/// awaited frame above the main thread's `run_until_complete`.
fn asyncio_default_executor_never_finishes(python: &Path) {
    let agent = Agent::start();
    let subject = Subject::python_with(python, "asyncio_executor_stuck.py", &[]);
    let pid = subject.pid("pid");
    let incident = incident_in(
        &agent,
        pid,
        (Kind::ExitBlockedOnThreads, Phase::AsyncioShutdown),
        &[
            "loop.shutdown_default_executor()",
            "`blocking_forever` at asyncio_executor_stuck.py:",
            "make the run_in_executor() job return",
        ],
        |i| {
            has_python_frame(i, pid, "asyncio/base_events.py", "_do_shutdown")
                && has_python_frame(
                    i,
                    pid,
                    "asyncio/base_events.py",
                    "shutdown_default_executor",
                )
        },
    );
    let main = process_of(&incident, pid)
        .threads
        .iter()
        .find(|t| t.tid == Pid::from_raw(pid))
        .and_then(|t| t.stack.as_ref())
        .unwrap_or_else(|| panic!("the main thread's stack: {incident:#?}"));
    let functions: Vec<&str> = main
        .frames
        .iter()
        .filter_map(|f| f.function.as_deref())
        .collect();
    let awaited = functions
        .iter()
        .position(|f| *f == "await BaseEventLoop.shutdown_default_executor");
    let run = functions
        .iter()
        .position(|f| *f == "BaseEventLoop.run_until_complete");
    assert!(
        matches!((awaited, run), (Some(a), Some(r)) if a + 1 == r),
        "the awaited coroutine right above run_until_complete: {functions:?}"
    );
    let process = process_of(&incident, pid);
    assert_eq!(process.exiting, ["asyncio_shutdown"], "{incident:#?}");
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
/// Debian's interpreter), once its summary says `says`.
fn phase_of(
    script: &str,
    key: &str,
    kind_phase: (Kind, Phase),
    says: &[&str],
) -> (Incident, Subject) {
    let agent = Agent::start();
    let subject = Subject::python(script, &[]);
    let incident = incident_in(&agent, subject.pid(key), kind_phase, says, |_| true);
    (incident, subject)
}

#[test]
fn python_atexit_handler_joining_a_thread_is_named() {
    phase_of(
        "atexit_join.py",
        "pid",
        (Kind::ExitBlockedOnThreads, Phase::AtexitHandler),
        &["It is in the atexit handler `stop_worker` at atexit_join.py:"],
    );
}

#[test]
fn executor_worker_joined_at_exit_is_concurrent_futures_shutdown() {
    phase_of(
        "executor_stuck.py",
        "pid",
        (Kind::ExitBlockedOnThreads, Phase::ExecutorShutdown),
        &["_python_exit", "executor.shutdown(cancel_futures=True)"],
    );
}

#[test]
fn multiprocessing_child_joining_its_feeder_is_multiprocessing_exit() {
    let (incident, subject) = phase_of(
        "mp_queue_join.py",
        "child",
        (Kind::PipeDeadlock, Phase::MultiprocessingExit),
        &["feeder thread", "q.cancel_join_thread()"],
    );
    let parent = Pid::from_raw(subject.pid("parent"));
    assert!(incident.pids.contains(&parent), "{incident:#?}");
}

#[test]
fn seed_timer_is_threading_shutdown() {
    phase_of(
        "seed_timer_exit.py",
        "pid",
        (Kind::ExitBlockedOnThreads, Phase::ThreadingShutdown),
        &["threading._shutdown()", "`Timer.run`"],
    );
}

/// An interpreter the `Py_FinalizeEx` probe may not be attached to (a copy owned by a
/// user, who could rewrite it under the probe) still hangs in `threading._shutdown()`
/// like any other: the agent finds `Py_FinalizeEx` on its main thread's stack instead.
#[test]
fn an_interpreter_without_the_finalize_probe_is_found_from_its_stack() {
    use std::os::unix::fs::{chown, PermissionsExt};
    const NOBODY: u32 = 65534;

    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let copy = dir.path().join("python3");
    std::fs::copy(python(), &copy).expect("copying the interpreter");
    chown(&copy, Some(NOBODY), Some(NOBODY)).expect("giving the copy to nobody");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
        .expect("making the copy executable");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("opening the directory");

    let agent = Agent::start();
    let mut command = std::process::Command::new(&copy);
    // The copy's own directory holds no standard library.
    command
        .env("PYTHONHOME", "/usr")
        .arg(common::programs_dir().join("queue_get_thread.py"));
    let subject = Subject::spawn("queue_get_thread.py", command);
    let pid = subject.pid("pid");
    incident_in(
        &agent,
        pid,
        (Kind::ExitBlockedOnThreads, Phase::ThreadingShutdown),
        &["threading._shutdown()"],
        |_| true,
    );
    let log = agent.log();
    let copy_refused = format!("no Py_FinalizeEx probe on {} ", copy.display());
    assert!(
        log.lines()
            .any(|line| line.contains(&copy_refused) && line.ends_with("untrusted_owner")),
        "the probe was not refused for the copy:\n{log}"
    );
    let on_stack = format!("pid {pid} is in its exit phase (py_finalize, found on its stack)");
    assert!(log.contains(&on_stack), "{on_stack:?} not logged:\n{log}");
}
