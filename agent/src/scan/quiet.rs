//! Blocked processes known to be live, and what keeps them so. A log shipper reading a
//! pipe from an idle writer is blocked for hours, and every scan would read it, resolve
//! the pipe's holders and find it live again. Once a scan finds it live because of one
//! releaser (the witness: a holder of the pipe's other end, or a child, or the process
//! itself through a thread that can run), later scans skip it while
//! - its own blocked waits are the same records,
//! - the witness began no new wait and did not exec or exit,
//! - and the finding is younger than its age limit (a witness can stop for good in a
//!   wait the probes do not record, `poll` for instance; the limit bounds how long that
//!   goes unseen). A witness already in such a wait, only younger than the threshold, is
//!   no witness at all: it turns stuck by itself, and the process is not skipped.
//!
//! A skipped process is still read whenever another one's wait leads to it.
use std::collections::{HashMap, HashSet};

use exitwatch_common::BlockedWait;

use super::age_limit;
use crate::pid::Pid;

/// The oldest a finding gets before the process is looked at again (see [`age_limit`]).
const MAX_AGE_NS: u64 = 60_000_000_000;

/// A process's blocked waits as the kernel recorded them: `(tid, record)`, by tid.
pub type Waits = Vec<(u32, BlockedWait)>;

struct Quiet {
    waits: Waits,
    witness: Pid,
    seen_ns: u64,
}

#[derive(Default)]
pub struct QuietSeeds {
    by_pid: HashMap<Pid, Quiet>,
}

impl QuietSeeds {
    /// Whether `pid`, blocked in `waits`, is still known live. `active` are the processes
    /// with a wait that got stuck since the last scan (a process kept live by a thread of
    /// its own is looked at again when another of its threads gets stuck).
    pub fn is_quiet(&self, pid: Pid, waits: &Waits, now_ns: u64, active: &HashSet<Pid>) -> bool {
        self.by_pid.get(&pid).is_some_and(|quiet| {
            quiet.waits == *waits
                && !active.contains(&quiet.witness)
                && now_ns.saturating_sub(quiet.seen_ns) < age_limit(pid, MAX_AGE_NS)
        })
    }

    pub fn note(&mut self, pid: Pid, waits: Waits, witness: Pid, now_ns: u64) {
        self.by_pid.insert(
            pid,
            Quiet {
                waits,
                witness,
                seen_ns: now_ns,
            },
        );
    }

    /// Forgets `pid`: it was not found live (or is part of a finding).
    pub fn forget(&mut self, pid: Pid) {
        self.by_pid.remove(&pid);
    }

    /// Forgets what depended on processes that exec'd or exited.
    pub fn forget_processes(&mut self, pids: &HashSet<Pid>) {
        self.by_pid
            .retain(|pid, quiet| !pids.contains(pid) && !pids.contains(&quiet.witness));
    }

    /// Forgets processes not blocked any more (or involved in a finding).
    pub fn retain(&mut self, keep: impl Fn(Pid) -> bool) {
        self.by_pid.retain(|&pid, _| keep(pid));
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
        assert!(
            !quiet.is_quiet(pid, &waits(1), SECOND, &none),
            "never looked at"
        );
        quiet.note(pid, waits(1), witness, SECOND);
        assert!(quiet.is_quiet(pid, &waits(1), 2 * SECOND, &none));
        assert!(
            !quiet.is_quiet(pid, &waits(2), 2 * SECOND, &none),
            "a new record"
        );
        assert!(
            !quiet.is_quiet(pid, &waits(1), 2 * SECOND, &HashSet::from([witness])),
            "witness stuck"
        );
        assert!(
            !quiet.is_quiet(pid, &waits(1), SECOND + 2 * MAX_AGE_NS, &none),
            "aged out"
        );

        quiet.forget_processes(&HashSet::from([witness]));
        assert!(
            !quiet.is_quiet(pid, &waits(1), 2 * SECOND, &none),
            "witness exited"
        );
        quiet.note(pid, waits(1), pid, SECOND);
        assert!(
            !quiet.is_quiet(pid, &waits(1), 2 * SECOND, &HashSet::from([pid])),
            "own new wait"
        );
        quiet.retain(|other| other != pid);
        assert!(
            !quiet.is_quiet(pid, &waits(1), 2 * SECOND, &none),
            "no longer blocked"
        );
    }
}
