//! Exit phases from hand-built stacks, with the frames real interpreters show (3.11 and
//! 3.13 qualified names, 3.9 plain ones), and the summaries and advice they get.
use std::sync::Arc;

use exitwatch_common::exit_reason;

use super::{
    tests::{
        exiting, process, running, snapshot, stuck, wait_for, waiting, FUTEX, SECOND, TIMED_FUTEX,
        WRITE_PIPE,
    },
    *,
};
use crate::{
    pid::Pid,
    stacks::{
        model::{Frame, FrameKind},
        Stack,
    },
};

const LIB: &str = "/usr/lib/python3.11";

/// A Python frame: `function` at `file:line`.
fn py(function: &str, file: &str, line: u32) -> Frame {
    Frame {
        kind: FrameKind::Python,
        function: Some(function.to_string()),
        file: Some(file.to_string()),
        line: Some(line),
        module: file.rsplit('/').next().map(str::to_string),
        offset: 0,
    }
}

/// A frame of the standard library module `module`.
fn lib(function: &str, module: &str) -> Frame {
    py(function, &format!("{LIB}/{module}"), 1)
}

fn native(function: &str, module: &str) -> Frame {
    Frame {
        kind: FrameKind::Native,
        function: Some(function.to_string()),
        file: None,
        line: None,
        module: Some(module.to_string()),
        offset: 0x1189,
    }
}

/// `thread` with these frames (innermost first), under a native frame of the interpreter.
fn with_stack(mut thread: Thread, frames: Vec<Frame>) -> Thread {
    let mut frames = frames;
    frames.insert(0, native("__futex_abstimed_wait_common", "libc.so.6"));
    thread.stack = Some(Arc::new(Stack {
        frames,
        complete: true,
        python_thread: None,
    }));
    thread
}

/// A thread's bootstrap frames, below its `run`.
fn thread_entry(run: &str) -> Vec<Frame> {
    vec![
        lib(run, "threading.py"),
        lib("Thread._bootstrap_inner", "threading.py"),
        lib("Thread._bootstrap", "threading.py"),
    ]
}

/// A `concurrent.futures` worker running `task`.
fn worker(task: Frame) -> Vec<Frame> {
    let mut frames = vec![
        lib("Event.wait", "threading.py"),
        task,
        lib("_WorkItem.run", "concurrent/futures/thread.py"),
        lib("_worker", "concurrent/futures/thread.py"),
    ];
    frames.extend(thread_entry("Thread.run"));
    frames
}

/// The one finding of `processes`, with its phase.
fn only_finding(
    processes: Vec<Process>,
    pipes: Vec<(u64, Vec<i32>, Vec<i32>)>,
) -> (Finding, Option<Phase>) {
    let snap = snapshot(processes, pipes);
    let findings = analyze(&snap);
    assert_eq!(findings.len(), 1, "{findings:?}");
    let phase = findings[0].phase;
    (findings[0].clone(), phase)
}

/// The one finding of process 20 with `threads`, in `Py_FinalizeEx` for 15 s with
/// `spawns` threads started since: it is in `phase`, and its summary says `parts`.
fn finalizing(threads: Vec<Thread>, spawns: u64, phase: Option<Phase>, parts: &[&str]) -> Finding {
    let process = exiting(
        process(20, 1, threads),
        exit_reason::PY_FINALIZE,
        15 * SECOND,
        spawns,
    );
    let (finding, found) = only_finding(vec![process], vec![]);
    assert_eq!(found, phase, "{}", finding.summary);
    assert_mentions(&finding.summary, parts);
    finding
}

fn assert_mentions(summary: &str, parts: &[&str]) {
    for part in parts {
        assert!(summary.contains(part), "{part:?} in {summary}");
    }
}

