//! The map of recorded waits (`BLOCKED`, one entry per thread that slept in a tracked
//! wait) as scans see it: which entries changed since the last scan ([`ChangedIds`]), and
//! point lookups of those a scan needs. The whole map is read only when the changes
//! cannot be trusted: at start-up, when the probes could not mark a change (a thread id
//! beyond the marks), when the scans' own state was reset, and rarely as a safety net.
use std::time::Duration;

use aya::maps::{HashMap, MapData};
use exitwatch_common::BlockedWait;

use super::{batch, changed::ChangedIds};
use crate::scan::WaitChanges;

/// The safety net: the whole map is read this often even when nothing says it must be.
const RESYNC_EVERY: Duration = Duration::from_secs(300);

/// Why the whole map was read.
pub const RESYNC_REASONS: [&str; 4] = ["start", "lost_changes", "scan_reset", "periodic"];

pub struct Waits {
    map: HashMap<MapData, u32, BlockedWait>,
    changed: ChangedIds,
    /// The probes' count of changes they could not mark, as last seen.
    lost: u64,
    /// When the marks were last taken (on the monotonic clock); `None` before the first.
    taken_ns: Option<u64>,
    resynced_ns: u64,
}

impl Waits {
    pub(super) fn new(map: HashMap<MapData, u32, BlockedWait>, changed: ChangedIds) -> Self {
        Self {
            map,
            changed,
            lost: 0,
            taken_ns: None,
            resynced_ns: 0,
        }
    }

    /// What changed since the last call, read at `now_ns`. `lost` is the probes' running
    /// count of changes they could not mark; `reset` says the scans forgot what they
    /// knew. Returns which of [`RESYNC_REASONS`] made it read the whole map, if any.
    pub fn changes(
        &mut self,
        now_ns: u64,
        lost: u64,
        reset: bool,
    ) -> (WaitChanges, Option<&'static str>) {
        let [start, lost_changes, scan_reset, periodic] = RESYNC_REASONS;
        let reason = match self.taken_ns {
            None => Some(start),
            Some(_) if lost != self.lost => Some(lost_changes),
            Some(_) if reset => Some(scan_reset),
            Some(_)
                if now_ns.saturating_sub(self.resynced_ns) >= RESYNC_EVERY.as_nanos() as u64 =>
            {
                Some(periodic)
            }
            Some(_) => None,
        };
        self.lost = lost;
        let since_ns = self.taken_ns.replace(now_ns);
        let mut tids = Vec::new();
        self.changed.take(&mut tids);
        let changes = match (reason, since_ns) {
            (None, Some(since_ns)) => WaitChanges::Tids { tids, since_ns },
            _ => {
                // Read after the marks were taken: a change made during the read is
                // marked again and comes with the next scan.
                self.resynced_ns = now_ns;
                WaitChanges::All(self.read_all())
            }
        };
        (changes, reason)
    }

    fn read_all(&self) -> Vec<(u32, BlockedWait)> {
        // Every supported kernel has the batch call (5.6+); should it fail anyway
        // (ENOMEM), the entry-by-entry walk still works.
        batch::lookup_all(&self.map).unwrap_or_else(|error| {
            log::debug!("reading the waits map entry by entry: {error}");
            self.map.iter().filter_map(Result::ok).collect()
        })
    }

    /// The current entry of thread `tid`.
    pub fn get(&self, tid: u32) -> Option<BlockedWait> {
        self.map.get(&tid, 0).ok()
    }

    /// Drops the entries of threads that are gone.
    pub fn forget(&mut self, tids: &[u32]) {
        for tid in tids {
            let _ = self.map.remove(tid);
        }
    }

    /// Adds waits found in `/proc` that began before the probes were attached, without
    /// replacing anything the kernel recorded since; the first call to [`Waits::changes`]
    /// reads them with the rest.
    pub fn seed(&mut self, found: &[(u32, BlockedWait)]) -> usize {
        const BPF_NOEXIST: u64 = 1;
        found
            .iter()
            .filter(|(tid, wait)| self.map.insert(tid, wait, BPF_NOEXIST).is_ok())
            .count()
    }
}
