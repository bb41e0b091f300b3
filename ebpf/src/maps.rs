use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use exitwatch_common::{
    counter, wait_histogram, BlockedWait, Event, ExitState, BLOCKED_CAPACITY, EVENTS_BYTES,
    PROCS_CAPACITY,
};

use crate::task_storage::TaskStorage;

#[map]
pub static BLOCKED: HashMap<u32, BlockedWait> = HashMap::with_max_entries(BLOCKED_CAPACITY, 0);

#[map]
pub static PROCS: HashMap<u32, ExitState> = HashMap::with_max_entries(PROCS_CAPACITY, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static WAIT_HISTOGRAM: PerCpuArray<u64> = PerCpuArray::with_max_entries(wait_histogram::LEN, 0);

/// When the task's current tracked sleep began, and its histogram class; cleared when
/// the task next runs. Task-local, so the wake-up side needs no pid and no hash lookup.
#[repr(C)]
pub struct SleepStart {
    pub since_ns: u64,
    pub class: u32,
    pub _pad: u32,
}

#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "SLEEP_START")]
pub static SLEEP_START: TaskStorage<SleepStart> = TaskStorage::new();

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
    entry.submit(0);
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
