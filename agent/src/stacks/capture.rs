//! One thread's stack: its maps and stack memory through the bounded `/proc` readers,
//! then unwinding on the bounded worker (module files may sit on a file system their
//! owner can stall), in a process that runs CPython its Python frames, then names for the
//! native frames, the Python frames replacing the interpreter's own (see [`merge`]); all
//! of it within one deadline per thread ([`BUDGET`]).
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    model::{Frame, Stack},
    python::{self, PythonStack},
    symbolize,
    unwind::{walk, Registers, StackCopy, MAX_FRAMES},
};
use crate::{
    pid::Pid,
    procfs::{Error, Mapping, ProcFs, DEADLINE},
};

/// Stack copied above the stack pointer at most: hangs sit in short call chains.
pub const STACK_BYTES: u64 = 64 * 1024;
/// Time for one thread, from its capture's first read to its last: maps, stack copy,
/// walk, names and (for the first thread of a process that needs them) the Python read.
/// It is checked between steps (before each module is loaded and each name looked up),
/// so one step may end past it.
pub const BUDGET: Duration = Duration::from_millis(50);
/// Into the budget: no module is loaded for the walk after this (the stack is then
/// partial), so that the Python frames and names have time.
const LOADING: Duration = Duration::from_millis(20);
/// Into the budget: the Python read stops here, so that names have the rest. It comes
/// before names: in a Python process, its frames are what the code's author wrote, the
/// native ones mostly the interpreter's.
const PYTHON_READ: Duration = Duration::from_millis(40);
/// Time for a Python read of its own (see [`read_python`]).
const PYTHON: Duration = Duration::from_millis(30);

// A capture that keeps to its budget, even with one step past it, must not look like a
// process stalling its readers to the bounded worker.
const _: () = assert!(BUDGET.as_nanos() * 2 <= DEADLINE.as_nanos());

#[derive(thiserror::Error, Debug)]
pub enum CaptureError {
    #[error(transparent)]
    Proc(#[from] Error),
    #[error("the stack pointer {0:#x} is in no mapping")]
    NoStack(u64),
}

impl CaptureError {
    /// The `result` label of `exitwatch_stack_captures_total`.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Proc(error) if error.is_gone() => "gone",
            Self::Proc(Error::Timeout { .. }) => "timeout",
            _ => "error",
        }
    }
}

/// The captures of one process's threads in one scan, and what they share: its maps,
/// read at the first capture, and, in a process that runs CPython, its threads' Python
/// stacks, read at the first capture (one walk of the interpreter's thread states instead
/// of one per thread) within that thread's budget, then handed out.
pub struct Captures {
    pid: Pid,
    tids: Vec<Pid>,
    maps: Option<Arc<[Mapping]>>,
    python: Option<Option<BTreeMap<Pid, PythonStack>>>,
}

impl Captures {
    /// For threads `tids` of `pid` (those whose Python frames are read together).
    pub fn new(pid: Pid, tids: Vec<Pid>) -> Self {
        Self {
            pid,
            tids,
            maps: None,
            python: None,
        }
    }

    /// The stack of thread `tid`, which entered its wait with `regs`. A process that
    /// runs CPython gets the thread's Python frames too; when they cannot be read, the
    /// native stack is kept as it is (and the reason logged), partial if time ran out.
    pub fn capture(
        &mut self,
        procfs: &ProcFs,
        tid: Pid,
        regs: Registers,
    ) -> Result<Stack, CaptureError> {
        let started = Instant::now();
        let pid = self.pid;
        let maps = self.maps(procfs)?;
        let stack = StackCopy {
            start: regs.sp,
            bytes: procfs
                .stack_above(pid, &maps, regs.sp, STACK_BYTES)?
                .ok_or(CaptureError::NoStack(regs.sp))?,
        };
        let walk_maps = maps.clone();
        let walk = procfs.bounded(pid, move |root| {
            Ok(walk(root, pid, &walk_maps, regs, &stack, started + LOADING))
        })?;
        let python = self.python_of(procfs, &maps, tid, started);
        let complete = walk.complete;
        let native = Stack {
            frames: procfs.bounded(pid, move |root| {
                Ok(symbolize::frames(
                    root,
                    &maps,
                    &walk.addresses,
                    &walk.modules,
                    started + BUDGET,
                ))
            })?,
            complete,
            python_thread: None,
        };
        Ok(match python {
            None | Some(Some(None)) => native,
            Some(Some(Some(python))) => merge(native, python),
            // Python frames that time kept out: a walk cut short.
            Some(None) => Stack {
                complete: false,
                ..native
            },
        })
    }

