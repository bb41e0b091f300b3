//! Who holds which pipe, and whose child each process is: an index of every process's
//! pipe fds and parent, kept across scans. Walking `/proc/*/fd` costs a `readlink` per
//! fd of the host; the index rereads a process only when it is new, when the lifecycle
//! journal names it (it exec'd or exited), when one of its threads began a new wait, or
//! when its entry has aged out. Aged entries are reread oldest first, a bounded number
//! per scan, so a host of quiet processes is reread bit by bit, never all in one scan.
//! `/proc` is listed only now and then, for the processes the journal cannot name
//! (forked without exec), when the index contradicts the kernel, and whenever the whole
//! index is rebuilt.
//!
//! Lookups go through reverse indexes (pipe to holders, parent to children) kept with
//! the entries, so a lookup costs what it returns, not the number of processes.
//!
//! A process whose every thread is blocked cannot open or close anything, so the entries
//! that matter most, those of blocked processes, stay true for as long as they wait.
//! Where the index contradicts the kernel (a blocked writer with no reader left, a
//! blocked reader with no writer) it is stale: the scan lists `/proc` and reads what is
//! new, and rebuilds the index whole only if that does not settle it.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{age_limit, with_any_pid};
use crate::{
    graph::PipeEnds,
    pid::Pid,
    procfs::{Access, ProcFs},
};

/// The oldest an entry gets (see [`age_limit`]), while no more than
/// [`MAX_AGED_READS`] age out together.
const MAX_AGE_NS: u64 = 30_000_000_000;
/// Aged entries reread per refresh. This bounds the index's steady cost per scan
/// whatever the host's size: a host's processes all read in one scan (at start, or after
/// a rebuild) age out over many scans, and on a host of more than 16 × 30 s worth of
/// processes an entry waits longer than its age for its turn (4,000 processes: about
/// four minutes at one scan a second).
const MAX_AGED_READS: usize = 16;
/// How often `/proc` is listed for processes that no event names (forked without exec).
/// Until then such a process is in the index only once it blocks; a new finding is
/// confirmed against a full rebuild anyway (see `Fresh::Confirm`).
const LIST_EVERY_NS: u64 = 30_000_000_000;
/// Processes named by the journal and not read yet, at most: beyond this, `/proc` is
/// listed instead.
const MAX_UNREAD: usize = 65_536;
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

impl Entry {
    fn due_ns(&self, pid: Pid) -> u64 {
        self.read_ns.saturating_add(age_limit(pid, MAX_AGE_NS))
    }
}

#[derive(Default)]
pub struct HolderIndex {
    entries: HashMap<Pid, Entry>,
    /// Pipe fds in `entries`.
    kept: usize,
    /// (pipe, holder) of every kept fd open for reading, and for writing.
    readers: BTreeSet<(u64, Pid)>,
    writers: BTreeSet<(u64, Pid)>,
    /// (parent, child) of every entry.
    children: BTreeSet<(Pid, Pid)>,
    /// Entries whose pipes were not kept: their fds are read on every lookup.
    unkept: BTreeSet<Pid>,
    /// (when it ages out, pid) of every entry.
    due: BTreeSet<(u64, Pid)>,
    /// Processes to read at the next refresh if they still exist: named by the journal,
    /// or found by listing `/proc`.
    unread: HashSet<Pid>,
    /// When `/proc` was last listed.
    listed_ns: Option<u64>,
}

