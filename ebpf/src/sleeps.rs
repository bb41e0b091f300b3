//! `sched_switch`: the hottest path in the kernel. A thread that is not going to sleep
//! voluntarily, or is exiting, costs one compare; a sleep outside the tracked syscalls
//! costs one register read more; a repeated sleep in the same wait, a task-local lookup
//! and no clock read. The wake-up side (timing completed waits) runs only with
//! `--wait-histogram`.
use aya_ebpf::{
    bindings::{pt_regs, task_struct},
    helpers::bpf_task_pt_regs,
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
    Global,
};
use core::ptr::{addr_of, read_volatile};
use exitwatch_common::{
    counter, is_tracked_sleep, is_tracked_syscall, same_wait, wait_histogram, BlockedWait,
};

use crate::maps::{
    add, bump, current_ids, jiffies, mark_changed, now_ns, BLOCKED, TASK_WAIT, WAIT_HISTOGRAM,
};

/// How stale `BLOCKED` may get for a thread that keeps re-sleeping in the same wait, in
/// scheduler ticks (`jiffies`): 25 ms at `HZ=1000`, 100 ms at 250, 250 ms at 100, far
/// below any hang threshold, and it spares the hash update on most sleeps. Ticks, not
/// nanoseconds: the verifier inlines `bpf_jiffies64()` into one load, so a repeated sleep
/// reads no clock at all.
const REFRESH_TICKS: u64 = 25;

/// Non-zero when the agent runs with `--wait-histogram`; set at load time. It lives in
/// `.rodata`, which the loader freezes, so the verifier knows its value and rewrites the
/// branch on it into an unconditional one: with the histogram off, the wake-up side is
/// gone from the program, not skipped at run time.
#[unsafe(no_mangle)]
static WAIT_HISTOGRAM_ON: Global<u32> = Global::new(0);

/// `TASK_DEAD` in `prev_state` (`include/linux/sched.h`, the same bit since 4.14): a
/// thread's last switch as it exits, never a wait. Thread and process churn pay one
/// switch of these per thread.
const TASK_DEAD: u64 = 0x80;

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    // tp_btf args: (bool preempt, task_struct *prev, task_struct *next, unsigned int prev_state)
    let now = if WAIT_HISTOGRAM_ON.load() != 0 {
        complete_wait(ctx.arg(2))
    } else {
        0
    };
    let preempt: u64 = ctx.arg(0);
    let prev_state = ctx.arg::<u64>(3) & 0xffff_ffff;
    if (preempt & 0xff) != 0 || prev_state == 0 || prev_state & TASK_DEAD != 0 {
        return 0;
    }
    // A failed register read only means this sleep goes unrecorded.
    let _ = record_sleep(ctx.arg(1), now);
    0
}

/// The task about to run ends its tracked sleep, if it was in one: count its duration.
/// Returns the time if it had to read the clock, else 0.
fn complete_wait(next: *mut task_struct) -> u64 {
    let Some(wait) = TASK_WAIT.get_ptr_mut(next) else {
        return 0;
    };
    // SAFETY: only `sched_switch` dereferences a task's value, for the task switched in
    // or out on this CPU, and a task is switched on one CPU at a time: this is the only
    // reference while the program runs.
    let wait = unsafe { &mut *wait };
    if wait.since_ns == 0 {
        return 0;
    }
    let now = now_ns();
    let duration = now.saturating_sub(wait.since_ns);
    wait.since_ns = 0;
    let base = wait.class.min(wait_histogram::CLASSES - 1) * wait_histogram::SLOTS;
    add(&WAIT_HISTOGRAM, base + wait_histogram::bucket(duration), 1);
    add(&WAIT_HISTOGRAM, base + wait_histogram::BUCKETS, duration);
    now
}

/// `task` is `prev`, the task going to sleep (still `current`): the tracepoint's own
/// argument, a trusted BTF pointer, spares a helper call for it.
fn record_sleep(task: *mut task_struct, now: u64) -> Result<(), i32> {
    // Its user registers hold the syscall it is sleeping in: x86_64 `pt_regs` is user
    // ABI, so no CO-RE. The helper returns a BTF pointer, so these are plain
    // (fault-checked) loads, not helper calls.
    // SAFETY: `task` is the tracepoint's `prev`, trusted for the program's run.
    let regs = unsafe { bpf_task_pt_regs(task) } as *const pt_regs;
    // SAFETY: the verifier checks every load through `regs` against the kernel's BTF for
    // `struct pt_regs`; a bad one faults to zero instead of reading elsewhere.
    let syscall = unsafe { read_volatile(addr_of!((*regs).orig_rax)) } as u32;
    if !is_tracked_syscall(syscall) {
        return Ok(());
    }
    // SAFETY: as for `orig_rax` above.
    let args = unsafe {
        [
            read_volatile(addr_of!((*regs).rdi)),
            read_volatile(addr_of!((*regs).rsi)),
            read_volatile(addr_of!((*regs).rdx)),
            read_volatile(addr_of!((*regs).r10)),
        ]
    };
    if !is_tracked_sleep(syscall, &args) {
        return Ok(());
    }
    let Some(wait) = TASK_WAIT.get_or_create_ptr_mut(task) else {
        return Ok(());
    };
    // SAFETY: the value of the task going to sleep, which runs nothing else meanwhile;
    // see `complete_wait`.
    let wait = unsafe { &mut *wait };
    let histogram = WAIT_HISTOGRAM_ON.load() != 0;
    if histogram {
        wait.since_ns = if now == 0 { now_ns() } else { now };
    }
    let tick = jiffies();
    let user_sp = || {
        // SAFETY: as for `orig_rax` above.
        unsafe { read_volatile(addr_of!((*regs).rsp)) }
    };
    let same = wait.syscall == syscall
        && wait.published_tick != 0
        && same_wait(syscall, &args, user_sp, &wait.args, wait.sp);
    if same && tick.wrapping_sub(wait.published_tick) < REFRESH_TICKS {
        wait.unpublished_sleeps += 1;
        return Ok(());
    }
    let now = if histogram { wait.since_ns } else { now_ns() };
    let (tgid, tid) = current_ids();
    if same {
        if let Some(entry) = BLOCKED.get_ptr_mut(tid) {
            // SAFETY: only this thread's own sleeps write its entry; user space only
            // reads and deletes it.
            let entry = unsafe { &mut *entry };
            entry.last_ns = now;
            entry.sleeps += wait.unpublished_sleeps + 1;
            wait.published_tick = tick;
            wait.unpublished_sleeps = 0;
            mark_changed(tid);
            return Ok(());
        }
    }
    // Only a new wait pays for these three loads: the agent unwinds the stack from them.
    // SAFETY: as for `orig_rax` above.
    let (ip, sp, bp) = unsafe {
        (
            read_volatile(addr_of!((*regs).rip)),
            read_volatile(addr_of!((*regs).rsp)),
            read_volatile(addr_of!((*regs).rbp)),
        )
    };
    let entry = BlockedWait {
        tgid,
        syscall,
        args,
        first_ns: now,
        last_ns: now,
        sleeps: 1,
        ip,
        sp,
        bp,
    };
    if BLOCKED.insert(tid, entry, 0).is_err() {
        bump(counter::BLOCKED_FULL);
        return Ok(());
    }
    wait.syscall = syscall;
    wait.class = wait_histogram::class(syscall);
    wait.args = args;
    wait.sp = sp;
    wait.published_tick = tick;
    wait.unpublished_sleeps = 0;
    mark_changed(tid);
    Ok(())
}
