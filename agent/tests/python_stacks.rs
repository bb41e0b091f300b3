//! Python frames in the stacks of stuck threads, captured by the real agent from the
//! seed hangs run by each CPython they are seen on (pyenv's interpreters: see
//! `common::pyenv_python`).
mod common;

use std::{process::Command, time::Duration};

use common::{compile_c, exitwatch, programs_dir, pyenv_python, Agent, Subject};
use exitwatch::{
    graph::Kind,
    incidents::{Frame, FrameKind, Incident, IncidentThread, State},
};

/// How long an incident with its stacks may take to appear: generous, because the
/// machines that run these tests are often busy with other builds (a limit, not a
/// measurement).
const WITHIN: Duration = Duration::from_secs(60);

/// The line of the seed's child program (`python -c CHILD`) that writes: `n =
/// os.write(1, view)` is its fifth line.
const CHILD_WRITE_LINE: u32 = 5;

/// Thread `tid` of `pid` as `incident` describes it, if it does (it may be another
/// test's incident: no panic here).
fn thread(incident: &Incident, pid: i32, tid: i32) -> Option<&IncidentThread> {
    let process = incident.processes.iter().find(|p| p.pid == pid)?;
    process.threads.iter().find(|t| t.tid == tid)
}

/// The Python frames of thread `tid` of `pid`, innermost first (none without a stack).
fn python_frames(incident: &Incident, pid: i32, tid: i32) -> Vec<&Frame> {
    thread(incident, pid, tid)
        .and_then(|t| t.stack.as_ref())
        .map(|stack| {
            stack
                .frames
                .iter()
                .filter(|f| f.kind == FrameKind::Python)
                .collect()
        })
        .unwrap_or_default()
}

/// The position of the frame running `function` in file `module`, or a panic showing
/// the frames.
fn position(frames: &[&Frame], function: &str, module: &str) -> usize {
    frames
        .iter()
        .position(|f| {
            f.function.as_deref() == Some(function) && f.module.as_deref() == Some(module)
        })
        .unwrap_or_else(|| panic!("no frame of {function} in {module}: {frames:#?}"))
}

/// The line of the first line of `script` (in the programs directory) starting with
/// `text`.
fn line_of(script: &str, text: &str) -> u32 {
    let source = std::fs::read_to_string(programs_dir().join(script))
        .unwrap_or_else(|e| panic!("reading {script}: {e}"));
    let index = source
        .lines()
        .position(|line| line.starts_with(text))
        .unwrap_or_else(|| panic!("{script} has no line starting with {text:?}"));
    index as u32 + 1
}

/// `Popen.wait()` as 3.11 and later name it (`co_qualname`), `wait()` before.
fn pipe_deadlock_names_the_wait(minor: &str, qualified: bool) {
    let agent = Agent::start();
    let subject = Subject::python_with(&pyenv_python(minor), "seed_pipe_deadlock.py", &[]);
    let (parent, child) = (subject.pid("parent"), subject.pid("child"));
    let incident = agent.wait_for(WITHIN, "pipe deadlock with Python stacks", |i| {
        i.kind == Kind::PipeDeadlock
            && i.state == State::Active
            && !python_frames(i, parent, parent).is_empty()
            && !python_frames(i, child, child).is_empty()
    });
    let wait = if qualified { "Popen.wait" } else { "wait" };
    let wait_line = line_of("seed_pipe_deadlock.py", "p.wait()");
    let frames = python_frames(&incident, parent, parent);
    let called = position(&frames, wait, "subprocess.py");
    let own = position(&frames, "<module>", "seed_pipe_deadlock.py");
    assert!(called < own, "{frames:#?}");
    assert_eq!(frames[own].line, Some(wait_line), "{frames:#?}");
    assert!(
        frames[own]
            .file
            .as_deref()
            .is_some_and(|f| f.ends_with("/seed_pipe_deadlock.py")),
        "{frames:#?}"
    );
    let frames = python_frames(&incident, child, child);
    let write = position(&frames, "<module>", "<string>");
    assert_eq!(frames[write].line, Some(CHILD_WRITE_LINE), "{frames:#?}");
    let summary = &incident.summary;
    let named = format!("(pid {parent}) in `{wait}()` at seed_pipe_deadlock.py:{wait_line}");
    assert!(summary.contains(&named), "{named} not in: {summary}");
    let named = format!("(pid {child}) in `<module>` at <string>:{CHILD_WRITE_LINE}");
    assert!(summary.contains(&named), "{named} not in: {summary}");
}

#[test]
fn pipe_deadlock_on_3_7() {
    pipe_deadlock_names_the_wait("3.7", false);
}

#[test]
fn pipe_deadlock_on_3_8() {
    pipe_deadlock_names_the_wait("3.8", false);
}

#[test]
fn pipe_deadlock_on_3_9() {
    pipe_deadlock_names_the_wait("3.9", false);
}

