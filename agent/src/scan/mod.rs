//! Turning what the probes recorded into a verified [`Snapshot`](crate::graph::Snapshot):
//! every candidate is checked against `/proc` before the graph sees it.
mod asyncio_stack;
mod cmdline;
mod collect;
mod exit_search;
mod exit_stack;
mod holders;
mod lifecycle;
mod pending;
mod quiet;
mod seed;
mod verdicts;
mod wait;

pub use collect::{collect, Backlog, Fresh, KernelView, Options, ScanState, WaitChanges};
pub use lifecycle::{Changed, Lifecycle};
pub use seed::blocked_from_proc;

use crate::pid::Pid;

/// Every key `(key, pid)` for one `key`: a range of the (key, pid) sets the scan state
/// indexes by.
fn with_any_pid<K: Copy>(key: K) -> std::ops::RangeInclusive<(K, Pid)> {
    (key, Pid::from_raw(i32::MIN))..=(key, Pid::from_raw(i32::MAX))
}

/// The age at which something learnt about `pid` is looked at again: between `base_ns`
/// and twice that, spread by pid so that what one scan learnt does not all age out in
/// one later scan.
fn age_limit(pid: Pid, base_ns: u64) -> u64 {
    const SPREAD: u64 = 64;
    base_ns + base_ns / SPREAD * (u64::from(pid.as_raw().unsigned_abs()) % SPREAD)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::age_limit;

    #[test]
    fn age_limits_spread_between_one_and_two_bases() {
        let limits: BTreeSet<u64> = (0..1000)
            .map(|pid| age_limit(crate::pid::Pid::from_raw(pid), 6400))
            .collect();
        assert_eq!(limits.len(), 64);
        assert!(limits.iter().all(|&limit| (6400..12800).contains(&limit)));
    }
}
