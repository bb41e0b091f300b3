use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use exitwatch_common::{
    changed, counter, wait_histogram, BlockedWait, Event, ExitState, BLOCKED_CAPACITY,
    EVENTS_BYTES, PROCS_CAPACITY,
};

use crate::task_storage::TaskStorage;

#[map]
pub static BLOCKED: HashMap<u32, BlockedWait> = HashMap::with_max_entries(BLOCKED_CAPACITY, 0);

/// Which threads' entries in `BLOCKED` were written or removed since the agent last
/// looked (layout in [`exitwatch_common::changed`]). The agent reads and clears it through
/// a shared mapping, and looks up only those entries instead of reading the whole map
/// every scan.
#[map]
pub static CHANGED: Array<u64> =
    Array::with_max_entries(changed::words(changed::MAX_IDS), BPF_F_MMAPABLE);

/// Tells the agent that `tid`'s entry in `BLOCKED` changed: its byte, then its chunk's
/// summary byte (in that order: the agent clears the summary before it reads the chunk).
/// A thread id beyond the map (`pid_max` raised after the agent sized it) is counted, and
/// the agent then rereads the whole of `BLOCKED`.
pub fn mark_changed(tid: u32) {
    let (Some(word), Some(summary)) = (
        CHANGED.get_ptr_mut(changed::SUMMARY_WORDS + tid / 8),
        CHANGED.get_ptr_mut(tid / changed::CHUNK / 8),
    ) else {
        bump(counter::CHANGES_LOST);
        return;
    };
    // SAFETY: bytes inside two words of an array map, valid for the program's run. The
    // agent swaps whole words to zero concurrently; a byte store is atomic against that.
    unsafe {
        word.cast::<u8>().add((tid % 8) as usize).write_volatile(1);
        summary
            .cast::<u8>()
            .add((tid / changed::CHUNK % 8) as usize)
            .write_volatile(1);
    }
}

#[map]
pub static PROCS: HashMap<u32, ExitState> = HashMap::with_max_entries(PROCS_CAPACITY, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static WAIT_HISTOGRAM: PerCpuArray<u64> = PerCpuArray::with_max_entries(wait_histogram::LEN, 0);

/// A task's current tracked wait, task-local so the wake-up side needs no pid and no hash
/// lookup, and so a repeated sleep in the same wait can skip `BLOCKED` for a while.
#[repr(C)]
pub struct TaskWait {
    /// When the current tracked sleep began; 0 while the task runs.
    pub since_ns: u64,
    /// The tick (`jiffies`) this wait was last written to `BLOCKED`; 0 before that (the
    /// tick count starts far from 0 and does not wrap).
    pub published_tick: u64,
    /// Sleeps in this wait not yet added to `BLOCKED`.
    pub unpublished_sleeps: u64,
    pub args: [u64; 4],
    /// User `rsp` of the published sleep (see `exitwatch_common::same_wait`).
    pub sp: u64,
    pub syscall: u32,
    /// Histogram class of `syscall`.
    pub class: u32,
}

#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "TASK_WAIT")]
pub static TASK_WAIT: TaskStorage<TaskWait> = TaskStorage::new();

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

pub fn bump(index: u32) {
    add(&COUNTERS, index, 1);
}

pub fn add(array: &PerCpuArray<u64>, index: u32, value: u64) {
    if let Some(slot) = array.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not nest on one CPU for these hooks.
        unsafe { *slot += value };
    }
}

/// Sends a lifecycle event; a full ring buffer is counted, never silent.
pub fn emit(kind: u32, tgid: u32, tid: u32, arg: u32, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(counter::EVENTS_DROPPED);
        return;
    };
    entry.write(Event {
        ts_ns: now,
        kind,
        pid: tgid,
        tid,
        arg,
        comm: aya_ebpf::helpers::bpf_get_current_comm().unwrap_or_default(),
    });
    // Waking the agent for every event costs tens of µs inside the probe; it drains the
    // ring on a short timer instead, and is woken only when the ring fills up.
    let flags = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) > u64::from(EVENTS_BYTES / 4) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(flags));
    bump(counter::EVENTS_SENT);
}

/// Splits `bpf_get_current_pid_tgid()` into (tgid, tid).
pub fn current_ids() -> (u32, u32) {
    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

pub fn now_ns() -> u64 {
    // SAFETY: no preconditions.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

/// The scheduler tick count; the verifier turns the call into one load.
pub fn jiffies() -> u64 {
    // SAFETY: no preconditions.
    unsafe { aya_ebpf::helpers::bpf_jiffies64() }
}
