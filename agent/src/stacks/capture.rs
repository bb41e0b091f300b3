//! One thread's stack: its maps and stack memory through the bounded `/proc` readers,
//! then unwinding and symbolizing on the bounded worker (module files may sit on a file
//! system their owner can stall), all within a time budget.
use std::time::{Duration, Instant};

use super::{
    model::Stack,
    symbolize,
    unwind::{walk, Registers, StackCopy},
};
use crate::pid::Pid;
use crate::procfs::{Error, ProcFs};

/// Stack copied above the stack pointer at most: hangs sit in short call chains.
pub const STACK_BYTES: u64 = 64 * 1024;
/// Time for one thread: modules are not loaded past it, and the stack is cut there.
pub const BUDGET: Duration = Duration::from_millis(50);
/// Time after that for looking up names: with the walk, well inside the bounded
/// worker's deadline, past which the process would count as stalling its readers.
const NAMING: Duration = Duration::from_millis(80);

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

pub fn capture(procfs: &ProcFs, pid: Pid, regs: Registers) -> Result<Stack, CaptureError> {
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
    let stack = procfs.bounded(pid, move |root| {
        let walk = walk(root, pid, &maps, regs, &stack, until);
        Ok(Stack {
            frames: symbolize::frames(root, &maps, &walk.addresses, &walk.modules, until + NAMING),
            complete: walk.complete,
        })
    })?;
    Ok(stack)
}
