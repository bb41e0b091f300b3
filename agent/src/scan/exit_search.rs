//! Exit phases that no probe marks, found on the stacks of stuck threads: a sign (a
//! return address into libc's `exit`, asyncio's executor shutdown on the Python stack)
//! searched for once per wait, in a bounded number of waits per scan, newest first: at
//! start-up on a big host every idle thread is new, and a fresh hang must not wait
//! behind them.
use std::collections::BTreeMap;

use exitwatch_common::ExitState;

use super::{collect::Verified, verdicts::Verdicts};
use crate::{pid::Pid, procfs::ProcFs};

/// What the stacks are searched for.
pub trait Sign {
    /// The `exitwatch_common::exit_reason` bit of a process whose stack shows the sign.
    const REASON: u32;
    /// Stacks searched per scan at most.
    const MAX_SEARCHES: usize;

    /// Whether thread `tid` of `pid`, stuck as `thread` says, is worth a search: decided
    /// without reading anything.
    fn candidate(&self, pid: Pid, tid: Pid, thread: &Verified) -> bool;

    /// Whether the thread's stack shows the sign; `None` when a read failed or timed out
    /// (no verdict: a later scan looks again).
    fn search(&mut self, procfs: &ProcFs, pid: Pid, tid: Pid, thread: &Verified) -> Option<bool>;
}

#[derive(Default)]
pub struct Search<S> {
    pub sign: S,
    /// Verdicts per waiting thread, with the first sleep of the wait they hold for.
    verdicts: BTreeMap<(Pid, Pid), (u64, bool)>,
}

impl<S: Sign> Search<S> {
    /// Marks in `exiting` the processes not marked yet whose stuck threads show the sign,
    /// each from the wait of the thread that shows it; returns those found in this scan.
    pub fn find(
        &mut self,
        procfs: &ProcFs,
        verdicts: &Verdicts,
        exiting: &mut BTreeMap<Pid, ExitState>,
    ) -> Vec<Pid> {
        let mut unknown = Vec::new();
        let mut inside = Vec::new();
        for (pid, tid, record, thread) in verdicts.current() {
            if exiting.contains_key(&pid) || !self.sign.candidate(pid, tid, thread) {
                continue;
            }
            let remembered = self.verdicts.get(&(pid, tid));
            match remembered.filter(|(first_ns, _)| *first_ns == record.first_ns) {
                Some((_, true)) => inside.push((pid, tid, thread.since_ns)),
                Some((_, false)) => {}
                None => unknown.push((pid, tid, record.first_ns, thread)),
            }
        }
        unknown.sort_unstable_by_key(|(.., thread)| std::cmp::Reverse(thread.since_ns));
        let mut found = Vec::new();
        for (pid, tid, first_ns, thread) in unknown.into_iter().take(S::MAX_SEARCHES) {
            let Some(verdict) = self.sign.search(procfs, pid, tid, thread) else {
                continue;
            };
            self.verdicts.insert((pid, tid), (first_ns, verdict));
            if verdict {
                inside.push((pid, tid, thread.since_ns));
                found.push(pid);
            }
        }
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
        // Threads no longer waiting.
        self.verdicts
            .retain(|&(pid, tid), _| verdicts.get(pid, tid).is_some());
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

    /// One scan's verdicts: threads (pid, tid, first sleep) stuck in a futex wait.
    fn scan(verdicts: &mut Verdicts, threads: &[(i32, i32, u64)]) {
        verdicts.begin_scan();
        for &(pid, tid, first_ns) in threads {
            let record = BlockedWait {
                tgid: pid as u32,
                first_ns,
                last_ns: first_ns,
                ..BlockedWait::default()
            };
            let thread = Verified::stuck_in(Wait::Futex { timed: false }, first_ns, 0);
            let ids = (Pid::from_raw(pid), Pid::from_raw(tid));
            verdicts.insert(ids, record, Some(thread), true);
        }
        verdicts.end_scan();
    }

    #[test]
    fn each_wait_is_searched_once_newest_first_a_few_per_scan() {
        let mut search = Search::<Scripted>::default();
        search.sign.shows = vec![Pid::from_raw(11)];
        let mut verdicts = Verdicts::default();
        let threads = [(10, 10, 1), (10, 11, 2), (20, 20, 3), (30, 30, 4)];
        let (mut found, mut marked) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            scan(&mut verdicts, &threads);
            let mut exiting = BTreeMap::new();
            found.push(search.find(&ProcFs::default(), &verdicts, &mut exiting));
            marked.push(exiting.get(&Pid::from_raw(10)).map(|e| e.exit_tid));
        }
        assert_eq!(search.sign.searched, [30, 20, 11, 10]);
        // Found once; marked from then on, by the thread that shows the sign.
        assert_eq!(found, [vec![], vec![10], vec![]]);
        assert_eq!(marked, [None, Some(11), Some(11)]);
        // A new wait of a thread is searched again.
        scan(&mut verdicts, &[(30, 30, 5)]);
        search.find(&ProcFs::default(), &verdicts, &mut BTreeMap::new());
        assert_eq!(search.sign.searched, [30, 20, 11, 10, 30]);
    }

    #[test]
    fn a_failed_search_is_tried_again_and_a_found_one_marks_its_process() {
        let mut search = Search::<Scripted>::default();
        search.sign.fails = vec![Pid::from_raw(40)];
        let mut verdicts = Verdicts::default();
        scan(&mut verdicts, &[(40, 40, 7)]);
        let mut exiting = BTreeMap::new();
        for _ in 0..2 {
            assert!(search
                .find(&ProcFs::default(), &verdicts, &mut exiting)
                .is_empty());
        }
        assert_eq!(search.sign.searched, [40, 40]);
        search.sign.fails.clear();
        search.sign.shows = vec![Pid::from_raw(40)];
        assert_eq!(
            search.find(&ProcFs::default(), &verdicts, &mut exiting),
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
        search.find(&ProcFs::default(), &verdicts, &mut exiting);
        assert_eq!(search.sign.searched, [40, 40, 40]);
    }
}
