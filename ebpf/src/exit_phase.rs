//! Markers that a process has started to exit: the interpreter's `Py_FinalizeEx`, and
//! (from `lifecycle`) main-thread exit and termination signals. libc's `exit` has no probe:
//! a trap on every process exit on the host costs more than it tells; the agent finds C
//! programs stuck in `exit()` on their stacks instead.
use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use aya_log_ebpf::debug;
use exitwatch_common::{counter, event_kind, exit_reason, ExitState};

use crate::maps::{bump, current_ids, emit, now_ns, PROCS};

#[uprobe]
pub fn py_finalize(ctx: ProbeContext) -> u32 {
    if mark_exiting(exit_reason::PY_FINALIZE, 0) {
        debug!(&ctx, "Py_FinalizeEx entered");
    }
    0
}

/// Records `reason` for the current process; returns whether it is new for the process.
pub fn mark_exiting(reason: u32, signal: u32) -> bool {
    let (tgid, tid) = current_ids();
    let now = now_ns();
    let fresh = if let Some(state) = PROCS.get_ptr_mut(tgid) {
        // SAFETY: entries are plain integers; a racing update loses at most one flag
        // that the next marker of the same process sets again.
        let state = unsafe { &mut *state };
        let fresh = state.reasons & reason == 0;
        state.reasons |= reason;
        if signal != 0 {
            state.signal = signal;
        }
        fresh
    } else {
        let state = ExitState {
            since_ns: now,
            reasons: reason,
            exit_tid: tid,
            signal,
            ..ExitState::default()
        };
        if PROCS.insert(tgid, state, 0).is_err() {
            bump(counter::PROCS_FULL);
            return false;
        }
        true
    };
    if fresh {
        emit(event_kind::EXIT_PHASE, tgid, tid, reason, now);
    }
    fresh
}
