//! What `/proc` said about each recorded wait, kept while the kernel's record of it stays
//! the same. A thread that sleeps on in one wait leaves its record untouched (the probe
//! rewrites it only when the thread sleeps again, in the same wait after 100 ms or in
//! another one), so a host of idle threads costs one comparison per thread per scan
//! instead of two `/proc` reads.
//!
//! A kept verdict can only err one way: a thread that woke and now runs, or sleeps in a
//! wait the probe does not record, still looks stuck. That is why anything that would
//! become an incident is verified again without this cache (see `daemon::scanner`).
use std::collections::{HashMap, HashSet};

use exitwatch_common::BlockedWait;

use super::collect::Verified;

#[derive(Default)]
pub struct Verdicts {
    /// Per tid: the record as verified, and the verdict (`None`: not in that wait).
    by_tid: HashMap<u32, (BlockedWait, Option<Verified>)>,
}

impl Verdicts {
    /// The verdict on `entry`, if it is the record that was verified.
    pub fn get(&self, tid: u32, entry: &BlockedWait) -> Option<&Option<Verified>> {
        self.by_tid
            .get(&tid)
            .filter(|(verified, _)| verified == entry)
            .map(|(_, verdict)| verdict)
    }

    pub fn insert(&mut self, tid: u32, entry: BlockedWait, verdict: Option<Verified>) {
        self.by_tid.insert(tid, (entry, verdict));
    }

    pub fn forget(&mut self, tid: u32) {
        self.by_tid.remove(&tid);
    }

    /// Drops verdicts on records the kernel map no longer has.
    pub fn retain(&mut self, recorded: &HashSet<u32>) {
        self.by_tid.retain(|tid, _| recorded.contains(tid));
    }

    /// Drops every verdict on threads of these processes (they exec'd or exited).
    pub fn forget_processes(&mut self, pids: &HashSet<i32>) {
        self.by_tid
            .retain(|_, (entry, _)| !pids.contains(&(entry.tgid as i32)));
    }
}
