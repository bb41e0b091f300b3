//! Who holds which pipe, and whose child each process is: an index of every process's
//! pipe fds and parent, kept across scans. Walking `/proc/*/fd` costs a `readlink` per
//! fd of the host; the index rereads a process only when it is new, when it exec'd, when
//! one of its threads began a new wait, or when its entry has aged out (spread over
//! time, so a host of quiet processes is reread bit by bit, never all in one scan).
//!
//! A process whose every thread is blocked cannot open or close anything, so the entries
//! that matter most, those of blocked processes, stay true for as long as they wait.
//! Where the index contradicts the kernel (a blocked writer with no reader left, a
//! blocked reader with no writer) it is stale, and the scan rebuilds it whole.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::age_limit;
use crate::{
    graph::PipeEnds,
    pid::Pid,
    procfs::{Access, ProcFs},
};

/// The oldest an entry gets (see [`age_limit`]).
const MAX_AGE_NS: u64 = 30_000_000_000;
/// Pipe fds kept in all (16 bytes each). Anyone can open hundreds of thousands: beyond
/// this, a process's fds are read again whenever a pipe is looked up, so the index stays
/// small whatever the host holds.
const MAX_KEPT_PIPES: usize = 1 << 20;

struct Entry {
    ppid: Pid,
    /// `None` when there was no room to keep them.
    pipes: Option<Vec<(u64, Access)>>,
    read_ns: u64,
}

#[derive(Default)]
pub struct HolderIndex {
    entries: HashMap<Pid, Entry>,
    /// Pipe fds in `entries`.
    kept: usize,
}

impl HolderIndex {
    /// Brings the index up to date: drops processes that are gone, reads those not seen
    /// before, those in `reread`, and those whose entry aged out (all of them if `all`),
    /// except those already read at `now_ns`, the scan's time.
    pub fn refresh(
        &mut self,
        procfs: &ProcFs,
        now_ns: u64,
        reread: &HashSet<Pid>,
        all: bool,
        errors: &mut BTreeMap<&'static str, u64>,
    ) {
        let Ok(pids) = procfs.pids() else {
            *errors.entry("io").or_default() += 1;
            return;
        };
        let present: HashSet<Pid> = pids.iter().copied().collect();
        self.retain(|pid| present.contains(&pid));
        for pid in pids {
            // Read in this very scan (`now_ns` is the scan's): as fresh as it gets.
            let current = self.entries.get(&pid).is_some_and(|entry| {
                entry.read_ns == now_ns
                    || (!all
                        && !reread.contains(&pid)
                        && now_ns.saturating_sub(entry.read_ns) < age_limit(pid, MAX_AGE_NS))
            });
            if current {
                continue;
            }
            self.remove(pid);
            let read = procfs
                .stat(pid, pid)
                .and_then(|stat| Ok((stat.ppid, pipe_fds(procfs, pid)?)));
            match read {
                Ok((ppid, fds)) => {
                    let room = self.kept + fds.len() <= MAX_KEPT_PIPES;
                    let pipes = room.then(|| {
                        self.kept += fds.len();
                        fds
                    });
                    self.entries.insert(
                        pid,
                        Entry {
                            ppid,
                            pipes,
                            read_ns: now_ns,
                        },
                    );
                }
                Err(error) => *errors.entry(error.reason()).or_default() += 1,
            }
        }
    }

    /// Processes that exec'd (their close-on-exec fds are gone) or exited.
    pub fn forget(&mut self, pids: &HashSet<Pid>) {
        self.retain(|pid| !pids.contains(&pid));
    }

    fn retain(&mut self, keep: impl Fn(Pid) -> bool) {
        let kept = &mut self.kept;
        self.entries.retain(|&pid, entry| {
            let keeping = keep(pid);
            if !keeping {
                *kept -= entry.pipes.as_ref().map_or(0, Vec::len);
            }
            keeping
        });
    }

    fn remove(&mut self, pid: Pid) {
        if let Some(entry) = self.entries.remove(&pid) {
            self.kept -= entry.pipes.as_ref().map_or(0, Vec::len);
        }
    }

