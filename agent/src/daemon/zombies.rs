//! Processes that exited and are not reaped yet, from the probes' exit events. A parent
//! that leaves a child unreaped may be reading the pipe the child left behind, in
//! `poll`/`select`, which the probes do not track: scans look at such parents.
use std::collections::{BTreeMap, BTreeSet};

use crate::pid::Pid;
use crate::procfs::ProcFs;

/// Exits remembered at once; beyond this, new ones are not looked at (a host that keeps
/// this many zombies has a bigger problem than the ones exitwatch would miss).
const MAX_EXITED: usize = 4096;

#[derive(Default)]
pub struct Zombies {
    /// Pid → monotonic ns of its exit.
    exited: BTreeMap<Pid, u64>,
}

impl Zombies {
    pub fn exited(&mut self, pid: Pid, at_ns: u64) {
        if self.exited.len() < MAX_EXITED || self.exited.contains_key(&pid) {
            self.exited.insert(pid, at_ns);
        }
    }

    /// Every exit remembered, with its time.
    pub fn pending(&self) -> Vec<(Pid, u64)> {
        self.exited
            .iter()
            .map(|(&pid, &at_ns)| (pid, at_ns))
            .collect()
    }

    pub fn forget(&mut self, reaped: &[Pid]) {
        for pid in reaped {
            self.exited.remove(pid);
        }
    }
}

/// The parents of those of `exited` that are still zombies `hang_after_ns` after their
/// exit, and the exits that were reaped (or whose pid a new process took). Every exit is
/// checked, not only the old ones, so reaped ones leave at once and a fork-heavy host
/// does not fill the list. Runs without the lock the event loop takes.
pub fn parents(
    procfs: &ProcFs,
    exited: &[(Pid, u64)],
    now_ns: u64,
    hang_after_ns: u64,
) -> (Vec<Pid>, Vec<Pid>) {
    let mut parents = BTreeSet::new();
    let mut reaped = Vec::new();
    for &(pid, at_ns) in exited {
        match procfs.stat(pid, pid) {
            Ok(stat) if stat.state == 'Z' => {
                if stat.ppid.as_raw() > 0 && now_ns.saturating_sub(at_ns) >= hang_after_ns {
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
            zombies.exited(Pid::from_raw(pid), SECOND);
        }
        let ppid = procfs
            .stat(Pid::from_raw(200), Pid::from_raw(200))
            .map(|s| s.ppid)
            .unwrap_or_default();
        let (young, reaped) = parents(&procfs, &zombies.pending(), 2 * SECOND, 2 * SECOND);
        assert!(young.is_empty());
        assert_eq!(reaped, [100, 999]);
        zombies.forget(&reaped);
        assert_eq!(zombies.pending(), [(Pid::from_raw(200), SECOND)]);
        let (old, _) = parents(&procfs, &zombies.pending(), 3 * SECOND, 2 * SECOND);
        assert_eq!(old, [ppid]);
    }

    #[test]
    fn exits_beyond_the_cap_are_not_remembered() {
        let mut zombies = Zombies::default();
        for pid in 0..MAX_EXITED as i32 + 10 {
            zombies.exited(Pid::from_raw(pid), 0);
        }
        assert_eq!(zombies.pending().len(), MAX_EXITED);
    }
}
