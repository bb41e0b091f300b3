//! Exit phases that no probe marks, found on the stacks of stuck threads: a sign (a
//! return address into libc's `exit`, asyncio's executor shutdown on the Python stack)
//! searched for once per wait, in a bounded number of waits per scan, newest first: at
//! start-up on a big host every idle thread is new, and a fresh hang must not wait
//! behind them. Waits are offered as they are found stuck, so a scan looks at those
//! offered, not at every kept verdict.
use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Bound,
    time::{Duration, Instant},
};

use exitwatch_common::ExitState;

use super::{collect::Verified, verdicts::Verdicts};
use crate::{pid::Pid, procfs::ProcFs};

/// What the stacks are searched for.
pub trait Sign {
    /// The `exitwatch_common::exit_reason` bit of a process whose stack shows the sign.
    const REASON: u32;
    /// Stacks searched per scan at most (and for [`SEARCHING_PER_SCAN`] at most).
    const MAX_SEARCHES: usize;

    /// Whether thread `tid` of `pid`, stuck as `thread` says, is worth a search: decided
    /// without reading anything.
    fn candidate(&self, pid: Pid, tid: Pid, thread: &Verified) -> bool;

    /// Whether the thread's stack shows the sign; `None` when a read failed or timed out
    /// (no verdict: a later scan looks again).
    fn search(&mut self, procfs: &ProcFs, pid: Pid, tid: Pid, thread: &Verified) -> Option<bool>;
}

/// Time one sign's searches may take per scan: a search is one read of a process's maps
/// when they show the sign cannot be there (most of a host's idle threads), a stack
/// read and walk when they do. Checked between searches, so one walk can end past it
/// (each has a deadline of its own).
const SEARCHING_PER_SCAN: Duration = Duration::from_millis(5);

#[derive(Default)]
pub struct Search<S> {
    pub sign: S,
    /// The first sleep of the wait each searched thread was searched in.
    searched: BTreeMap<(Pid, Pid), u64>,
    /// The same for the threads whose stack showed the sign: kept apart, so a scan walks
    /// these few and not every idle thread ever searched.
    inside: BTreeMap<(Pid, Pid), u64>,
    /// Threads offered and not searched yet: (latest sleep of the wait, pid, tid).
    offered: BTreeSet<(u64, Pid, Pid)>,
    /// Offered threads older than the last one searched when the budget ran out.
    left: usize,
}

impl<S: Sign> Search<S> {
    /// Thread `tid` of `pid` was found stuck in a wait whose latest sleep was at
    /// `since_ns`: a later [`Search::find`] searches it if it is a candidate then.
    pub fn offer(&mut self, pid: Pid, tid: Pid, since_ns: u64) {
        self.offered.insert((since_ns, pid, tid));
    }

    /// Threads offered that the last call's budget left unsearched.
    pub fn backlog(&self) -> usize {
        self.left
    }

    /// Marks in `exiting` the processes not marked yet whose stuck threads show the sign,
    /// each from the wait of the thread that shows it; returns those found in this scan.
    /// `dropped` says that some verdicts were dropped since the last call.
    pub fn find(
        &mut self,
        procfs: &ProcFs,
        verdicts: &Verdicts,
        exiting: &mut BTreeMap<Pid, ExitState>,
        dropped: bool,
    ) -> Vec<Pid> {
        if dropped {
            // Threads no longer waiting.
            let waiting = |&(pid, tid): &(Pid, Pid), _: &mut u64| verdicts.get(pid, tid).is_some();
            self.searched.retain(waiting);
            self.inside.retain(waiting);
        }
        let mut found = Vec::new();
        let (mut searches, mut cursor) = (0, None);
        let (started, mut drained) = (Instant::now(), false);
        while searches < S::MAX_SEARCHES && started.elapsed() < SEARCHING_PER_SCAN {
            let upper = cursor.map_or(Bound::Unbounded, Bound::Excluded);
            let Some(&key) = self.offered.range((Bound::Unbounded, upper)).next_back() else {
                drained = true;
                break;
            };
            cursor = Some(key);
            let (since_ns, pid, tid) = key;
            let waiting = verdicts
                .entry(tid)
                .filter(|&(of, _, _, thread)| of == pid && thread.since_ns == since_ns);
            let Some((_, _, record, thread)) = waiting else {
                self.offered.remove(&key);
                continue;
            };
            let searched = self.searched.get(&(pid, tid)) == Some(&record.first_ns);
            if searched || exiting.contains_key(&pid) || !self.sign.candidate(pid, tid, thread) {
                self.offered.remove(&key);
                continue;
            }
            searches += 1;
            // A failed read is no verdict: the thread stays offered.
            if let Some(verdict) = self.sign.search(procfs, pid, tid, thread) {
                self.offered.remove(&key);
                self.searched.insert((pid, tid), record.first_ns);
                if verdict {
                    self.inside.insert((pid, tid), record.first_ns);
                    found.push(pid);
                } else {
                    self.inside.remove(&(pid, tid));
                }
            }
        }
        self.left = match cursor {
            Some(last) if !drained => self.offered.range(..last).count(),
            _ => 0,
        };
        let inside: Vec<(Pid, Pid, u64)> = self
            .inside
            .iter()
            .filter_map(|(&(pid, tid), &first_ns)| {
                let (of, _, record, thread) = verdicts.entry(tid)?;
                (of == pid && record.first_ns == first_ns && thread.stuck).then_some((
                    pid,
                    tid,
                    thread.since_ns,
                ))
            })
            .collect();
        for (pid, tid, since_ns) in inside {
            let Ok(exit_tid) = u32::try_from(tid) else {
                continue;
            };
            exiting.entry(pid).or_insert(ExitState {
                since_ns,
                reasons: S::REASON,
                exit_tid,
                ..ExitState::default()
            });
        }
        found.sort_unstable();
        found.dedup();
        found
    }
}

