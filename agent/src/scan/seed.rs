//! Start-up: threads that were already blocked before the probes were attached.
use exitwatch_common::{is_tracked_sleep, BlockedWait};

use crate::procfs::{ProcFs, SchedClock, Syscall};

/// Every thread now sleeping in a tracked wait, as the kernel probe would have recorded
/// it. The sleep's start is estimated from the scheduler's last run of the thread
/// (`se.exec_start`, put on the monotonic clock by the lag of the CPU it ran on), or
/// `now_ns` where that is not exposed.
pub fn blocked_from_proc(procfs: &ProcFs, now_ns: u64) -> Vec<(u32, BlockedWait)> {
    let mut found = Vec::new();
    let Ok(pids) = procfs.pids() else {
        return found;
    };
    let clock = SchedClock::new(procfs);
    for pid in pids {
        for tid in procfs.tids(pid).unwrap_or_default() {
            // Threads that vanish or deny access while we look are simply not seeded.
            let Ok(Syscall::In { nr, args, sp, pc }) = procfs.syscall(pid, tid) else {
                continue;
            };
            let (Ok(syscall), args) = (u32::try_from(nr), [args[0], args[1], args[2], args[3]])
            else {
                continue;
            };
            let (Ok(key), Ok(tgid)) = (u32::try_from(tid), u32::try_from(pid)) else {
                continue;
            };
            if !is_tracked_sleep(syscall, &args) {
                continue;
            }
            let ran = procfs.sched_exec_start_ns(pid, tid).ok().flatten();
            let cpu = procfs.stat(pid, tid).map(|stat| stat.cpu);
            let since = match (ran, cpu) {
                (Some(ns), Ok(cpu)) => clock.monotonic_ns(ns, cpu).min(now_ns),
                _ => now_ns,
            };
            found.push((
                key,
                BlockedWait {
                    tgid,
                    syscall,
                    args,
                    first_ns: since,
                    last_ns: since,
                    sleeps: 0,
                    // /proc has no frame pointer: unwinding through code that needs
                    // it stops there (the stack is `partial`).
                    ip: pc,
                    sp,
                    bp: 0,
                },
            ));
        }
    }
    found
}
