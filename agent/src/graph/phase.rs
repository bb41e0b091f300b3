//! Which part of a program's exit a hang is in, read from its threads' stacks: the
//! interpreter joining non-daemon threads, an `atexit` handler, concurrent.futures',
//! multiprocessing's or asyncio's shutdown, a C++ static destructor. Each has its own fix.
use exitwatch_common::exit_reason;
use serde::{Deserialize, Serialize};

use super::{
    analyze::Finding,
    model::{Pid, Process, Snapshot},
};
use crate::stacks::model::{Frame, FrameKind};

/// The exit phase a hang is in, as incidents name it (`exit_phase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `threading._shutdown()`: the interpreter joins every non-daemon thread.
    ThreadingShutdown,
    /// `concurrent.futures.thread._python_exit`: executors' workers joined at exit.
    ExecutorShutdown,
    /// `multiprocessing.util._exit_function`: a process joining its queue feeder threads
    /// or its child processes.
    MultiprocessingExit,
    /// An `atexit` handler: Python's inside `Py_FinalizeEx`, or C's inside `exit()`.
    AtexitHandler,
    /// A C++ static destructor run by `exit()`.
    StaticDestructor,
    /// `asyncio.run()` waiting in `loop.shutdown_default_executor()` for the default
    /// executor's workers, before the interpreter finalizes.
    AsyncioShutdown,
}

/// A thread other than the one driving the exit, and the frame that says what it runs.
#[derive(Clone, Copy, Debug)]
pub struct Doing<'a> {
    pub tid: Pid,
    /// Its name in Python's `threading`, when its stack could tell.
    pub name: Option<&'a str>,
    pub frame: &'a Frame,
}

/// `thread 21`, or `thread 21 ("uploader")` when the thread's Python name is known.
pub fn thread_name(tid: Pid, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("thread {tid} ({name:?})"),
        None => format!("thread {tid}"),
    }
}

/// What multiprocessing's exit function is joining.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joins {
    /// A `Queue`'s feeder thread (`Queue._finalize_join`), which cannot end while its
    /// data sits unread in the queue's pipe.
    Feeder,
    /// Child processes that have not ended (`Process.join`).
    Children,
    /// Neither is on its stack: one of its other finalizers.
    Finalizer,
}

/// A phase, with what its stacks name.
#[derive(Clone, Copy, Debug)]
pub enum Found<'a> {
    ThreadingShutdown {
        joined: Option<Doing<'a>>,
    },
    ExecutorShutdown {
        task: Option<Doing<'a>>,
    },
    MultiprocessingExit {
        joins: Joins,
    },
    AtexitHandler {
        /// The handler's frame, when a stack shows it.
        handler: Option<&'a Frame>,
        python: bool,
    },
    StaticDestructor {
        destructor: &'a Frame,
    },
    AsyncioShutdown {
        /// The thread running `BaseEventLoop._do_shutdown`.
        shutdown: Pid,
        task: Option<Doing<'a>>,
    },
}

/// The phase of the first process of `finding` whose stacks show one.
pub fn classify<'a>(snapshot: &'a Snapshot, finding: &Finding) -> Option<Found<'a>> {
    finding
        .pids
        .iter()
        .filter_map(|pid| snapshot.processes.get(pid))
        .find_map(of_process)
}

/// A thread with a stack: its Python name and frames (innermost first).
struct PythonThread<'a> {
    tid: Pid,
    name: Option<&'a str>,
    frames: Vec<&'a Frame>,
}

