//! One thread's stack: its maps and stack memory through the bounded `/proc` readers,
//! then unwinding and symbolizing on the bounded worker (module files may sit on a file
//! system their owner can stall), all within a time budget; then, in a process that runs
//! CPython, its Python frames in place of the interpreter's own (see [`merge`]).
use std::{
    collections::BTreeMap,
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
    procfs::{Error, Mapping, ProcFs},
};

/// Stack copied above the stack pointer at most: hangs sit in short call chains.
pub const STACK_BYTES: u64 = 64 * 1024;
/// Time for one thread: modules are not loaded past it, and the stack is cut there.
pub const BUDGET: Duration = Duration::from_millis(50);
/// Time after that for looking up names: with the walk, well inside the bounded
/// worker's deadline, past which the process would count as stalling its readers.
const NAMING: Duration = Duration::from_millis(80);
/// Time for reading Python frames, on a bounded worker call of their own.
const PYTHON: Duration = Duration::from_millis(30);

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

/// The stack of thread `tid` of `pid`, which entered its wait with `regs`. A process
/// that runs CPython gets the thread's Python frames too (from `python`, read once for
/// the process's captures); when they cannot be read, the native stack is kept as it is
/// (and the reason logged), partial if time ran out.
pub fn capture(
    procfs: &ProcFs,
    pid: Pid,
    tid: Pid,
    regs: Registers,
    python: &mut PythonFrames,
) -> Result<Stack, CaptureError> {
    let until = Instant::now() + BUDGET;
    let maps = procfs.mappings(pid)?;
    if maps.is_empty() {
        // A zombie: its memory is gone, and so is the thread.
        return Err(Error::Gone { pid }.into());
    }
    let stack = StackCopy {
        start: regs.sp,
        bytes: procfs
            .stack_above(pid, &maps, regs.sp, STACK_BYTES)?
            .ok_or(CaptureError::NoStack(regs.sp))?,
    };
    let runs_python = maps.iter().any(python::may_be_interpreter);
    let native_maps = maps.clone();
    let native = procfs.bounded(pid, move |root| {
        let walk = walk(root, pid, &native_maps, regs, &stack, until);
        let frames = symbolize::frames(
            root,
            &native_maps,
            &walk.addresses,
            &walk.modules,
            until + NAMING,
        );
        Ok(Stack {
            frames,
            complete: walk.complete,
            python_thread: None,
        })
    })?;
    if !runs_python {
        return Ok(native);
    }
    Ok(match python.of(procfs, pid, maps, tid) {
        Some(Some(python)) => merge(native, python),
        Some(None) => native,
        // Python frames that time kept out: a walk cut short.
        None => Stack {
            complete: false,
            ..native
        },
    })
}

/// The Python stacks of the threads of one process about to be captured: read for all
/// of them at the first capture that needs them (one walk of the interpreter's thread
/// states instead of one per thread), then handed out.
pub struct PythonFrames {
    tids: Vec<Pid>,
    read: Option<Option<BTreeMap<Pid, PythonStack>>>,
}

impl PythonFrames {
    pub fn new(tids: Vec<Pid>) -> Self {
        Self { tids, read: None }
    }

    /// The Python stack of `tid` (one of those given to [`PythonFrames::new`]): `None`
    /// when the read ran out of time, `Some(None)` when the thread has none.
    fn of(
        &mut self,
        procfs: &ProcFs,
        pid: Pid,
        maps: Vec<Mapping>,
        tid: Pid,
    ) -> Option<Option<PythonStack>> {
        let tids = &self.tids;
        let read = self
            .read
            .get_or_insert_with(|| read_python(procfs, pid, maps, tids));
        Some(read.as_mut()?.remove(&tid))
    }
}

/// The Python stacks of `tids`, read on the bounded worker: none (and the reason logged)
/// when they cannot be read, `None` when the read ran out of time before it could tell
/// (a later one may succeed).
pub(crate) fn read_python(
    procfs: &ProcFs,
    pid: Pid,
    maps: Vec<Mapping>,
    tids: &[Pid],
) -> Option<BTreeMap<Pid, PythonStack>> {
    let wanted = tids.to_vec();
    let started = Instant::now();
    let read = procfs.bounded(pid, move |root| {
        Ok(python::stacks(root, pid, &maps, &wanted, started + PYTHON))
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