#[test]
fn the_seed_timer_is_threading_shutdown_joining_timer_run() {
    let main = with_stack(
        waiting(20, FUTEX),
        vec![
            lib("Thread._wait_for_tstate_lock", "threading.py"),
            lib("Thread.join", "threading.py"),
            lib("_shutdown", "threading.py"),
        ],
    );
    let mut timer_frames = vec![
        lib("Condition.wait", "threading.py"),
        lib("Event.wait", "threading.py"),
    ];
    timer_frames.extend(thread_entry("Timer.run"));
    let timer = with_stack(waiting(21, TIMED_FUTEX), timer_frames);
    let finding = finalizing(
        vec![main, timer],
        30,
        Some(Phase::ThreadingShutdown),
        &[
            "threading._shutdown()",
            "thread 21 is still in `Timer.run`",
            "Fix: cancel() the timer",
        ],
    );
    assert_eq!(finding.kind, Kind::ExitBlockedOnThreads);
}

/// A thread whose Python name is known is called by it too.
#[test]
fn a_joined_thread_is_called_by_its_python_name() {
    let main = with_stack(
        waiting(20, FUTEX),
        vec![
            lib("Thread.join", "threading.py"),
            lib("_shutdown", "threading.py"),
        ],
    );
    let mut worker = with_stack(stuck(21, FUTEX), thread_entry("Thread.run"));
    let stack = worker
        .stack
        .as_mut()
        .and_then(Arc::get_mut)
        .expect("the worker's stack");
    stack.python_thread = Some("uploader \"eu\"".into());
    finalizing(
        vec![main, worker],
        30,
        Some(Phase::ThreadingShutdown),
        &[r#"thread 21 ("uploader \"eu\"") is still in `Thread.run`"#],
    );
}

#[test]
fn a_joined_thread_is_named_by_its_own_code_before_its_entry_point() {
    let main = with_stack(
        stuck(20, FUTEX),
        vec![
            lib("join", "threading.py"),
            lib("_shutdown", "threading.py"),
        ],
    );
    let mut frames = vec![
        lib("wait", "threading.py"),
        lib("get", "queue.py"),
        py("consume", "/srv/app/consumer.py", 12),
    ];
    frames.extend(thread_entry("run"));
    let getter = with_stack(stuck(21, FUTEX), frames);
    finalizing(
        vec![main, getter],
        0,
        Some(Phase::ThreadingShutdown),
        &[
            "thread 21 is still in `consume` at consumer.py:12",
            "daemon=True",
        ],
    );
}

#[test]
fn an_executor_worker_joined_at_exit_is_named_by_its_task() {
    // 3.13: threading._shutdown calls concurrent.futures' exit function through a lambda.
    let main = with_stack(
        stuck(20, FUTEX),
        vec![
            lib("Thread.join", "threading.py"),
            lib("_python_exit", "concurrent/futures/thread.py"),
            lib("_register_atexit.<locals>.<lambda>", "threading.py"),
            lib("_shutdown", "threading.py"),
        ],
    );
    let task = py("fetch", "/srv/app/jobs.py", 40);
    let worker = with_stack(stuck(21, FUTEX), worker(task));
    finalizing(
        vec![main, worker],
        0,
        Some(Phase::ExecutorShutdown),
        &[
            "_python_exit",
            "worker thread 21 still runs its task `fetch` at jobs.py:40",
            "executor.shutdown(cancel_futures=True)",
        ],
    );
}

#[test]
fn a_python_atexit_handler_is_named_with_its_place() {
    let main = with_stack(
        stuck(20, FUTEX),
        vec![
            lib("_wait_for_tstate_lock", "threading.py"),
            lib("join", "threading.py"),
            py("stop_worker", "/srv/app/atexit_join.py", 17),
        ],
    );
    let mut frames = vec![lib("wait", "threading.py"), lib("wait", "threading.py")];
    frames.extend(thread_entry("run"));
    let worker = with_stack(stuck(21, FUTEX), frames);
    finalizing(
        vec![main, worker],
        0,
        Some(Phase::AtexitHandler),
        &[
            "It is in the atexit handler `stop_worker` at atexit_join.py:17",
            "Fix: the atexit handler `stop_worker`",
        ],
    );
}

#[test]
fn asyncio_run_waiting_for_its_default_executor_names_the_job() {
    // Marked by the agent from the thread running `_do_shutdown` (3.9: plain names);
    // the main thread waits in epoll_wait, which is no wait exitwatch models.
    let shutdown = {
        let mut frames = vec![
            lib("_wait_for_tstate_lock", "threading.py"),
            lib("join", "threading.py"),
            lib("shutdown", "concurrent/futures/thread.py"),
            lib("_do_shutdown", "asyncio/base_events.py"),
        ];
        frames.extend(thread_entry("run"));
        with_stack(stuck(21, FUTEX), frames)
    };
    let job = with_stack(
        stuck(22, FUTEX),
        worker(py("blocking_forever", "/srv/app/main.py", 21)),
    );
    let mut asyncio = exiting(
        process(20, 1, vec![running(20), shutdown, job]),
        exit_reason::ASYNCIO_SHUTDOWN,
        15 * SECOND,
        0,
    );
    if let Some(exit) = asyncio.exit.as_mut() {
        exit.exit_tid = Pid::from_raw(21);
    }
    let (finding, phase) = only_finding(vec![asyncio], vec![]);
    assert_eq!(finding.kind, Kind::ExitBlockedOnThreads);
    assert_eq!(phase, Some(Phase::AsyncioShutdown));
    assert_mentions(
        &finding.summary,
        &[
            "(asyncio_shutdown)",
            "asyncio.run() is waiting in loop.shutdown_default_executor()",
            "thread 21 (BaseEventLoop._do_shutdown)",
            "worker thread 22 still runs the job `blocking_forever` at main.py:21",
            "make the run_in_executor() job return",
        ],
    );
    assert!(
        !finding.summary.contains("daemon=True"),
        "{}",
        finding.summary
    );
}

#[test]
fn a_multiprocessing_child_joining_its_feeder_gets_queue_advice() {
    let parent = process(10, 1, vec![stuck(10, wait_for(11))]);
    let child_main = with_stack(
        stuck(11, FUTEX),
        vec![
            lib("Thread.join", "threading.py"),
            lib("Queue._finalize_join", "multiprocessing/queues.py"),
            lib("Finalize.__call__", "multiprocessing/util.py"),
            lib("_run_finalizers", "multiprocessing/util.py"),
            lib("_exit_function", "multiprocessing/util.py"),
            lib("BaseProcess._bootstrap", "multiprocessing/process.py"),
        ],
    );
    let child = process(11, 10, vec![child_main, stuck(12, WRITE_PIPE)]);
    let (finding, phase) = only_finding(vec![parent, child], vec![(77, vec![10, 11], vec![11])]);
    assert_eq!(finding.kind, Kind::PipeDeadlock);
    assert_eq!(phase, Some(Phase::MultiprocessingExit));
    assert_mentions(
        &finding.summary,
        &[
            "multiprocessing.util._exit_function), joining its Queue's feeder thread",
            "q.cancel_join_thread()",
        ],
    );
}

#[test]
fn c_exits_keep_their_advice_and_get_a_phase() {
    let libc_exit = |frames: Vec<Frame>| {
        let main = with_stack(stuck(30, FUTEX), frames);
        vec![exiting(
            process(30, 1, vec![main, stuck(31, FUTEX)]),
            exit_reason::LIBC_EXIT,
            15 * SECOND,
            0,
        )]
    };
    let (handler, phase) = only_finding(
        libc_exit(vec![
            native("pthread_join", "libc.so.6"),
            native("join_worker", "atexit_join"),
            native("__run_exit_handlers", "libc.so.6"),
            native("exit", "libc.so.6"),
        ]),
        vec![],
    );
    assert_eq!(phase, Some(Phase::AtexitHandler));
    assert_mentions(
        &handler.summary,
        &["Fix: an atexit handler (or static destructor)"],
    );
    let (destructor, phase) = only_finding(
        libc_exit(vec![
            native("pthread_join", "libc.so.6"),
            native("std::thread::join()", "libstdc++.so.6"),
            native("(anonymous namespace)::Pool::~Pool()", "static_dtor_join"),
            native("__run_exit_handlers", "libc.so.6"),
            native("exit", "libc.so.6"),
        ]),
        vec![],
    );
    assert_eq!(phase, Some(Phase::StaticDestructor));
    assert_mentions(
        &destructor.summary,
        &["Fix: the static destructor `(anonymous namespace)::Pool::~Pool()`"],
    );
    for summary in [&handler.summary, &destructor.summary] {
        assert!(!summary.contains("It is in"), "{summary}");
    }
}

#[test]
fn without_a_telling_stack_there_is_no_phase() {
    // Still running the main module when the stacks were taken, a walk cut before the
    // outermost frame (which would name the handler), or no stacks at all.
    let main = with_stack(
        stuck(20, FUTEX),
        vec![
            lib("Event.wait", "threading.py"),
            py("<module>", "/srv/app/main.py", 3),
        ],
    );
    let mut cut = with_stack(
        stuck(20, FUTEX),
        vec![
            lib("Event.wait", "threading.py"),
            py("step", "/srv/app/main.py", 9),
        ],
    );
    if let Some(stack) = cut.stack.as_mut() {
        Arc::make_mut(stack).complete = false;
    }
    for threads in [
        vec![main, stuck(21, FUTEX)],
        vec![cut, stuck(21, FUTEX)],
        vec![stuck(20, FUTEX), stuck(21, FUTEX)],
    ] {
        finalizing(
            threads,
            0,
            None,
            &["Fix: make background threads daemon=True"],
        );
    }
}

#[test]
fn asyncio_past_its_shutdown_timeout_is_the_interpreters_exit() {
    // 3.12+: asyncio.run() gave up after its timeout, the interpreter finalizes and
    // joins the same worker; the `_do_shutdown` thread is still there.
    let main = with_stack(
        stuck(20, FUTEX),
        vec![
            lib("Thread.join", "threading.py"),
            lib("_python_exit", "concurrent/futures/thread.py"),
            lib("_shutdown", "threading.py"),
        ],
    );
    let mut frames = vec![
        lib("Thread.join", "threading.py"),
        lib(
            "ThreadPoolExecutor.shutdown",
            "concurrent/futures/thread.py",
        ),
        lib("BaseEventLoop._do_shutdown", "asyncio/base_events.py"),
    ];
    frames.extend(thread_entry("Thread.run"));
    let shutdown = with_stack(stuck(21, FUTEX), frames);
    let job = with_stack(
        stuck(22, FUTEX),
        worker(py("blocking_forever", "/srv/app/main.py", 21)),
    );
    finalizing(
        vec![main, shutdown, job],
        0,
        Some(Phase::ExecutorShutdown),
        &["worker thread 22 still runs its task `blocking_forever`"],
    );
}

#[test]
fn asyncio_marked_by_the_scan_is_its_phase_before_any_stack() {
    let mut asyncio = exiting(
        process(20, 1, vec![running(20), stuck(21, FUTEX), stuck(22, FUTEX)]),
        exit_reason::ASYNCIO_SHUTDOWN,
        15 * SECOND,
        0,
    );
    if let Some(exit) = asyncio.exit.as_mut() {
        exit.exit_tid = Pid::from_raw(21);
    }
    let (finding, phase) = only_finding(vec![asyncio], vec![]);
    assert_eq!(phase, Some(Phase::AsyncioShutdown));
    assert_mentions(
        &finding.summary,
        &[
            "thread 21 (BaseEventLoop._do_shutdown)",
            "make the run_in_executor() job return",
        ],
    );
    assert!(
        !finding.summary.contains("daemon=True"),
        "{}",
        finding.summary
    );
}
