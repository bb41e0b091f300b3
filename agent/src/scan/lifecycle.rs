//! Processes that exec'd or exited since the last scan, from the probes' events: what
//! scans learnt about them (pipe holders, verdicts, who keeps whom live) no longer holds.
use std::collections::HashSet;

use crate::pid::Pid;

/// Beyond this many between two scans, the journal gives up on names and says "all".
const CAPACITY: usize = 65_536;

#[derive(Default)]
pub struct Lifecycle {
    pids: HashSet<Pid>,
    overflowed: bool,
    /// The kernel's count of events the ring buffer had no room for, as last seen.
    dropped: u64,
}

/// What changed since the last scan.
pub enum Changed {
    Some(HashSet<Pid>),
    /// More than the journal holds, or events were lost: forget everything.
    All,
}

impl Lifecycle {
    pub fn changed(&mut self, pid: Pid) {
        if self.pids.len() < CAPACITY {
            self.pids.insert(pid);
        } else {
            self.overflowed = true;
        }
    }

    /// `dropped` is the kernel's running count of events the ring buffer had no room
    /// for: which processes those named is unknown.
    pub fn dropped(&mut self, dropped: u64) {
        if dropped != self.dropped {
            self.dropped = dropped;
            self.overflowed = true;
        }
    }

    pub fn take(&mut self) -> Changed {
        let pids = std::mem::take(&mut self.pids);
        if std::mem::take(&mut self.overflowed) {
            Changed::All
        } else {
            Changed::Some(pids)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(changed: Changed) -> Option<Vec<Pid>> {
        match changed {
            Changed::Some(pids) => {
                let mut pids: Vec<Pid> = pids.into_iter().collect();
                pids.sort_unstable();
                Some(pids)
            }
            Changed::All => None,
        }
    }

    #[test]
    fn names_changes_until_it_cannot() {
        let mut journal = Lifecycle::default();
        journal.changed(Pid::from_raw(5));
        journal.changed(Pid::from_raw(3));
        journal.dropped(0);
        assert_eq!(
            names(journal.take()),
            Some(vec![Pid::from_raw(3), Pid::from_raw(5)])
        );
        assert_eq!(names(journal.take()), Some(vec![]));
        journal.dropped(2);
        assert_eq!(names(journal.take()), None, "events were lost");
        journal.dropped(2);
        assert_eq!(names(journal.take()), Some(vec![]), "no new losses");
        for pid in 0..=CAPACITY as i32 {
            journal.changed(Pid::from_raw(pid));
        }
        assert_eq!(names(journal.take()), None, "more than the journal holds");
    }
}
