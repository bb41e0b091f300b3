//! Process and thread lifecycle: thread spawns during exit, exec, exit, and termination
//! signals. These fire per process or thread event, not per sleep. Classic tracepoints
//! where the program needs a record's field (their records carry pids without reading
//! `task_struct`, which has no stable layout); `tp_btf` for the thread exit, which needs
//! none and is the one every thread pays: a classic tracepoint fills a perf record before
//! the program runs.
use aya_ebpf::{
    bindings::task_struct,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
    Global,
};
use exitwatch_common::{event_kind, exit_reason};

use crate::{
    exit_phase::mark_exiting,
    maps::{current_ids, emit, mark_changed, now_ns, BLOCKED, PROCS, TASK_WAIT},
};

// Linux uapi values (`sched.h`, `signal.h`): aya's bindings cover only the BPF uapi, and
// this `no_std` crate has no libc.
const CLONE_THREAD: u64 = 0x0001_0000;
const SIGHUP: u32 = 1;
const SIGINT: u32 = 2;
const SIGQUIT: u32 = 3;
const SIGTERM: u32 = 15;

// Record offsets as this kernel's tracefs format files give them; the agent overrides
// these defaults (measured on 6.18) at load time (`names::RECORD_OFFSETS`).
#[unsafe(no_mangle)]
static NEWTASK_PID_OFFSET: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static NEWTASK_FLAGS_OFFSET: Global<u32> = Global::new(32);
#[unsafe(no_mangle)]
static SIGNAL_SIG_OFFSET: Global<u32> = Global::new(8);

/// Drops a process's exit state. Nearly every process has none: the lock-free lookup
/// spares them the locked hash delete on every fork, exec and exit.
fn forget_process(tgid: u32) {
    if PROCS.get_ptr(tgid).is_some() {
        let _ = PROCS.remove(tgid);
    }
}

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let _ = try_task_newtask(&ctx);
    0
}

fn try_task_newtask(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: offsets come from this kernel's format file for this tracepoint.
    let flags: u64 = unsafe { ctx.read_at(NEWTASK_FLAGS_OFFSET.load() as usize)? };
    if flags & CLONE_THREAD != 0 {
        let (tgid, _) = current_ids();
        if let Some(state) = PROCS.get_ptr_mut(tgid) {
            // SAFETY: plain integers; see `mark_exiting`.
            let state = unsafe { &mut *state };
            state.thread_spawns += 1;
            state.last_spawn_ns = now_ns();
        }
    } else {
        // A new process may reuse the pid of one whose exit we never saw.
        // SAFETY: offset from this kernel's format file for this tracepoint.
        let pid: i32 = unsafe { ctx.read_at(NEWTASK_PID_OFFSET.load() as usize)? };
        forget_process(pid as u32);
    }
    Ok(())
}

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    // A new image starts with a clean slate: exit markers of the old one no longer hold.
    forget_process(tgid);
    emit(event_kind::EXEC, tgid, tid, 0, now_ns());
    0
}

/// Non-zero when this kernel's `sched_process_exit` passes `group_dead`; set at load time
/// from its format file. In `.rodata`, which the loader freezes: the verifier knows the
/// value and never looks at the branch not taken, so the read of a second argument that
/// an older kernel does not pass is not even checked there.
#[unsafe(no_mangle)]
static EXIT_HAS_GROUP_DEAD: Global<u32> = Global::new(1);

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    // tp_btf args: (struct task_struct *p[, bool group_dead]); `p` is the current task.
    let task: *mut task_struct = ctx.arg(0);
    let (tgid, tid) = current_ids();
    // Only threads that ever slept in a tracked wait have an entry; the task-local
    // lookup spares the locked hash delete for the others (a lookup in `BLOCKED` itself
    // costs three times as much here: its buckets are cold). Entries the agent found in
    // /proc at start-up are not covered: the agent drops them when their process exits.
    if TASK_WAIT.get_ptr_mut(task).is_some() && BLOCKED.remove(tid).is_ok() {
        mark_changed(tid);
    }
    let group_dead = if EXIT_HAS_GROUP_DEAD.load() != 0 {
        ctx.arg::<u64>(1) & 0xff != 0
    } else {
        // Kernels before `group_dead` was added: the leader's exit stands in for it, and
        // the agent checks /proc.
        tid == tgid
    };
    if group_dead {
        forget_process(tgid);
        emit(event_kind::EXIT, tgid, tid, 0, now_ns());
    } else if tid == tgid {
        mark_exiting(exit_reason::MAIN_THREAD_EXIT, 0);
    }
    0
}

#[tracepoint]
pub fn signal_deliver(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from this kernel's format file.
    let Ok(sig) = (unsafe { ctx.read_at::<i32>(SIGNAL_SIG_OFFSET.load() as usize) }) else {
        return 0;
    };
    let sig = sig as u32;
    if matches!(sig, SIGHUP | SIGINT | SIGQUIT | SIGTERM) {
        mark_exiting(exit_reason::SIGNAL, sig);
    }
    0
}
