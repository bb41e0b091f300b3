//! When exec'd processes get their uprobe discovery looks: one soon after the exec, for
//! the executable, and one once the dynamic loader has surely mapped its libraries
//! (settled). Both delays are fixed, so each queue is in exec order and in due order at
//! once: a queue per look, not a timer (or a task) per exec.
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::pid::Pid;

/// From the exec to the first look.
pub const FIRST_LOOK: Duration = Duration::from_millis(20);
/// From the exec to the settled look.
pub const SETTLED_LOOK: Duration = Duration::from_millis(300);
/// Looks waiting, both queues together; beyond this, execs are dropped (and counted)
/// rather than queued without bound.
pub const MAX_PENDING: usize = 4096;

/// Pids with the time of their exec, per look.
#[derive(Default)]
pub struct Schedule {
    first: VecDeque<(Instant, Pid)>,
    settled: VecDeque<(Instant, Pid)>,
}

impl Schedule {
    /// Queues the first look of `pid`, exec'd at `at`; false if it does not fit.
    pub fn exec(&mut self, pid: Pid, at: Instant) -> bool {
        self.push(Look::First, pid, at)
    }

    /// Queues the settled look of `pid`, exec'd at `at`; false if it does not fit.
    pub fn settle(&mut self, pid: Pid, at: Instant) -> bool {
        self.push(Look::Settled, pid, at)
    }

    /// When the next look is due.
    pub fn next_due(&self) -> Option<Instant> {
        let first = self.first.front().map(|(at, _)| *at + FIRST_LOOK);
        let settled = self.settled.front().map(|(at, _)| *at + SETTLED_LOOK);
        first.into_iter().chain(settled).min()
    }

    /// A look due by `now`: the pid, whether it is the settled look, and its exec time.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Pid, bool, Instant)> {
        for (queue, delay, settled) in [
            (&mut self.first, FIRST_LOOK, false),
            (&mut self.settled, SETTLED_LOOK, true),
        ] {
            if queue.front().is_some_and(|(at, _)| *at + delay <= now) {
                return queue.pop_front().map(|(at, pid)| (pid, settled, at));
            }
        }
        None
    }

    fn push(&mut self, look: Look, pid: Pid, at: Instant) -> bool {
        if self.first.len() + self.settled.len() >= MAX_PENDING {
            return false;
        }
        match look {
            Look::First => &mut self.first,
            Look::Settled => &mut self.settled,
        }
        .push_back((at, pid));
        true
    }
}

enum Look {
    First,
    Settled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_come_due_in_order_after_their_delays() {
        let start = Instant::now();
        let mut schedule = Schedule::default();
        assert!(schedule.exec(Pid::from_raw(1), start));
        assert!(schedule.exec(Pid::from_raw(2), start + Duration::from_millis(5)));
        assert_eq!(schedule.next_due(), Some(start + FIRST_LOOK));
        assert_eq!(schedule.pop_due(start), None);
        let now = start + FIRST_LOOK;
        assert_eq!(
            schedule.pop_due(now),
            Some((Pid::from_raw(1), false, start))
        );
        assert_eq!(schedule.pop_due(now), None);
        assert!(schedule.settle(Pid::from_raw(1), start));
        let later = start + SETTLED_LOOK;
        assert_eq!(
            schedule
                .pop_due(later)
                .map(|(pid, settled, _)| (pid, settled)),
            Some((Pid::from_raw(2), false))
        );
        assert_eq!(
            schedule.pop_due(later),
            Some((Pid::from_raw(1), true, start))
        );
        assert_eq!(schedule.next_due(), None);
    }

    #[test]
    fn the_queues_are_bounded_together() {
        let now = Instant::now();
        let mut schedule = Schedule::default();
        for pid in 0..MAX_PENDING / 2 {
            assert!(schedule.exec(Pid::from_raw(pid as i32 + 1), now));
            assert!(schedule.settle(Pid::from_raw(pid as i32 + 1), now));
        }
        assert!(!schedule.exec(Pid::from_raw(1), now));
        assert!(!schedule.settle(Pid::from_raw(1), now));
    }
}
