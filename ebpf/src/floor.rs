//! The cheapest possible `sched_switch` program, for `cargo xtask bench` to measure the
//! real one against: what any scheduler hook costs here (tracepoint, BPF dispatch) is
//! the floor no work inside the program can go below. The agent never loads it.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "sched_switch")]
pub fn empty_sched_switch(_ctx: BtfTracePointContext) -> i32 {
    0
}
