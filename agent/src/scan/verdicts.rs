//! What `/proc` said about each recorded wait, kept until the kernel's record of it
//! changes. A thread that sleeps on in one wait leaves its record untouched (the probe
//! rewrites it only when the thread sleeps again, in the same wait after 100 ms or in
//! another one, and marks every rewrite), so a host of idle threads costs nothing per
//! scan once each wait is judged: scans touch only the verdicts whose records changed.
//!
//! A kept verdict can only err one way: a thread that woke and now runs, or sleeps in a
//! wait the probe does not record, still looks stuck. That is why anything that would
//! become an incident is verified again without this cache (see `daemon::scanner`).
use std::collections::{BTreeSet, HashMap, HashSet};

use exitwatch_common::BlockedWait;

use super::{collect::Verified, with_any_pid};
use crate::{graph::Wait, pid::Pid};

struct Kept {
    pid: Pid,
    record: BlockedWait,
    /// `None`: the thread was not in that wait.
    verdict: Option<Verified>,
}

impl Kept {
    /// Whether the wait makes its process worth a look by itself: untimed futex waits
    /// are how idle thread pools sleep, and count only while their process exits.
    fn seeds(&self) -> bool {
        self.verdict
            .as_ref()
            .is_some_and(|v| v.stuck && !matches!(v.wait, Wait::Futex { timed: false }))
    }
}

#[derive(Default)]
pub struct Verdicts {
    by_tid: HashMap<Pid, Kept>,
    /// (pid, tid) of every verdict.
    by_pid: BTreeSet<(Pid, Pid)>,
    /// (pid, tid) of stuck waits that are not untimed futex waits.
    seeding: BTreeSet<(Pid, Pid)>,
    /// Processes whose seeding waits changed since the last
    /// [`Verdicts::take_seeding_changed`].
    seeding_changed: BTreeSet<Pid>,
    /// Verdicts dropped since the last [`Verdicts::take_dropped`].
    dropped: bool,
}

impl Verdicts {
    /// Whether `record` was verified stuck before (and so is nothing new).
    pub fn known_stuck(&self, tid: Pid, record: &BlockedWait) -> bool {
        self.by_tid.get(&tid).is_some_and(|kept| {
            kept.record == *record && kept.verdict.as_ref().is_some_and(|v| v.stuck)
        })
    }

    /// Keeps `verdict` on `record`, replacing any verdict on the thread's earlier record.
    pub fn insert(
        &mut self,
        (pid, tid): (Pid, Pid),
        record: BlockedWait,
        verdict: Option<Verified>,
    ) {
        self.remove(tid);
        let key = (pid, tid);
        let kept = Kept {
            pid,
            record,
            verdict,
        };
        if kept.seeds() {
            self.seeding.insert(key);
            self.seeding_changed.insert(pid);
        }
        self.by_pid.insert(key);
        self.by_tid.insert(tid, kept);
    }

    /// Drops the verdict on thread `tid`; returns its record.
    pub fn forget(&mut self, tid: Pid) -> Option<BlockedWait> {
        let record = self.remove(tid)?;
        self.dropped = true;
        Some(record)
    }

    fn remove(&mut self, tid: Pid) -> Option<BlockedWait> {
        let kept = self.by_tid.remove(&tid)?;
        let key = (kept.pid, tid);
        self.by_pid.remove(&key);
        if self.seeding.remove(&key) {
            self.seeding_changed.insert(kept.pid);
        }
        Some(kept.record)
    }

    /// Drops every verdict on threads of these processes (they exec'd or exited), and
    /// returns their records.
    pub fn forget_processes(&mut self, pids: &HashSet<Pid>) -> Vec<(Pid, BlockedWait)> {
        let mut forgotten = Vec::new();
        for &pid in pids {
            for tid in self.tids(pid).collect::<Vec<_>>() {
                forgotten.extend(self.forget(tid).map(|record| (tid, record)));
            }
        }
        forgotten
    }

    /// Keeps only the verdicts whose record is still `current` (the whole map, read
    /// anew, by kernel thread id); returns how many were dropped.
    pub fn retain_current(&mut self, current: &HashMap<u32, BlockedWait>) -> usize {
        let stale: Vec<Pid> = self
            .by_tid
            .iter()
            .filter(|(tid, kept)| {
                u32::try_from(**tid).map_or(true, |key| current.get(&key) != Some(&kept.record))
            })
            .map(|(tid, _)| *tid)
            .collect();
        for tid in &stale {
            self.forget(*tid);
        }
        stale.len()
    }

    pub fn contains(&self, tid: Pid) -> bool {
        self.by_tid.contains_key(&tid)
    }

    /// Threads of `pid` with a verdict.
    pub fn tids(&self, pid: Pid) -> impl Iterator<Item = Pid> + '_ {
        self.by_pid.range(with_any_pid(pid)).map(|(_, tid)| *tid)
    }

    /// Thread `tid` in its recorded wait: (pid, tid, record, verdict).
    pub fn entry(&self, tid: Pid) -> Option<(Pid, Pid, &BlockedWait, &Verified)> {
        let kept = self.by_tid.get(&tid)?;
        let verified = kept.verdict.as_ref()?;
        Some((kept.pid, tid, &kept.record, verified))
    }

    /// `pid`'s stuck waits that make it worth a look by itself (see [`Kept::seeds`]), as
    /// [`Verdicts::entry`].
    pub fn seeding_of(
        &self,
        pid: Pid,
    ) -> impl Iterator<Item = (Pid, Pid, &BlockedWait, &Verified)> {
        (self.seeding.range(with_any_pid(pid))).filter_map(|&(_, tid)| self.entry(tid))
    }

    /// Processes with seeding waits (see [`Kept::seeds`]).
    pub fn seeding_pids(&self) -> impl Iterator<Item = Pid> + '_ {
        let mut last = None;
        (self.seeding.iter())
            .map(|&(pid, _)| pid)
            .filter(move |&pid| last.replace(pid) != Some(pid))
    }

    /// Processes whose seeding waits changed since the last call: the only ones whose
    /// answer to "worth a look by itself?" may have changed.
    pub fn take_seeding_changed(&mut self) -> BTreeSet<Pid> {
        std::mem::take(&mut self.seeding_changed)
    }

    /// The waits of `pid`'s threads, as [`Verdicts::entry`].
    pub fn of_process(
        &self,
        pid: Pid,
    ) -> impl Iterator<Item = (Pid, Pid, &BlockedWait, &Verified)> {
        self.tids(pid).filter_map(|tid| self.entry(tid))
    }

    /// Thread `tid` of `pid`, if it is in its recorded wait.
    pub fn get(&self, pid: Pid, tid: Pid) -> Option<&Verified> {
        let kept = self.by_tid.get(&tid)?;
        (kept.pid == pid).then_some(kept.verdict.as_ref()).flatten()
    }

    /// Whether any verdict was dropped since the last call.
    pub fn take_dropped(&mut self) -> bool {
        std::mem::take(&mut self.dropped)
    }

    pub fn len(&self) -> usize {
        self.by_tid.len()
    }
}