#[test]
fn pipe_deadlock_on_3_10() {
    pipe_deadlock_names_the_wait("3.10", false);
}

#[test]
fn pipe_deadlock_on_3_11() {
    pipe_deadlock_names_the_wait("3.11", true);
}

#[test]
fn pipe_deadlock_on_3_12() {
    pipe_deadlock_names_the_wait("3.12", true);
}

#[test]
fn pipe_deadlock_on_3_13() {
    pipe_deadlock_names_the_wait("3.13", true);
}

/// CPython 3.6 has no `_PyRuntime`: its threads keep their native stacks, and the summary
/// names no code.
#[test]
fn pipe_deadlock_on_3_6_has_native_frames_only() {
    let agent = Agent::start();
    let subject = Subject::python_with(&pyenv_python("3.6"), "seed_pipe_deadlock.py", &[]);
    let parent = subject.pid("parent");
    let incident = agent.wait_for(WITHIN, "pipe deadlock with a stack", |i| {
        i.kind == Kind::PipeDeadlock
            && i.state == State::Active
            && thread(i, parent, parent).is_some_and(|t| t.stack.is_some())
    });
    let stack = thread(&incident, parent, parent)
        .and_then(|t| t.stack.as_ref())
        .expect("the parent's stack");
    assert!(
        stack.frames.iter().all(|f| f.kind == FrameKind::Native),
        "{stack:#?}"
    );
    assert!(
        stack
            .frames
            .iter()
            .any(|f| f.function.as_deref() == Some("_PyEval_EvalFrameDefault")),
        "{stack:#?}"
    );
    let summary = &incident.summary;
    assert!(
        !summary.contains(&format!("(pid {parent}) in `")),
        "{summary}"
    );
}

/// Whether a thread of `pid` other than its main thread runs `run` (`Timer.run`, as 3.11
/// and later name it) of threading.py.
fn has_timer_thread(incident: &Incident, pid: i32, run: &str) -> bool {
    timer_thread(incident, pid, run).is_some()
}

/// The thread of `pid` other than its main thread that runs `run` of threading.py.
fn timer_thread<'a>(incident: &'a Incident, pid: i32, run: &str) -> Option<&'a IncidentThread> {
    let process = incident.processes.iter().find(|p| p.pid == pid)?;
    process.threads.iter().filter(|t| t.tid != pid).find(|t| {
        python_frames(incident, pid, t.tid.as_raw())
            .iter()
            .any(|f| {
                f.function.as_deref() == Some(run) && f.module.as_deref() == Some("threading.py")
            })
    })
}

/// The name `threading` gives thread `tid` of `pid`, as `incident` reports it.
fn python_thread(incident: &Incident, pid: i32, tid: i32) -> Option<&str> {
    thread(incident, pid, tid)?.python_thread.as_deref()
}

/// The re-arming Timer keeps the interpreter's exit (`threading._shutdown`) waiting: the
/// main thread's frames say so, and so do those of the timer thread it waits for (not
/// stuck itself: each timer lives half a second). Before 3.11 the timer thread is told
/// apart through its C library thread descriptor (see `stacks::python`). Both threads
/// carry their `threading` names: the timer's is `Thread-N`, which no OS tool shows.
fn timer_hang_shows_shutdown_and_the_timer(minor: &str, run: &str) {
    let agent = Agent::start();
    let subject = Subject::python_with(&pyenv_python(minor), "seed_timer_exit.py", &[]);
    let pid = subject.pid("pid");
    let incident = agent.wait_for(WITHIN, "exit hang with the timer's Python stack", |i| {
        i.kind == Kind::ExitBlockedOnThreads
            && i.state == State::Active
            && !python_frames(i, pid, pid).is_empty()
            && has_timer_thread(i, pid, run)
    });
    let main = python_frames(&incident, pid, pid);
    position(&main, "_shutdown", "threading.py");
    assert!(
        main.iter().all(|f| f
            .file
            .as_deref()
            .is_some_and(|f| f.ends_with("/threading.py"))),
        "the exit runs nothing but threading's shutdown: {main:#?}"
    );
    assert_eq!(
        python_thread(&incident, pid, pid),
        Some("MainThread"),
        "{incident:#?}"
    );
    let timer = timer_thread(&incident, pid, run).expect("the timer thread");
    let name = timer.python_thread.as_deref().unwrap_or_default();
    assert!(name.starts_with("Thread-"), "{timer:#?}");
}

#[test]
fn timer_hang_on_3_8() {
    timer_hang_shows_shutdown_and_the_timer("3.8", "run");
}

#[test]
fn timer_hang_on_3_11() {
    timer_hang_shows_shutdown_and_the_timer("3.11", "Timer.run");
}

#[test]
fn timer_hang_on_3_13() {
    timer_hang_shows_shutdown_and_the_timer("3.13", "Timer.run");
}

