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
//! readers, all found live in one scan, are looked at again over several scans. Processes
//! not known live are kept as "loud": a scan looks at those, at the ones whose waits
//! changed and at the ones whose witness did, never at every blocked process.
//!
//! A skipped process is still read whenever another one's wait leads to it.
use std::collections::{BTreeSet, HashMap, HashSet};

use exitwatch_common::BlockedWait;

use super::{age_limit, with_any_pid};
use crate::pid::Pid;

/// The age at which a finding is looked at again (see [`age_limit`]), while no more than
/// [`MAX_EXPIRED`] age out together.
const MAX_AGE_NS: u64 = 60_000_000_000;
/// Findings that age out per scan, at most: this bounds what idle readers cost per scan
/// whatever their number (1,000 of them are each looked at again about every two
/// minutes at one scan a second).
const MAX_EXPIRED: usize = 8;

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
    /// Blocked processes looked at for their own waits and not known live: looked at
    /// again every scan until one finds them live or they are no longer blocked.
    loud: BTreeSet<Pid>,
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

    /// The processes to look at again whatever changed (see [`QuietSeeds::loud`]).
    pub fn loud(&self) -> impl Iterator<Item = Pid> + '_ {
        self.loud.iter().copied()
    }

    /// The processes known live because of one of `witnesses`.
    pub fn witnessed_by<'a>(
        &'a self,
        witnesses: impl IntoIterator<Item = &'a Pid> + 'a,
    ) -> impl Iterator<Item = Pid> + 'a {
        (witnesses.into_iter())
            .flat_map(|&witness| self.by_witness.range(with_any_pid(witness)))
            .map(|&(_, pid)| pid)
    }

    pub fn note(&mut self, pid: Pid, waits: Waits, witness: Pid, now_ns: u64) {
        self.remove(pid);
        self.loud.remove(&pid);
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

    /// Forgets what kept `pid` live (it was not found live, is part of a finding, or what
    /// it rested on changed): it is looked at until found live again.
    pub fn forget(&mut self, pid: Pid) {
        self.remove(pid);
        self.loud.insert(pid);
    }

    /// `pid` is no longer blocked in a wait that makes it worth a look by itself.
    pub fn not_blocked(&mut self, pid: Pid) {
        self.remove(pid);
        self.loud.remove(&pid);
    }

    fn remove(&mut self, pid: Pid) {
        if let Some(quiet) = self.by_pid.remove(&pid) {
            self.by_witness.remove(&(quiet.witness, pid));
            self.due.remove(&(quiet.due_ns, pid));
        }
    }

    /// Forgets what depended on processes that exec'd or exited.
    pub fn forget_processes(&mut self, pids: &HashSet<Pid>) {
        for &pid in pids {
            self.forget(pid);
            let witnessed: Vec<Pid> = self.witnessed_by([&pid]).collect();
            for quiet in witnessed {
                self.forget(quiet);
            }
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
        quiet.forget(pid);
        let loud: Vec<Pid> = quiet.loud().collect();
        assert_eq!(loud, [pid, witness], "looked at until found live");
        quiet.note(pid, waits(1), witness, SECOND);
        assert_eq!(quiet.witnessed_by(&[witness]).collect::<Vec<_>>(), [pid]);
        quiet.not_blocked(pid);
        quiet.not_blocked(witness);
        assert!(!quiet.is_quiet(pid, &waits(1), &none), "no longer blocked");
        assert!(quiet.by_witness.is_empty() && quiet.due.is_empty());
        assert_eq!(quiet.loud().count(), 0);
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