impl HolderIndex {
    /// Brings the index up to date: lists `/proc` if it is time (or `all`), reads the
    /// processes it does not hold yet and those in `reread`, and the oldest of those whose
    /// entry aged out (every entry if `all`), except those already read at `now_ns`, the
    /// scan's time.
    pub fn refresh(
        &mut self,
        procfs: &ProcFs,
        now_ns: u64,
        reread: &HashSet<Pid>,
        all: bool,
        errors: &mut BTreeMap<&'static str, u64>,
    ) {
        let list_due = self
            .listed_ns
            .is_none_or(|listed| now_ns.saturating_sub(listed) >= LIST_EVERY_NS);
        if all || list_due {
            self.list(procfs, now_ns, errors);
        }
        let mut wanted: Vec<Pid> = std::mem::take(&mut self.unread).into_iter().collect();
        wanted.extend(reread);
        if all {
            wanted.extend(self.entries.keys());
        } else {
            wanted.extend(
                self.due
                    .iter()
                    .take_while(|(due_ns, _)| *due_ns <= now_ns)
                    .take(MAX_AGED_READS)
                    .map(|&(_, pid)| pid),
            );
        }
        self.read_unless_done(procfs, wanted, now_ns, errors);
    }

    /// Lists `/proc` now and reads what it names that the index does not hold: the
    /// processes forked without exec since the last listing, which no event names. A
    /// scan that finds the index contradicting the kernel tries this before reading every
    /// process again: a pipe made and handed to such a child, the common cause, costs a
    /// directory listing instead of a read of every process's fds. Returns false, having
    /// done nothing, when `/proc` was already listed at `now_ns`, the scan's time.
    pub fn relist(
        &mut self,
        procfs: &ProcFs,
        now_ns: u64,
        errors: &mut BTreeMap<&'static str, u64>,
    ) -> bool {
        if self.listed_ns == Some(now_ns) {
            return false;
        }
        self.list(procfs, now_ns, errors);
        let unread = std::mem::take(&mut self.unread);
        self.read_unless_done(procfs, unread, now_ns, errors);
        true
    }

    /// Reads each of `pids` anew, except those already read at `now_ns`, the scan's time.
    fn read_unless_done(
        &mut self,
        procfs: &ProcFs,
        pids: impl IntoIterator<Item = Pid>,
        now_ns: u64,
        errors: &mut BTreeMap<&'static str, u64>,
    ) {
        for pid in pids {
            if self.entries.get(&pid).is_none_or(|e| e.read_ns != now_ns) {
                self.read(procfs, pid, now_ns, errors);
            }
        }
    }

    /// Drops the processes `/proc` no longer lists, and notes those it does not hold.
    fn list(&mut self, procfs: &ProcFs, now_ns: u64, errors: &mut BTreeMap<&'static str, u64>) {
        let Ok(pids) = procfs.pids() else {
            *errors.entry("io").or_default() += 1;
            return;
        };
        let present: HashSet<Pid> = pids.iter().copied().collect();
        self.retain(|pid| present.contains(&pid));
        self.unread.retain(|pid| present.contains(pid));
        let new: Vec<Pid> = pids
            .into_iter()
            .filter(|pid| !self.entries.contains_key(pid))
            .collect();
        self.unread.extend(new);
        self.listed_ns = Some(now_ns);
    }

    /// Reads `pid` anew. One that is gone just leaves the index: the journal or a listing
    /// named it, and it exited since.
    fn read(
        &mut self,
        procfs: &ProcFs,
        pid: Pid,
        now_ns: u64,
        errors: &mut BTreeMap<&'static str, u64>,
    ) {
        self.remove(pid);
        let read = procfs
            .stat(pid, pid)
            .and_then(|stat| Ok((stat.ppid, pipe_fds(procfs, pid)?)));
        match read {
            Ok((ppid, fds)) => self.insert(pid, ppid, fds, now_ns),
            Err(error) if error.is_gone() => {}
            Err(error) => *errors.entry(error.reason()).or_default() += 1,
        }
    }

    fn insert(&mut self, pid: Pid, ppid: Pid, fds: Vec<(u64, Access)>, now_ns: u64) {
        let pipes = if self.kept + fds.len() <= MAX_KEPT_PIPES {
            self.kept += fds.len();
            for &(pipe, access) in &fds {
                if reads(access) {
                    self.readers.insert((pipe, pid));
                }
                if writes(access) {
                    self.writers.insert((pipe, pid));
                }
            }
            Some(fds)
        } else {
            self.unkept.insert(pid);
            None
        };
        let entry = Entry {
            ppid,
            pipes,
            read_ns: now_ns,
        };
        self.children.insert((ppid, pid));
        self.due.insert((entry.due_ns(pid), pid));
        self.entries.insert(pid, entry);
    }