impl<'a> PythonThread<'a> {
    /// This thread, doing what `frame` shows.
    fn at(&self, frame: &'a Frame) -> Doing<'a> {
        Doing {
            tid: self.tid,
            name: self.name,
            frame,
        }
    }
}

fn of_process(process: &Process) -> Option<Found<'_>> {
    let python: Vec<PythonThread> = process
        .threads
        .iter()
        .filter_map(|thread| {
            let stack = thread.stack.as_deref()?;
            Some(PythonThread {
                tid: thread.tid,
                name: thread.python_name(),
                frames: stack
                    .frames
                    .iter()
                    .filter(|f| f.kind == FrameKind::Python)
                    .collect(),
            })
        })
        .collect();
    // The thread driving the exit; a multiprocessing child has no exit marker, and runs
    // its exit functions on its main thread.
    let driver = process
        .exit_thread()
        .or_else(|| process.thread(process.pid));
    let frames = python
        .iter()
        .find(|thread| driver.is_some_and(|d| d.tid == thread.tid))
        .map(|thread| thread.frames.as_slice())
        .unwrap_or_default();
    if let Some(found) = driver.and_then(|d| python_exit_function(&python, d.tid, frames)) {
        return Some(found);
    }
    // Before the interpreter finalizes (3.12+ gives up after 300 s and finalizes, and
    // its exit then joins the same worker: the phase above). The scan that marked the
    // process found it on the stack of the thread it names, which may not have a stack
    // in the incident yet.
    let marked = process
        .exit
        .filter(|exit| exit.reasons & exit_reason::ASYNCIO_SHUTDOWN != 0)
        .map(|exit| exit.exit_tid);
    let shutdown = python
        .iter()
        .find(|thread| {
            thread
                .frames
                .iter()
                .any(|f| is_asyncio_executor_shutdown(f))
        })
        .map(|thread| thread.tid)
        .or(marked);
    if let Some(shutdown) = shutdown {
        return Some(Found::AsyncioShutdown {
            shutdown,
            task: executor_task(&python, shutdown),
        });
    }
    let exit = process.exit?;
    let finalizing = exit.reasons & exit_reason::PY_FINALIZE != 0;
    // Inside `Py_FinalizeEx`, after `threading._shutdown`, Python code on the exiting
    // thread runs from an atexit callback: its outermost frame is the handler (nothing
    // of `__main__` is left below it), if the walk reached the outermost frame.
    let whole = driver
        .and_then(|d| d.stack.as_deref())
        .is_some_and(|s| s.complete);
    if let Some(handler) = frames.last().filter(|_| finalizing && whole) {
        return (handler.function.as_deref() != Some("<module>")).then_some(Found::AtexitHandler {
            handler: Some(handler),
            python: true,
        });
    }
    let stack = driver?.stack.as_deref()?;
    match stack.under_exit()? {
        Some(destructor) => Some(Found::StaticDestructor { destructor }),
        None => Some(Found::AtexitHandler {
            handler: stack.user_frame(),
            python: false,
        }),
    }
}

/// The exit functions of the standard library on the `frames` of `driver`, the thread
/// driving the exit.
fn python_exit_function<'a>(
    python: &[PythonThread<'a>],
    driver: Pid,
    frames: &[&'a Frame],
) -> Option<Found<'a>> {
    let on_stack = |module: &str, function: &str| frames.iter().any(|f| is(f, module, function));
    if on_stack("concurrent/futures/thread.py", "_python_exit") {
        return Some(Found::ExecutorShutdown {
            task: executor_task(python, driver),
        });
    }
    if on_stack("multiprocessing/util.py", "_exit_function") {
        let joins = if on_stack("multiprocessing/queues.py", "_finalize_join") {
            Joins::Feeder
        } else if on_stack("multiprocessing/process.py", "join") {
            Joins::Children
        } else {
            Joins::Finalizer
        };
        return Some(Found::MultiprocessingExit { joins });
    }
    if on_stack("threading.py", "_shutdown") {
        let joined = python
            .iter()
            .filter(|thread| thread.tid != driver)
            .find_map(|thread| Some(thread.at(doing(&thread.frames)?)));
        return Some(Found::ThreadingShutdown { joined });
    }
    None
}