#[cfg(test)]
mod tests {
    use exitwatch_common::BlockedWait;

    use super::*;
    use crate::graph::Wait;

    /// Answers from a script: `Some(true)` for the threads in `shows`, `None` (a failed
    /// read) for those in `fails`, else `Some(false)`; records every search.
    #[derive(Default)]
    struct Scripted {
        shows: Vec<Pid>,
        fails: Vec<Pid>,
        searched: Vec<Pid>,
    }

    impl Sign for Scripted {
        const REASON: u32 = 1 << 30;
        const MAX_SEARCHES: usize = 2;

        fn candidate(&self, _: Pid, _: Pid, thread: &Verified) -> bool {
            thread.stuck
        }

        fn search(&mut self, _: &ProcFs, _: Pid, tid: Pid, _: &Verified) -> Option<bool> {
            self.searched.push(tid);
            (!self.fails.contains(&tid)).then(|| self.shows.contains(&tid))
        }
    }

    /// One scan's verdicts: threads (pid, tid, first sleep) stuck in a futex wait, each
    /// offered to `search` as the scan would.
    fn scan(search: &mut Search<Scripted>, verdicts: &mut Verdicts, threads: &[(i32, i32, u64)]) {
        for &(pid, tid, first_ns) in threads {
            let record = BlockedWait {
                tgid: pid as u32,
                first_ns,
                last_ns: first_ns,
                ..BlockedWait::default()
            };
            let thread = Verified::stuck_in(Wait::Futex { timed: false }, first_ns, 0);
            let ids = (Pid::from_raw(pid), Pid::from_raw(tid));
            verdicts.insert(ids, record, Some(thread));
            search.offer(ids.0, ids.1, first_ns);
        }
    }

    #[test]
    fn each_wait_is_searched_once_newest_first_a_few_per_scan() {
        let mut search = Search::<Scripted>::default();
        search.sign.shows = vec![Pid::from_raw(11)];
        let mut verdicts = Verdicts::default();
        let threads = [(10, 10, 1), (10, 11, 2), (20, 20, 3), (30, 30, 4)];
        let (mut found, mut marked, mut left) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            scan(&mut search, &mut verdicts, &threads);
            let mut exiting = BTreeMap::new();
            found.push(search.find(&ProcFs::default(), &verdicts, &mut exiting, false));
            marked.push(exiting.get(&Pid::from_raw(10)).map(|e| e.exit_tid));
            left.push(search.backlog());
        }
        assert_eq!(search.sign.searched, [30, 20, 11, 10]);
        // Two left after the first scan's two searches; none once all were searched.
        assert_eq!(left, [2, 0, 0]);
        // Found once; marked from then on, by the thread that shows the sign.
        assert_eq!(found, [vec![], vec![10], vec![]]);
        assert_eq!(marked, [None, Some(11), Some(11)]);
        // A new wait of a thread is searched again.
        scan(&mut search, &mut verdicts, &[(30, 30, 5)]);
        search.find(&ProcFs::default(), &verdicts, &mut BTreeMap::new(), true);
        assert_eq!(search.sign.searched, [30, 20, 11, 10, 30]);
    }

    #[test]
    fn a_failed_search_is_tried_again_and_a_found_one_marks_its_process() {
        let mut search = Search::<Scripted>::default();
        search.sign.fails = vec![Pid::from_raw(40)];
        let mut verdicts = Verdicts::default();
        scan(&mut search, &mut verdicts, &[(40, 40, 7)]);
        let mut exiting = BTreeMap::new();
        for _ in 0..2 {
            assert!(search
                .find(&ProcFs::default(), &verdicts, &mut exiting, false)
                .is_empty());
        }
        assert_eq!(search.sign.searched, [40, 40]);
        search.sign.fails.clear();
        search.sign.shows = vec![Pid::from_raw(40)];
        assert_eq!(
            search.find(&ProcFs::default(), &verdicts, &mut exiting, false),
            [40]
        );
        assert_eq!(
            exiting.get(&Pid::from_raw(40)),
            Some(&ExitState {
                since_ns: 7,
                reasons: Scripted::REASON,
                exit_tid: 40,
                ..ExitState::default()
            })
        );
        // Already exiting: not a candidate any more.
        search.find(&ProcFs::default(), &verdicts, &mut exiting, false);
        assert_eq!(search.sign.searched, [40, 40, 40]);
    }
}