    /// Processes that exec'd (their close-on-exec fds are gone) or exited: read again at
    /// the next refresh if they are still there.
    pub fn forget(&mut self, pids: &HashSet<Pid>) {
        for &pid in pids {
            self.remove(pid);
        }
        if self.unread.len() + pids.len() > MAX_UNREAD {
            // Too many to name: the next refresh lists `/proc` instead.
            self.unread.clear();
            self.listed_ns = None;
        } else {
            self.unread.extend(pids);
        }
    }

    fn retain(&mut self, keep: impl Fn(Pid) -> bool) {
        let dropped: Vec<Pid> = self
            .entries
            .keys()
            .copied()
            .filter(|&pid| !keep(pid))
            .collect();
        for pid in dropped {
            self.remove(pid);
        }
    }

    fn remove(&mut self, pid: Pid) {
        let Some(entry) = self.entries.remove(&pid) else {
            return;
        };
        self.children.remove(&(entry.ppid, pid));
        self.due.remove(&(entry.due_ns(pid), pid));
        match &entry.pipes {
            Some(pipes) => {
                self.kept -= pipes.len();
                for &(pipe, _) in pipes {
                    self.readers.remove(&(pipe, pid));
                    self.writers.remove(&(pipe, pid));
                }
            }
            None => {
                self.unkept.remove(&pid);
            }
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
        for &pipe in pipes {
            let readers = self.readers.range(with_any_pid(pipe)).map(|&(_, pid)| pid);
            let writers = self.writers.range(with_any_pid(pipe)).map(|&(_, pid)| pid);
            let (readers, writers): (BTreeSet<Pid>, BTreeSet<Pid>) =
                (readers.collect(), writers.collect());
            if !readers.is_empty() || !writers.is_empty() {
                ends.insert(pipe, PipeEnds { readers, writers });
            }
        }
        for &pid in &self.unkept {
            match pipe_fds(procfs, pid) {
                Ok(fds) => add_holder(&mut ends, pid, &fds, pipes),
                Err(error) => *errors.entry(error.reason()).or_default() += 1,
            }
        }
        ends
    }

    /// The children of each of `parents`.
    pub fn children(&self, parents: &BTreeSet<Pid>) -> Vec<Pid> {
        parents
            .iter()
            .flat_map(|&parent| self.children.range(with_any_pid(parent)))
            .map(|&(_, pid)| pid)
            .collect()
    }
}

/// Adds `pid`, holding `fds`, to the ends of those of `pipes` it holds.
fn add_holder(
    ends: &mut BTreeMap<u64, PipeEnds>,
    pid: Pid,
    fds: &[(u64, Access)],
    pipes: &BTreeSet<u64>,
) {
    for (pipe, access) in fds.iter().filter(|(pipe, _)| pipes.contains(pipe)) {
        let ends = ends.entry(*pipe).or_default();
        if reads(*access) {
            ends.readers.insert(pid);
        }
        if writes(*access) {
            ends.writers.insert(pid);
        }
    }
}

fn reads(access: Access) -> bool {
    matches!(access, Access::Read | Access::ReadWrite)
}

fn writes(access: Access) -> bool {
    matches!(access, Access::Write | Access::ReadWrite)
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

    /// The index's answers must be those of a walk over every entry.
    fn assert_agrees_with_walk(index: &HolderIndex, procfs: &ProcFs) {
        let kept = |entry: &Entry| entry.pipes.clone().expect("room for this test's pipes");
        let pipes: BTreeSet<u64> = (index.entries.values())
            .flat_map(|entry| kept(entry).into_iter().map(|(pipe, _)| pipe))
            .collect();
        let mut walked: BTreeMap<u64, PipeEnds> = BTreeMap::new();
        for (&pid, entry) in &index.entries {
            add_holder(&mut walked, pid, &kept(entry), &pipes);
        }
        let mut errors = BTreeMap::new();
        let looked_up = index.pipe_ends(procfs, &pipes, &mut errors);
        assert_eq!(looked_up, walked, "pipe holders");
        let parents: BTreeSet<Pid> = index.entries.values().map(|e| e.ppid).collect();
        for parent in parents {
            let mut children = index.children(&BTreeSet::from([parent]));
            children.sort_unstable();
            let mut walked: Vec<Pid> = index
                .entries
                .iter()
                .filter(|(_, e)| e.ppid == parent)
                .map(|(&pid, _)| pid)
                .collect();
            walked.sort_unstable();
            assert_eq!(children, walked, "children of {parent}");
        }
        let kept: usize = index
            .entries
            .values()
            .flat_map(|e| &e.pipes)
            .map(Vec::len)
            .sum();
        assert_eq!(index.kept, kept, "kept pipe fds");
        assert_eq!(index.due.len(), index.entries.len(), "due times");
    }

    /// A child of this process that reads one pipe and writes another.
    fn child_on_pipes() -> (std::process::Child, u64, u64) {
        let (stdin, _, input) = own_pipe();
        let (_, stdout, output) = own_pipe();
        let child = std::process::Command::new("sleep")
            .arg("60")
            .stdin(std::process::Stdio::from(stdin))
            .stdout(std::process::Stdio::from(stdout))
            .spawn()
            .expect("sleep runs");
        (child, input, output)
    }

    #[test]
    fn reverse_indexes_agree_with_a_walk() {
        let procfs = ProcFs::default();
        let me = Pid::try_from(std::process::id()).expect("a pid");
        let (mut index, mut errors) = (HolderIndex::default(), BTreeMap::new());
        let mut children: Vec<_> = (0..3).map(|_| child_on_pipes()).collect();
        let pid_of =
            |child: &std::process::Child| Pid::try_from(child.id()).expect("a child's pid");
        let none = HashSet::new();
        index.refresh(&procfs, 1, &none, false, &mut errors);
        assert_agrees_with_walk(&index, &procfs);
        let mine = index.children(&BTreeSet::from([me]));
        for (child, input, output) in &children {
            let pid = pid_of(child);
            assert!(mine.contains(&pid), "{mine:?} lacks {pid}");
            let ends = index.pipe_ends(&procfs, &BTreeSet::from([*input, *output]), &mut errors);
            assert!(ends[input].readers.contains(&pid), "{ends:?}");
            assert!(ends[output].writers.contains(&pid), "{ends:?}");
        }

        // One exec'd (as far as the journal says) and another exited.
        let (mut exited, ..) = children.pop().expect("three children");
        exited.kill().expect("kill a child");
        exited.wait().expect("reap a child");
        let named = HashSet::from([pid_of(&exited), pid_of(&children[0].0)]);
        index.forget(&named);
        assert_agrees_with_walk(&index, &procfs);
        assert!(!index.entries.contains_key(&pid_of(&exited)));
        index.refresh(&procfs, 2, &none, false, &mut errors);
        assert_agrees_with_walk(&index, &procfs);
        assert!(!index.entries.contains_key(&pid_of(&exited)), "gone");
        assert!(
            index.entries.contains_key(&pid_of(&children[0].0)),
            "read again"
        );

        // Aged entries are reread, and a rebuild rereads all.
        index.refresh(&procfs, 3 + 2 * MAX_AGE_NS, &none, false, &mut errors);
        assert_agrees_with_walk(&index, &procfs);
        index.refresh(&procfs, 4 + 2 * MAX_AGE_NS, &none, true, &mut errors);
        assert_agrees_with_walk(&index, &procfs);
        assert!(index
            .entries
            .values()
            .all(|e| e.read_ns == 4 + 2 * MAX_AGE_NS));
        for (mut child, ..) in children {
            child.kill().expect("kill a child");
            child.wait().expect("reap a child");
        }
    }

    #[test]
    fn a_relisting_reads_the_processes_no_event_named_and_nothing_else() {
        let procfs = ProcFs::default();
        let me = Pid::try_from(std::process::id()).expect("a pid");
        let (mut index, mut errors) = (HolderIndex::default(), BTreeMap::new());
        let none = HashSet::new();
        index.refresh(&procfs, 1, &none, false, &mut errors);
        // Started after the listing, and named by no event: unknown until the next one.
        let (mut child, input, _) = child_on_pipes();
        let pid = Pid::try_from(child.id()).expect("a child's pid");
        index.refresh(&procfs, 2, &none, false, &mut errors);
        let ends = index.pipe_ends(&procfs, &BTreeSet::from([input]), &mut errors);
        assert!(
            ends.get(&input).is_none_or(|e| !e.readers.contains(&pid)),
            "{ends:?}"
        );

        assert!(index.relist(&procfs, 3, &mut errors), "not listed at 3 yet");
        assert!(!index.relist(&procfs, 3, &mut errors), "listed twice at 3");
        let ends = index.pipe_ends(&procfs, &BTreeSet::from([input]), &mut errors);
        assert!(ends[&input].readers.contains(&pid), "{ends:?}");
        assert_eq!(
            index.entries[&me].read_ns, 1,
            "a known process was read again"
        );
        assert_agrees_with_walk(&index, &procfs);
        child.kill().expect("kill the child");
        child.wait().expect("reap the child");
    }

    #[test]
    fn aged_entries_are_reread_a_bounded_slice_at_a_time_oldest_first() {
        let procfs = ProcFs::default();
        let (mut index, mut errors) = (HolderIndex::default(), BTreeMap::new());
        let later = 10 * MAX_AGE_NS;
        // Listed just now: the refresh reads nothing but aged entries.
        index.listed_ns = Some(later);
        // Processes that no longer exist (ids above any pid_max), read long ago: a reread
        // drops them.
        // Read far enough apart that age limits, spread by pid, keep their order.
        let read_at = |i: i32| 1 + u64::from(i.unsigned_abs() % 3) * 2 * MAX_AGE_NS;
        let pids: Vec<i32> = (0..3 * MAX_AGED_READS as i32).collect();
        for &i in &pids {
            index.insert(
                Pid::from_raw(i32::MAX - i),
                Pid::from_raw(1),
                Vec::new(),
                read_at(i),
            );
        }
        index.refresh(&procfs, later, &HashSet::new(), false, &mut errors);
        let (reread, left): (Vec<i32>, Vec<i32>) = pids
            .iter()
            .partition(|&&i| !index.entries.contains_key(&Pid::from_raw(i32::MAX - i)));
        assert_eq!(reread.len(), MAX_AGED_READS, "one slice");
        let newest_reread = reread.iter().map(|&i| read_at(i)).max();
        let oldest_left = left.iter().map(|&i| read_at(i)).min();
        assert!(
            newest_reread <= oldest_left,
            "a newer entry went before an older one"
        );
        assert!(errors.is_empty(), "{errors:?}");
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

        // An entry past its age is reread without being asked for, within as many scans
        // as the host's aged entries take.
        drop(read);
        for scan in 0..=index.entries.len() / MAX_AGED_READS {
            let now_ns = 3 + 2 * MAX_AGE_NS + scan as u64;
            index.refresh(&procfs, now_ns, &none, false, &mut errors);
        }
        let aged = index.pipe_ends(&procfs, &BTreeSet::from([inode]), &mut errors);
        assert!(
            aged.get(&inode).is_none_or(|e| e.readers.is_empty()),
            "{aged:?}"
        );
    }
}
