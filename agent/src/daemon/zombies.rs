//! Processes that exited and are not reaped yet, from the probes' exit events. A parent
//! that leaves a child unreaped may be reading the pipe the child left behind, in
//! `poll`/`select`, which the probes do not track: scans look at such parents.
use std::collections::{BTreeMap, BTreeSet};

use crate::procfs::ProcFs;

/// Exits remembered at once; beyond this, new ones are not looked at (a host that keeps
/// this many zombies has a bigger problem than the ones exitwatch would miss).
const MAX_EXITED: usize = 4096;

#[derive(Default)]
pub struct Zombies {
    /// Pid → monotonic ns of its exit.
    exited: BTreeMap<i32, u64>,
}

impl Zombies {
    pub fn exited(&mut self, pid: i32, at_ns: u64) {
        if self.exited.len() < MAX_EXITED || self.exited.contains_key(&pid) {
            self.exited.insert(pid, at_ns);
        }
    }

    /// The exits at least `hang_after_ns` old.
    pub fn due(&self, now_ns: u64, hang_after_ns: u64) -> Vec<i32> {
        self.exited
            .iter()
            .filter(|(_, &at_ns)| now_ns.saturating_sub(at_ns) >= hang_after_ns)
            .map(|(&pid, _)| pid)
            .collect()
    }

    pub fn forget(&mut self, reaped: &[i32]) {
        for pid in reaped {
            self.exited.remove(pid);
        }
    }
}

/// The parents of those of `exited` that are still zombies, and the others (reaped, or
/// their pid taken by a new process). Runs without the lock the event loop takes.
pub fn parents(procfs: &ProcFs, exited: &[i32]) -> (Vec<i32>, Vec<i32>) {
    let mut parents = BTreeSet::new();
    let mut reaped = Vec::new();
    for &pid in exited {
        match procfs.stat(pid, pid) {
            Ok(stat) if stat.state == 'Z' => {
                if stat.ppid > 0 {
                    parents.insert(stat.ppid);
                }
            }
            _ => reaped.push(pid),
        }
    }
    (parents.into_iter().collect(), reaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn only_old_unreaped_exits_name_their_parents() {
        // The fixture's 200 is a zombie; 100 runs (its pid was reused); 999 is gone.
        let procfs = ProcFs::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/proc"));
        let mut zombies = Zombies::default();
        for pid in [200, 100, 999] {
            zombies.exited(pid, SECOND);
        }
        zombies.exited(201, 9 * SECOND);
        let due = zombies.due(10 * SECOND, 2 * SECOND);
        assert_eq!(due, [100, 200, 999]);
        let (parents, reaped) = parents(&procfs, &due);
        let ppid = procfs.stat(200, 200).map(|s| s.ppid).unwrap_or_default();
        assert_eq!((parents, reaped.clone()), (vec![ppid], vec![100, 999]));
        zombies.forget(&reaped);
        assert_eq!(zombies.due(20 * SECOND, 2 * SECOND), [200, 201]);
    }

    #[test]
    fn exits_beyond_the_cap_are_not_remembered() {
        let mut zombies = Zombies::default();
        for pid in 0..MAX_EXITED as i32 + 10 {
            zombies.exited(pid, 0);
        }
        assert_eq!(zombies.due(1, 0).len(), MAX_EXITED);
    }
}