    /// The holders of each of `pipes`.
    pub fn pipe_ends(
        &self,
        procfs: &ProcFs,
        pipes: &BTreeSet<u64>,
        errors: &mut BTreeMap<&'static str, u64>,
    ) -> BTreeMap<u64, PipeEnds> {
        let mut ends: BTreeMap<u64, PipeEnds> = BTreeMap::new();
        for (&pid, entry) in &self.entries {
            let read;
            let fds = match &entry.pipes {
                Some(kept) => kept,
                None => match pipe_fds(procfs, pid) {
                    Ok(fds) => {
                        read = fds;
                        &read
                    }
                    Err(error) => {
                        *errors.entry(error.reason()).or_default() += 1;
                        continue;
                    }
                },
            };
            for (pipe, access) in fds.iter().filter(|(pipe, _)| pipes.contains(pipe)) {
                let ends = ends.entry(*pipe).or_default();
                if matches!(access, Access::Read | Access::ReadWrite) {
                    ends.readers.insert(pid);
                }
                if matches!(access, Access::Write | Access::ReadWrite) {
                    ends.writers.insert(pid);
                }
            }
        }
        ends
    }

    /// The children of each of `parents`.
    pub fn children(&self, parents: &BTreeSet<Pid>) -> Vec<Pid> {
        self.entries
            .iter()
            .filter(|(_, entry)| parents.contains(&entry.ppid))
            .map(|(&pid, _)| pid)
            .collect()
    }
}

/// `pid`'s pipe fds as the index keeps them: (pipe inode, access).
fn pipe_fds(procfs: &ProcFs, pid: Pid) -> Result<Vec<(u64, Access)>, crate::procfs::Error> {
    Ok(procfs
        .pipe_fds(pid)?
        .into_iter()
        .map(|fd| (fd.pipe, fd.access))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, OwnedFd};

    use super::*;

    fn own_pipe() -> (OwnedFd, OwnedFd, u64) {
        let (read, write) = std::io::pipe().expect("a pipe");
        let read: OwnedFd = read.into();
        let write: OwnedFd = write.into();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", read.as_raw_fd()))
            .expect("the pipe's fd link");
        let inode = link
            .to_string_lossy()
            .trim_start_matches("pipe:[")
            .trim_end_matches(']')
            .parse()
            .expect("pipe:[inode]");
        (read, write, inode)
    }

    #[test]
    fn entries_are_reread_when_asked_not_every_time() {
        let procfs = ProcFs::default();
        let me = Pid::try_from(std::process::id()).expect("a pid");
        let (read, write, inode) = own_pipe();
        let (mut index, mut errors) = (HolderIndex::default(), BTreeMap::new());
        let none = HashSet::new();
        index.refresh(&procfs, 1, &none, false, &mut errors);
        let ends = index.pipe_ends(&procfs, &BTreeSet::from([inode]), &mut errors);
        assert!(ends[&inode].readers.contains(&me), "{ends:?}");
        assert!(ends[&inode].writers.contains(&me), "{ends:?}");
        assert!(index.children(&BTreeSet::from([me])).is_empty());

        drop(write);
        index.refresh(&procfs, 2, &none, false, &mut errors);
        let kept = index.pipe_ends(&procfs, &BTreeSet::from([inode]), &mut errors);
        assert!(
            kept[&inode].writers.contains(&me),
            "the entry was reread unasked"
        );
        index.refresh(&procfs, 3, &HashSet::from([me]), false, &mut errors);
        let reread = index.pipe_ends(&procfs, &BTreeSet::from([inode]), &mut errors);
        assert!(!reread[&inode].writers.contains(&me), "{reread:?}");
        assert!(reread[&inode].readers.contains(&me), "{reread:?}");

        // An entry past its age is reread without being asked for.
        drop(read);
        index.refresh(&procfs, 3 + 2 * MAX_AGE_NS, &none, false, &mut errors);
        let aged = index.pipe_ends(&procfs, &BTreeSet::from([inode]), &mut errors);
        assert!(
            aged.get(&inode).is_none_or(|e| e.readers.is_empty()),
            "{aged:?}"
        );
    }
}