    /// The Python frames alone of thread `tid`, one of those whose frames are read
    /// together, for a thread that runs CPython in no wait the probes recorded (an
    /// event loop waiting in `epoll_wait`): no registers, so no native frames.
    pub fn python_only(&mut self, procfs: &ProcFs, tid: Pid) -> Result<Stack, CaptureError> {
        let maps = self.maps(procfs)?;
        let python = self.python_of(procfs, &maps, tid, Instant::now());
        let python = python.flatten().flatten().unwrap_or_default();
        Ok(Stack {
            frames: python.frames,
            complete: python.complete,
            python_thread: python.thread_name,
        })
    }

    /// The Python frames of thread `tid`, from the process's one read of them (made now,
    /// at the first capture since `started`): `None` without CPython, `Some(None)` when
    /// its frames ran out of time.
    fn python_of(
        &mut self,
        procfs: &ProcFs,
        maps: &Arc<[Mapping]>,
        tid: Pid,
        started: Instant,
    ) -> Option<Option<Option<PythonStack>>> {
        if !maps.iter().any(python::may_be_interpreter) {
            return None;
        }
        let (pid, tids) = (self.pid, &self.tids);
        let read = self.python.get_or_insert_with(|| {
            read_python_until(procfs, pid, maps.clone(), tids, started + PYTHON_READ)
        });
        Some(read.as_mut().map(|stacks| stacks.remove(&tid)))
    }

    /// The process's maps, read at the first capture (a zombie's are empty: its memory
    /// is gone, and so is the thread).
    fn maps(&mut self, procfs: &ProcFs) -> Result<Arc<[Mapping]>, CaptureError> {
        if let Some(maps) = &self.maps {
            return Ok(maps.clone());
        }
        let maps: Arc<[Mapping]> = procfs.mappings(self.pid)?.into();
        if maps.is_empty() {
            return Err(Error::Gone { pid: self.pid }.into());
        }
        Ok(self.maps.insert(maps).clone())
    }
}

/// The Python stacks of `tids`, read on the bounded worker within [`PYTHON`]: none (and
/// the reason logged) when they cannot be read, `None` when the read ran out of time
/// before it could tell (a later one may succeed).
pub(crate) fn read_python(
    procfs: &ProcFs,
    pid: Pid,
    maps: Vec<Mapping>,
    tids: &[Pid],
) -> Option<BTreeMap<Pid, PythonStack>> {
    read_python_until(procfs, pid, maps.into(), tids, Instant::now() + PYTHON)
}

/// [`read_python`], until `until`.
fn read_python_until(
    procfs: &ProcFs,
    pid: Pid,
    maps: Arc<[Mapping]>,
    tids: &[Pid],
    until: Instant,
) -> Option<BTreeMap<Pid, PythonStack>> {
    let wanted = tids.to_vec();
    let started = Instant::now();
    let read = procfs.bounded(pid, move |root| {
        Ok(python::stacks(root, pid, &maps, &wanted, until))
    });
    let (error, out_of_time) = match read {
        Ok(Ok(stacks)) => {
            log::debug!(
                "Python frames of {} thread(s) of pid {pid}: {} frames in {:?}",
                tids.len(),
                stacks.values().map(|s| s.frames.len()).sum::<usize>(),
                started.elapsed()
            );
            return Some(stacks);
        }
        Ok(Err(error)) => (error.to_string(), error.out_of_time()),
        Err(error) => (error.to_string(), matches!(error, Error::Timeout { .. })),
    };
    log::debug!("no Python frames for pid {pid}: {error}");
    (!out_of_time).then(BTreeMap::new)
}

