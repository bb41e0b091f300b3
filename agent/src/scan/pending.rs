//! Recorded waits without a verdict yet: new or changed entries of the waits map, each
//! with the earliest time its current record can have begun. Scans look one up only once
//! it may be past the threshold (or about to be), so a thread that keeps changing its wait
//! costs a reschedule per scan, and one that sleeps on quietly costs nothing once judged.
use std::collections::{BTreeSet, HashMap};

/// Which due entries a walk takes first.
#[derive(Clone, Copy, Debug)]
pub enum Order {
    NewestFirst,
    OldestFirst,
}

#[derive(Default)]
pub struct Pending {
    by_since: BTreeSet<(u64, u32)>,
    since: HashMap<u32, u64>,
    /// The entries whose time is known exactly and that can make a finding by themselves
    /// (see [`Pending::next_wake`]).
    waking: BTreeSet<(u64, u32)>,
}

impl Pending {
    /// Thread `tid`'s record began no earlier than `since_ns`; `wakes` says that it began
    /// exactly then, in a wait worth a scan of its own once it is old.
    pub fn insert(&mut self, tid: u32, since_ns: u64, wakes: bool) {
        self.remove(tid);
        self.since.insert(tid, since_ns);
        self.by_since.insert((since_ns, tid));
        if wakes {
            self.waking.insert((since_ns, tid));
        }
    }

    pub fn remove(&mut self, tid: u32) {
        if let Some(old) = self.since.remove(&tid) {
            self.by_since.remove(&(old, tid));
            self.waking.remove(&(old, tid));
        }
    }

    /// When to wake the scanner, as the start of an entry: the earliest one at `from_ns`
    /// or later, or the last of those that begin within `together_ns` of it. The waits of
    /// one hang begin close together (a parent's `wait4`, its child's `write` once the
    /// child has started), and the scanner wakes once at most between two ticks: a scan
    /// at the first would leave the others to the next tick. Entries before `from_ns` are
    /// overdue (left for a later scan by the budget of a start-up backlog): they must not
    /// hide the next ones.
    pub fn next_wake(&self, from_ns: u64, together_ns: u64) -> Option<u64> {
        let &(first, _) = self.waking.range((from_ns, 0)..).next()?;
        let last = (first.saturating_add(together_ns), u32::MAX);
        let &(since_ns, _) = self.waking.range(..=last).next_back()?;
        Some(since_ns)
    }

    /// The next entry that began no later than `latest_ns`, after `after` (an earlier
    /// answer) in `order`, for walking the due entries while changing them.
    pub fn next_due(
        &self,
        latest_ns: u64,
        after: Option<(u64, u32)>,
        order: Order,
    ) -> Option<(u64, u32)> {
        use std::ops::Bound::{Excluded, Included};
        let last = (latest_ns, u32::MAX);
        match (order, after) {
            (Order::NewestFirst, None) => self.by_since.range(..=last).next_back(),
            (Order::NewestFirst, Some(after)) => self.by_since.range(..after).next_back(),
            (Order::OldestFirst, None) => self.by_since.range(..=last).next(),
            (Order::OldestFirst, Some(after)) => self
                .by_since
                .range((Excluded(after), Included(last)))
                .next(),
        }
        .copied()
    }

    pub fn len(&self) -> usize {
        self.since.len()
    }

    /// Entries that began no later than `latest_ns`: past the threshold when it is
    /// `now - threshold`, and left for later scans by the budget of a backlog.
    pub fn overdue(&self, latest_ns: u64) -> usize {
        self.by_since.range(..=(latest_ns, u32::MAX)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_newest_first_and_move_when_rescheduled() {
        let mut pending = Pending::default();
        pending.insert(1, 10, false);
        pending.insert(2, 30, true);
        pending.insert(3, 20, true);
        pending.insert(4, 50, false);
        assert_eq!(pending.next_wake(0, 0), Some(20));
        assert_eq!(pending.next_wake(0, 10), Some(30), "waits begun together");
        assert_eq!(pending.next_wake(0, 9), Some(20));
        assert_eq!(
            pending.next_wake(21, 0),
            Some(30),
            "overdue entries hide none"
        );
        assert_eq!(pending.overdue(25), 2);
        let first = pending.next_due(40, None, Order::NewestFirst);
        assert_eq!(first, Some((30, 2)));
        // Rescheduled past the bound while walking: not met again.
        pending.insert(2, 45, false);
        let second = pending.next_due(40, first, Order::NewestFirst);
        assert_eq!(second, Some((20, 3)));
        pending.remove(3);
        assert_eq!(pending.next_wake(0, 10), None);
        assert_eq!(
            pending.next_due(40, second, Order::NewestFirst),
            Some((10, 1))
        );
        assert_eq!(
            pending.next_due(40, Some((10, 1)), Order::NewestFirst),
            None
        );
        assert_eq!(pending.len(), 3);
    }

    #[test]
    fn an_oldest_first_walk_stops_at_the_bound() {
        let mut pending = Pending::default();
        for (tid, since) in [(1, 10), (2, 20), (3, 40), (4, 41)] {
            pending.insert(tid, since, false);
        }
        let mut walked = Vec::new();
        let mut cursor = None;
        while let Some(due) = pending.next_due(40, cursor, Order::OldestFirst) {
            walked.push(due);
            cursor = Some(due);
        }
        assert_eq!(walked, [(10, 1), (20, 2), (40, 3)]);
        assert_eq!(
            pending.next_due(40, Some((40, u32::MAX)), Order::OldestFirst),
            None
        );
    }
}