/// The task a `concurrent.futures` worker runs (the frame `_WorkItem.run` called), on
/// a thread other than `besides`: stuck workers are the ones an exit waits for.
fn executor_task<'a>(python: &[PythonThread<'a>], besides: Pid) -> Option<Doing<'a>> {
    python
        .iter()
        .filter(|thread| thread.tid != besides)
        .find_map(|thread| {
            let run = thread
                .frames
                .iter()
                .position(|f| is(f, "concurrent/futures/thread.py", "run"))?;
            Some(thread.at(thread.frames.get(run.checked_sub(1)?).copied()?))
        })
}

/// What a thread is doing, as far as its owner would recognise it: the innermost frame
/// of their own code, else the thread's entry point (`Timer.run`: the frame that
/// `Thread._bootstrap_inner` called), else its innermost frame.
fn doing<'a>(frames: &[&'a Frame]) -> Option<&'a Frame> {
    frames
        .iter()
        .find(|f| !f.is_runtime())
        .or_else(|| {
            let bootstrap = frames
                .iter()
                .position(|f| is(f, "threading.py", "_bootstrap_inner"))?;
            frames.get(bootstrap.checked_sub(1)?)
        })
        .or(frames.first())
        .copied()
}

/// `BaseEventLoop._do_shutdown`: the thread that `loop.shutdown_default_executor()`
/// starts to join the default executor's workers.
pub fn is_asyncio_executor_shutdown(frame: &Frame) -> bool {
    is(frame, "asyncio/base_events.py", "_do_shutdown")
}

/// Whether `frame` is `function` (a plain name; a qualified name such as
/// `BaseEventLoop._do_shutdown` matches by its last part) of the standard library
/// module whose file ends with `module`.
fn is(frame: &Frame, module: &str, function: &str) -> bool {
    let named = frame
        .function
        .as_deref()
        .is_some_and(|name| name.rsplit('.').next() == Some(function));
    let file = frame.file.as_deref().unwrap_or_default();
    let from_module = file
        .strip_suffix(module)
        .is_some_and(|dir| dir.is_empty() || dir.ends_with('/'));
    named && from_module
}