/// The native frames up to the innermost interpreter loop (the C code the Python code
/// called into, down to the kernel), then the Python frames, [`MAX_FRAMES`] at most.
/// Complete when the Python walk reached the outermost frame, the native walk either
/// reached the loop or was complete itself, and nothing was cut. The thread's Python name
/// is kept either way.
fn merge(native: Stack, python: PythonStack) -> Stack {
    if python.frames.is_empty() {
        return Stack {
            python_thread: python.thread_name,
            ..native
        };
    }
    let eval = native.frames.iter().position(is_eval_loop);
    let mut frames = native.frames;
    frames.truncate(eval.unwrap_or(frames.len()));
    frames.extend(python.frames);
    let complete =
        python.complete && (eval.is_some() || native.complete) && frames.len() <= MAX_FRAMES;
    frames.truncate(MAX_FRAMES);
    Stack {
        frames,
        complete,
        python_thread: python.thread_name,
    }
}

/// The interpreter's loop over a Python frame's bytecode.
fn is_eval_loop(frame: &Frame) -> bool {
    frame.function.as_deref().is_some_and(|name| {
        name.starts_with("_PyEval_EvalFrame") || name.starts_with("PyEval_EvalFrame")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::model::FrameKind;

    fn frame(kind: FrameKind, function: &str) -> Frame {
        Frame {
            kind,
            function: Some(function.into()),
            file: None,
            line: None,
            module: None,
            offset: 0,
        }
    }

    fn names(stack: &Stack) -> Vec<&str> {
        stack
            .frames
            .iter()
            .filter_map(|f| f.function.as_deref())
            .collect()
    }

    #[test]
    fn python_frames_replace_the_interpreter_from_its_innermost_loop() {
        let native = |complete| Stack {
            frames: [
                "wait4",
                "os_waitpid",
                "_PyEval_EvalFrameDefault",
                "Py_RunMain",
            ]
            .map(|name| frame(FrameKind::Native, name))
            .to_vec(),
            complete,
            python_thread: None,
        };
        let python = |complete| PythonStack {
            frames: vec![
                frame(FrameKind::Python, "Popen.wait"),
                frame(FrameKind::Python, "<module>"),
            ],
            complete,
            thread_name: Some("uploader".into()),
        };
        let merged = merge(native(false), python(true));
        assert_eq!(
            names(&merged),
            ["wait4", "os_waitpid", "Popen.wait", "<module>"]
        );
        // The native walk's end past the loop does not matter; the Python walk's does.
        assert!(merged.complete);
        assert_eq!(merged.python_thread.as_deref(), Some("uploader"));
        assert!(!merge(native(true), python(false)).complete);
        let nothing = PythonStack::default();
        assert_eq!(merge(native(false), nothing), native(false));
        // A thread in no Python code (yet) keeps its native frames, and its name.
        let named = PythonStack {
            thread_name: Some("MainThread".into()),
            ..PythonStack::default()
        };
        let merged = merge(native(false), named);
        assert_eq!(merged.frames, native(false).frames);
        assert_eq!(merged.python_thread.as_deref(), Some("MainThread"));
    }

    #[test]
    fn a_merged_stack_keeps_at_most_64_frames() {
        let native = Stack {
            frames: vec![frame(FrameKind::Native, "exit"); 10],
            complete: true,
            python_thread: None,
        };
        let python = PythonStack {
            frames: vec![frame(FrameKind::Python, "f"); MAX_FRAMES],
            complete: true,
            thread_name: None,
        };
        let merged = merge(native, python);
        assert_eq!(merged.frames.len(), MAX_FRAMES);
        assert!(!merged.complete);
    }
}