/// A process that is no interpreter but lays out a CPython 3.11 thread state with 100
/// frames in a ring and code objects that claim 2^40-character names and 2^40-byte line
/// tables: the agent reads it within its bounds and still describes the hang.
#[test]
fn a_hostile_fake_interpreter_gives_bounded_frames() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("creating a directory for the fake interpreter");
    let binary = dir.path().join("python3.11");
    std::fs::copy(compile_c("fake_cpython.c"), &binary).expect("copying the fake interpreter");
    let subject = Subject::spawn("fake_cpython.c", Command::new(&binary));
    let pid = subject.pid("pid");
    let incident = agent.wait_for(WITHIN, "exit hang with a stack", |i| {
        i.kind == Kind::ExitBlockedOnThreads
            && i.state == State::Active
            && i.pids == [pid]
            && thread(i, pid, pid).is_some_and(|t| t.stack.is_some())
    });
    let stack = thread(&incident, pid, pid)
        .and_then(|t| t.stack.as_ref())
        .expect("the main thread's stack");
    assert!(stack.frames.len() <= 64, "{} frames", stack.frames.len());
    assert!(!stack.complete, "a ring of frames was walked to its end");
    assert!(
        stack
            .frames
            .iter()
            .any(|f| f.function.as_deref() == Some("join_worker")),
        "{stack:#?}"
    );
    let python = python_frames(&incident, pid, pid);
    assert!(!python.is_empty(), "{stack:#?}");
    for frame in python {
        assert_eq!(frame.function.as_deref(), Some("hostile"), "{frame:?}");
        let file = frame.file.as_deref().unwrap_or_default();
        assert!(file.len() <= 1024 && file.starts_with("AAAA"), "{file}");
        // No line table was read: the code's first line.
        assert_eq!(frame.line, Some(7), "{frame:?}");
    }
    assert!(agent.metric(r#"exitwatch_stack_captures_total{result="partial"}"#) >= 1.0);
}

/// A non-daemon thread the program named `getter` blocks the exit in `Queue.get()`: on
/// every CPython exitwatch reads, the incident, `explain`'s sentence and its stack name
/// the thread by its `threading` name, and the main thread as `MainThread`.
fn named_thread_is_named(minor: &str) {
    let agent = Agent::start();
    let subject = Subject::python_with(&pyenv_python(minor), "queue_get_thread.py", &[]);
    let pid = subject.pid("pid");
    let getter = |i: &Incident| {
        let process = i.processes.iter().find(|p| p.pid == pid)?;
        process
            .threads
            .iter()
            .find(|t| t.tid != pid && t.python_thread.is_some())
            .map(|t| t.tid.as_raw())
    };
    let incident = agent.wait_for(WITHIN, "exit hang with the getter's name", |i| {
        i.kind == Kind::ExitBlockedOnThreads
            && i.state == State::Active
            && python_thread(i, pid, pid).is_some()
            && getter(i).is_some()
    });
    let tid = getter(&incident).expect("the getter thread");
    assert_eq!(
        python_thread(&incident, pid, tid),
        Some("getter"),
        "{incident:#?}"
    );
    assert_eq!(
        python_thread(&incident, pid, pid),
        Some("MainThread"),
        "{incident:#?}"
    );
    // Where the summary describes the thread, and where its exit phase says what it runs.
    for named in [
        format!("thread {tid} (\"getter\") of "),
        format!("thread {tid} (\"getter\") is still in"),
    ] {
        let summary = &incident.summary;
        assert!(summary.contains(&named), "{named} not in: {summary}");
    }
}

#[test]
fn named_thread_on_3_7() {
    named_thread_is_named("3.7");
}

#[test]
fn named_thread_on_3_8() {
    named_thread_is_named("3.8");
}

#[test]
fn named_thread_on_3_9() {
    named_thread_is_named("3.9");
}

#[test]
fn named_thread_on_3_10() {
    named_thread_is_named("3.10");
}

#[test]
fn named_thread_on_3_11() {
    named_thread_is_named("3.11");
}

#[test]
fn named_thread_on_3_12() {
    named_thread_is_named("3.12");
}

#[test]
fn named_thread_on_3_13() {
    named_thread_is_named("3.13");
}

/// `explain` prints each thread's Python name with its tid.
#[test]
fn explain_names_python_threads() {
    let subject = Subject::python_with(&pyenv_python("3.13"), "queue_get_thread.py", &[]);
    let pid = subject.pid("pid").to_string();
    std::thread::sleep(Duration::from_millis(1500));
    let output = exitwatch(&["explain", &pid, "--hang-after", "1s"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    let main = format!("tid {pid} (Python thread \"MainThread\"): ");
    assert!(text.contains(&main), "{main} not in: {text}");
    assert!(text.contains(" (Python thread \"getter\"): "), "{text}");
}
