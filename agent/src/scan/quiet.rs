//! Blocked processes known to be live, and what keeps them so. A log shipper reading a
//! pipe from an idle writer is blocked for hours, and every scan would read it, resolve
//! the pipe's holders and find it live again. Once a scan finds it live because of one
//! releaser (the witness: a holder of the pipe's other end, or a child, or the process
//! itself through a thread that can run), later scans skip it while
//! - its own blocked waits are the same records,
//! - the witness began no new wait and did not exec or exit,
//! - and the finding has not aged out (a witness can stop for good in a wait the probes
//!   do not record, `poll` for instance; the age bounds how long that goes unseen). A
//!   witness already in such a wait, only younger than the threshold, is no witness at
//!   all: it turns stuck by itself, and the process is not skipped.
//!
//! Findings age out oldest first, at most [`MAX_EXPIRED`] per scan, so that a host's idle
//! readers, all found live in one scan, are looked at again over several scans.
//!
//! A skipped process is still read whenever another one's wait leads to it.
use std::collections::{BTreeSet, HashMap, HashSet};

use exitwatch_common::BlockedWait;

use super::age_limit;
use crate::pid::Pid;

/// The age at which a finding is looked at again (see [`age_limit`]), while no more than
/// [`MAX_EXPIRED`] age out together.
const MAX_AGE_NS: u64 = 60_000_000_000;
/// Findings that age out per scan, at most.
const MAX_EXPIRED: usize = 64;

/// A process's blocked waits as the kernel recorded them: `(tid, record)`, by tid.
pub type Waits = Vec<(u32, BlockedWait)>;

struct Quiet {
    waits: Waits,
    witness: Pid,
    due_ns: u64,
}

#[derive(Default)]
pub struct QuietSeeds {
    by_pid: HashMap<Pid, Quiet>,
    /// (witness, pid) of every finding.
    by_witness: BTreeSet<(Pid, Pid)>,
    /// (when it ages out, pid) of every finding.
    due: BTreeSet<(u64, Pid)>,
}

impl QuietSeeds {
    /// Whether `pid`, blocked in `waits`, is still known live. `active` are the processes
    /// with a wait that got stuck since the last scan (a process kept live by a thread of
    /// its own is looked at again when another of its threads gets stuck).
    pub fn is_quiet(&self, pid: Pid, waits: &Waits, active: &HashSet<Pid>) -> bool {
        self.by_pid
            .get(&pid)
            .is_some_and(|quiet| quiet.waits == *waits && !active.contains(&quiet.witness))
    }

    /// Forgets the oldest of the findings that aged out by `now_ns`, as many as one scan
    /// looks at again.
    pub fn expire(&mut self, now_ns: u64) {
        let aged: Vec<Pid> = (self.due.iter())
            .take_while(|(due_ns, _)| *due_ns <= now_ns)
            .take(MAX_EXPIRED)
            .map(|&(_, pid)| pid)
            .collect();
        for pid in aged {
            self.forget(pid);
        }
    }

    pub fn note(&mut self, pid: Pid, waits: Waits, witness: Pid, now_ns: u64) {
        self.forget(pid);
        let due_ns = now_ns.saturating_add(age_limit(pid, MAX_AGE_NS));
        self.by_witness.insert((witness, pid));
        self.due.insert((due_ns, pid));
        self.by_pid.insert(
            pid,
            Quiet {
                waits,
                witness,
                due_ns,
            },
        );
    }

    /// Forgets `pid`: it was not found live (or is part of a finding).
    pub fn forget(&mut self, pid: Pid) {
        if let Some(quiet) = self.by_pid.remove(&pid) {
            self.by_witness.remove(&(quiet.witness, pid));
            self.due.remove(&(quiet.due_ns, pid));
        }
    }

    /// Forgets what depended on processes that exec'd or exited.
    pub fn forget_processes(&mut self, pids: &HashSet<Pid>) {
        for &pid in pids {
            self.forget(pid);
            let witnessed: Vec<Pid> = (self.by_witness)
                .range((pid, Pid::from_raw(i32::MIN))..=(pid, Pid::from_raw(i32::MAX)))
                .map(|&(_, quiet)| quiet)
                .collect();
            for quiet in witnessed {
                self.forget(quiet);
            }
        }
    }

    /// Forgets processes not blocked any more (or involved in a finding).
    pub fn retain(&mut self, keep: impl Fn(Pid) -> bool) {
        let dropped: Vec<Pid> = self
            .by_pid
            .keys()
            .copied()
            .filter(|&pid| !keep(pid))
            .collect();
        for pid in dropped {
            self.forget(pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn waits(last_ns: u64) -> Waits {
        vec![(
            7,
            BlockedWait {
                tgid: 7,
                last_ns,
                ..BlockedWait::default()
            },
        )]
    }

    #[test]
    fn quiet_while_nothing_it_rests_on_changes() {
        let mut quiet = QuietSeeds::default();
        let none = HashSet::new();
        let (pid, witness) = (Pid::from_raw(7), Pid::from_raw(9));
        assert!(!quiet.is_quiet(pid, &waits(1), &none), "never looked at");
        quiet.note(pid, waits(1), witness, SECOND);
        quiet.expire(2 * SECOND);
        assert!(quiet.is_quiet(pid, &waits(1), &none));
        assert!(!quiet.is_quiet(pid, &waits(2), &none), "a new record");
        assert!(
            !quiet.is_quiet(pid, &waits(1), &HashSet::from([witness])),
            "witness stuck"
        );
        quiet.expire(SECOND + 2 * MAX_AGE_NS);
        assert!(!quiet.is_quiet(pid, &waits(1), &none), "aged out");

        quiet.note(pid, waits(1), witness, SECOND);
        quiet.forget_processes(&HashSet::from([witness]));
        assert!(!quiet.is_quiet(pid, &waits(1), &none), "witness exited");
        quiet.note(pid, waits(1), pid, SECOND);
        assert!(
            !quiet.is_quiet(pid, &waits(1), &HashSet::from([pid])),
            "own new wait"
        );
        quiet.retain(|other| other != pid);
        assert!(!quiet.is_quiet(pid, &waits(1), &none), "no longer blocked");
        assert!(quiet.by_witness.is_empty() && quiet.due.is_empty());
    }

    #[test]
    fn findings_age_out_a_bounded_slice_at_a_time_oldest_first() {
        let mut quiet = QuietSeeds::default();
        let none = HashSet::new();
        let witness = Pid::from_raw(1);
        let pids: Vec<Pid> = (0..3 * MAX_EXPIRED as i32).map(Pid::from_raw).collect();
        // Found live far enough apart that age limits, spread by pid, keep their order.
        let seen = |pid: &Pid| u64::from(pid.as_raw().unsigned_abs() % 3) * 2 * MAX_AGE_NS;
        for pid in &pids {
            quiet.note(*pid, waits(1), witness, seen(pid));
        }
        quiet.expire(10 * MAX_AGE_NS);
        let (expired, left): (Vec<Pid>, Vec<Pid>) = pids
            .iter()
            .partition(|&&pid| !quiet.is_quiet(pid, &waits(1), &none));
        assert_eq!(expired.len(), MAX_EXPIRED, "one slice");
        assert!(
            expired.iter().map(seen).max() <= left.iter().map(seen).min(),
            "a newer finding went before an older one"
        );
    }
}
