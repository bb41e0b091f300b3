//! `asyncio.run()` tearing down, found on a Python stack: its
//! `loop.shutdown_default_executor()` starts a thread that runs
//! `BaseEventLoop._do_shutdown`, which joins the default executor's workers without a
//! timeout, while the main thread waits in the event loop (`epoll_wait`, which the
//! probes do not record). A job that never ends hangs the program before the interpreter
//! finalizes, so no exit probe fires; the joining thread sleeps in an untimed futex wait
//! like any idle pool thread, so such waits of Python processes are read once each.
use std::{
    collections::{BTreeSet, HashSet},
    time::Instant,
};

use exitwatch_common::exit_reason;

use super::{collect::Verified, exit_search::Sign};
use crate::{
    graph::{is_asyncio_executor_shutdown, Wait},
    pid::Pid,
    procfs::ProcFs,
    stacks::{may_be_interpreter, read_python},
};

/// Processes remembered to run no CPython interpreter at most: past that, a process is
/// looked at again (its maps, once per wait) instead of remembered.
const MAX_NOT_PYTHON: usize = 16_384;

#[derive(Default)]
pub struct AsyncioShutdown {
    /// Processes that map no CPython interpreter, until they exec or exit: their waits
    /// are no candidates, so idle native thread pools cost one look per process.
    not_python: BTreeSet<Pid>,
}

impl Sign for AsyncioShutdown {
    const REASON: u32 = exit_reason::ASYNCIO_SHUTDOWN;
    /// Each is a read of the process's maps and, in a CPython process, of one thread's
    /// Python frames; a host's native thread pools cost one maps read per process, many
    /// of which fit a scan's time for searches.
    const MAX_SEARCHES: usize = 64;

    /// `_do_shutdown` runs on a thread of its own, never the main thread.
    fn candidate(&self, pid: Pid, tid: Pid, thread: &Verified) -> bool {
        tid != pid
            && thread.stuck
            && thread.wait == Wait::Futex { timed: false }
            && !self.not_python.contains(&pid)
    }

    /// Whether the thread runs `BaseEventLoop._do_shutdown`. Frames that cannot be read
    /// (a layout not understood) are a "no" for this wait; a read that ran out of time
    /// is no verdict (a later scan reads again: a "no" would miss the hang for good).
    fn search(&mut self, procfs: &ProcFs, pid: Pid, tid: Pid, _: &Verified) -> Option<bool> {
        let maps = procfs.mappings(pid).ok()?;
        if !maps.iter().any(may_be_interpreter) {
            if self.not_python.len() < MAX_NOT_PYTHON {
                self.not_python.insert(pid);
            }
            return Some(false);
        }
        let started = Instant::now();
        let stacks = read_python(procfs, pid, maps, &[tid])?;
        let shutdown = stacks
            .get(&tid)
            .is_some_and(|stack| stack.frames.iter().any(is_asyncio_executor_shutdown));
        log::debug!(
            "thread {tid} of pid {pid} read for asyncio's executor shutdown ({shutdown}) in {:?}",
            started.elapsed()
        );
        Some(shutdown)
    }
}

impl AsyncioShutdown {
    /// Processes that exec'd or exited: what they map is no longer known.
    pub fn forget(&mut self, pids: &HashSet<Pid>) {
        self.not_python.retain(|pid| !pids.contains(pid));
    }
}
