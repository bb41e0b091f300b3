//! What `/proc` said about each recorded wait, kept while the kernel's record of it stays
//! the same. A thread that sleeps on in one wait leaves its record untouched (the probe
//! rewrites it only when the thread sleeps again, in the same wait after 100 ms or in
//! another one), so a host of idle threads costs one comparison per thread per scan
//! instead of two `/proc` reads, and nothing is copied for it.
//!
//! A kept verdict can only err one way: a thread that woke and now runs, or sleeps in a
//! wait the probe does not record, still looks stuck. That is why anything that would
//! become an incident is verified again without this cache (see `daemon::scanner`).
use std::collections::{HashMap, HashSet};

use exitwatch_common::BlockedWait;

use super::collect::Verified;
use crate::pid::Pid;

struct Kept {
    pid: Pid,
    record: BlockedWait,
    /// `None`: the thread was not in that wait.
    verdict: Option<Verified>,
    /// Whether later scans may use it without `/proc` (a record of an exiting process
    /// that is younger than the threshold may still change under it).
    trusted: bool,
    /// The scan that last found this record in the kernel map.
    scan: u64,
}

#[derive(Default)]
pub struct Verdicts {
    by_tid: HashMap<Pid, Kept>,
    scan: u64,
}

impl Verdicts {
    pub fn begin_scan(&mut self) {
        self.scan += 1;
    }

    /// Whether a trusted verdict on `record` is kept; if so it counts for this scan.
    pub fn confirm(&mut self, tid: Pid, record: &BlockedWait) -> bool {
        match self.by_tid.get_mut(&tid) {
            Some(kept) if kept.trusted && kept.record == *record => {
                kept.scan = self.scan;
                true
            }
            _ => false,
        }
    }

    /// Whether `record` was verified stuck before (and so is nothing new).
    pub fn known_stuck(&self, tid: Pid, record: &BlockedWait) -> bool {
        self.by_tid.get(&tid).is_some_and(|kept| {
            kept.record == *record && kept.verdict.as_ref().is_some_and(|v| v.stuck)
        })
    }

    pub fn insert(
        &mut self,
        (pid, tid): (Pid, Pid),
        record: BlockedWait,
        verdict: Option<Verified>,
        trusted: bool,
    ) {
        let scan = self.scan;
        self.by_tid.insert(
            tid,
            Kept {
                pid,
                record,
                verdict,
                trusted,
                scan,
            },
        );
    }

    pub fn forget(&mut self, tid: Pid) {
        self.by_tid.remove(&tid);
    }

    /// Drops verdicts on records this scan did not find (or did not get to verify).
    pub fn end_scan(&mut self) {
        let scan = self.scan;
        self.by_tid.retain(|_, kept| kept.scan == scan);
    }

    /// Drops every verdict on threads of these processes (they exec'd or exited).
    pub fn forget_processes(&mut self, pids: &HashSet<Pid>) {
        self.by_tid.retain(|_, kept| !pids.contains(&kept.pid));
    }

    /// This scan's threads in their recorded waits: (pid, tid, record, verdict).
    pub fn current(&self) -> impl Iterator<Item = (Pid, Pid, &BlockedWait, &Verified)> {
        self.by_tid.iter().filter_map(|(&tid, kept)| {
            let verified = kept.verdict.as_ref().filter(|_| kept.scan == self.scan)?;
            Some((kept.pid, tid, &kept.record, verified))
        })
    }

    /// Thread `tid` of `pid`, if this scan found it in its recorded wait.
    pub fn get(&self, pid: Pid, tid: Pid) -> Option<&Verified> {
        let kept = self.by_tid.get(&tid)?;
        (kept.scan == self.scan && kept.pid == pid)
            .then_some(kept.verdict.as_ref())
            .flatten()
    }
}