impl Found<'_> {
    pub fn phase(&self) -> Phase {
        match self {
            Found::ThreadingShutdown { .. } => Phase::ThreadingShutdown,
            Found::ExecutorShutdown { .. } => Phase::ExecutorShutdown,
            Found::MultiprocessingExit { .. } => Phase::MultiprocessingExit,
            Found::AtexitHandler { .. } => Phase::AtexitHandler,
            Found::StaticDestructor { .. } => Phase::StaticDestructor,
            Found::AsyncioShutdown { .. } => Phase::AsyncioShutdown,
        }
    }

    /// Where the exit is, as a sentence; empty for C and C++, whose stuck frame the
    /// summary names already.
    pub fn sentence(&self) -> String {
        match *self {
            Found::ThreadingShutdown { joined } => format!(
                "It is in threading._shutdown(), which joins every non-daemon thread{}.",
                match joined {
                    Some(joined) =>
                        format!(": {} is still in {}", joined.thread(), at(joined.frame)),
                    None => ", and one never ends".to_string(),
                }
            ),
            Found::ExecutorShutdown { task } => format!(
                "It is in concurrent.futures' exit function (concurrent.futures.thread.\
                 _python_exit), which joins every executor worker{}.",
                running(task)
            ),
            Found::MultiprocessingExit { joins } => format!(
                "It is in multiprocessing's exit function (multiprocessing.util.\
                 _exit_function), {}.",
                match joins {
                    Joins::Feeder =>
                        "joining its Queue's feeder thread, which cannot end \
                                      while the data it wrote sits unread in the queue's pipe",
                    Joins::Children => "joining child processes that do not end",
                    Joins::Finalizer => "running finalizers that do not end",
                }
            ),
            Found::AtexitHandler {
                handler: Some(handler),
                python: true,
            } => format!(
                "It is in the atexit handler {}, which the interpreter runs at exit.",
                at(handler)
            ),
            Found::AtexitHandler { .. } | Found::StaticDestructor { .. } => String::new(),
            Found::AsyncioShutdown { shutdown, task } => format!(
                "asyncio.run() is waiting in loop.shutdown_default_executor() for the \
                 default executor to finish: thread {shutdown} (BaseEventLoop._do_shutdown) \
                 joins its workers while the main thread waits in the event loop{} \
                 (shutdown_default_executor() itself is a suspended coroutine, on no \
                 thread's stack).",
                match task {
                    Some(task) => format!(
                        ", and worker {} still runs the job {}",
                        task.thread(),
                        at(task.frame)
                    ),
                    None => String::new(),
                }
            ),
        }
    }

    /// The usual fix, completing "Fix: ".
    pub fn fix(&self) -> String {
        match *self {
            Found::ThreadingShutdown { joined } => {
                let timer = joined
                    .and_then(|j| j.frame.function.as_deref())
                    .is_some_and(|name| name.ends_with("Timer.run"));
                if timer {
                    "cancel() the timer (and stop re-arming it from its callback) before the \
                     main module ends, or make it a daemon (timer.daemon = True)."
                        .to_string()
                } else {
                    "make the thread return when asked (an Event it checks, a sentinel on its \
                     queue) and stop it before the main module ends, cancel() it if it is a \
                     threading.Timer, or make it daemon=True."
                        .to_string()
                }
            }
            Found::ExecutorShutdown { .. } => "make the task return (a timeout on what it \
                waits for, or a stop flag it checks); executor.shutdown(cancel_futures=True) \
                before exit drops the tasks that have not started, but a running task must \
                still return."
                .to_string(),
            Found::MultiprocessingExit { joins } => match joins {
                Joins::Feeder => "get() the data from the queue before join()ing the process \
                    that put it there, or call q.cancel_join_thread() in that process (its \
                    unread data is then lost)."
                    .to_string(),
                Joins::Children => "make the child processes return (or terminate() them) \
                    before the parent exits, or start them with daemon=True so that the \
                    exit terminates them."
                    .to_string(),
                Joins::Finalizer => "get() queue data before join()ing its producer (or \
                    q.cancel_join_thread() there), and end or terminate() child processes \
                    before exiting."
                    .to_string(),
            },
            Found::AtexitHandler {
                handler,
                python: true,
            } => format!(
                "the atexit handler{} waits for something that never comes: tell the thread \
                 it joins to stop first (an Event it checks), join with a timeout, or do not \
                 block in atexit handlers.",
                handler.map_or_else(String::new, |h| format!(" {}", at(h)))
            ),
            Found::AtexitHandler { python: false, .. } => {
                "an atexit handler (or static destructor) waits for a thread that never \
                 returns: tell the thread to stop and join it before calling exit() or \
                 returning from main, do not join threads that may block in atexit handlers, \
                 or end with _exit()/quick_exit() when nothing must be flushed."
                    .to_string()
            }
            Found::StaticDestructor { destructor } => format!(
                "the static destructor `{}` waits for a thread during exit(): stop and join \
                 that thread before main returns (or exit() is called), make it return when \
                 asked, or do not keep the thread in an object with static storage duration.",
                destructor.name()
            ),
            Found::AsyncioShutdown { .. } => "make the run_in_executor() job return (a \
                timeout on what it waits for, or a stop flag it checks) and await it before \
                main() returns; do not block forever in run_in_executor() jobs. A timeout on \
                the shutdown (loop.shutdown_default_executor(timeout); asyncio.run() gives up \
                after 300 s from 3.12) only moves the hang to the interpreter's exit, which \
                joins the worker again."
                .to_string(),
        }
    }
}

impl Doing<'_> {
    fn thread(&self) -> String {
        thread_name(self.tid, self.name)
    }
}

/// `` `Timer.run` at threading.py:1002 ``
fn at(frame: &Frame) -> String {
    format!("`{}`{}", frame.name(), frame.source())
}

fn running(task: Option<Doing>) -> String {
    match task {
        Some(task) => format!(
            ": worker {} still runs its task {}",
            task.thread(),
            at(task.frame)
        ),
        None => String::new(),
    }
}
