//! One scan: candidates from the kernel maps, verified and completed from `/proc`.
//!
//! What earlier scans learnt is kept in [`ScanState`], so that a scan's cost follows what
//! changed (new waits, new candidates, incidents) rather than the number of threads that
//! sleep quietly: verdicts on unchanged records ([`Verdicts`]), the records not judged yet
//! ([`Pending`]), the pipe holders of every process ([`HolderIndex`]), and blocked
//! processes known to be live ([`QuietSeeds`]). The kernel says which records changed
//! ([`WaitChanges`]); a scan looks up only those it must judge.
//! [`Fresh`] names the processes read anew regardless: those of open incidents and of
//! new findings, which `/proc` confirms before anything is reported.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use exitwatch_common::{nr, same_wait, BlockedWait, ExitState};

use super::{
    asyncio_stack::AsyncioShutdown,
    cmdline::shown,
    exit_search::{Search, Sign},
    exit_stack::{LibcExit, PyFinalize},
    holders::HolderIndex,
    lifecycle::Changed,
    pending::{Order, Pending},
    quiet::{QuietSeeds, Waits},
    verdicts::Verdicts,
    wait::{decode, decode_poll},
};
use crate::{
    graph::{ChildTarget, ExitPhase, PipeEnds, Process, Snapshot, Thread, Wait},
    pid::Pid,
    procfs::{ProcFs, SchedClock, Syscall},
};

/// Chains of pollers through pipes are short; this bounds the passes over `/proc`.
const MAX_RELEASER_ROUNDS: usize = 3;
/// Records verified for the first time per scan. At start-up on a big host every idle
/// thread is new: 20,000 of them take 80 scans, each short, instead of ten long ones
/// (see `verify_all` for the order they are taken in).
const MAX_NEW_VERDICTS: usize = 256;
/// Holders of one end of a pipe read in full. An end held by more (an output pipe that
/// every worker of a supervisor inherited) is read only up to the first holder that can
/// run: that one keeps whatever waits on the pipe live, and the analysis counts holders
/// not read as able to run. No orphan holds such a pipe (`graph::orphan` needs every
/// writer read), and a deadlock over it has every holder read, all of them stuck.
const MAX_HOLDERS_READ: usize = 64;

/// What scans learn and later scans reuse.
#[derive(Default)]
pub struct ScanState {
    verdicts: Verdicts,
    pending: Pending,
    /// Waits past the threshold the last scan's budget left (see [`Backlog`]).
    waits_left: usize,
    holders: HolderIndex,
    quiet: QuietSeeds,
    libc_exits: Search<LibcExit>,
    py_finalizes: Search<PyFinalize>,
    asyncio_exits: Search<AsyncioShutdown>,
}

/// See [`ScanState::backlog`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Recorded waits past the threshold that the last scan's budget left unchecked in
    /// `/proc` (a read that failed and is tried again is not counted).
    pub waits: usize,
    /// Stuck threads whose stacks the last scan's budget left unsearched for an exit
    /// phase (nor is a failed search).
    pub stack_searches: usize,
}

/// What changed in the kernel's map of recorded waits since the last scan.
pub enum WaitChanges {
    /// The threads whose records were written or removed, all after `since_ns`.
    Tids { tids: Vec<u32>, since_ns: u64 },
    /// The whole map, read anew.
    All(Vec<(u32, BlockedWait)>),
}

impl ScanState {
    /// Records that changed have no verdict any more: they are judged again once they
    /// may be past the threshold. Returns how many kept verdicts a whole map read found
    /// stale (those whose change was not marked, or marked during the read).
    pub fn waits_changed(&mut self, changes: WaitChanges) -> usize {
        match changes {
            WaitChanges::Tids { tids, since_ns } => {
                for key in tids {
                    if let Ok(tid) = Pid::try_from(key) {
                        self.verdicts.forget(tid);
                    }
                    self.pending.insert(key, since_ns, false);
                }
                0
            }
            WaitChanges::All(records) => {
                let current: HashMap<u32, BlockedWait> = records.into_iter().collect();
                let stale = self.verdicts.retain_current(&current);
                self.pending = Pending::default();
                for (&key, record) in &current {
                    if !Pid::try_from(key).is_ok_and(|tid| self.verdicts.contains(tid)) {
                        self.pending.insert(key, record.last_ns, wakes(record));
                    }
                }
                stale
            }
        }
    }

    /// The records of the judged threads of `pids`.
    pub fn records(&self, pids: &BTreeSet<Pid>) -> Vec<(u32, BlockedWait)> {
        pids.iter()
            .flat_map(|&pid| self.verdicts.of_process(pid))
            .filter_map(|(_, tid, record, _)| Some((u32::try_from(tid).ok()?, *record)))
            .collect()
    }

    /// When the next wait that can make a finding by itself turns `hang_after_ns` old
    /// after `now_ns`, if its time is known; waits that turn old within `together_ns`
    /// of it are waited for (see [`Pending::next_wake`]).
    pub fn next_wake(&self, hang_after_ns: u64, now_ns: u64, together_ns: u64) -> Option<u64> {
        let from = (now_ns + 1).saturating_sub(hang_after_ns);
        Some(self.pending.next_wake(from, together_ns)? + hang_after_ns)
    }

    /// Waits judged, and waits not judged yet.
    pub fn sizes(&self) -> (usize, usize) {
        (self.verdicts.len(), self.pending.len())
    }

    /// Work that per-scan budgets left for later scans: at start-up on a big host, every
    /// idle wait turns old at once and is checked over many scans.
    pub fn backlog(&self) -> Backlog {
        Backlog {
            waits: self.waits_left,
            stack_searches: self.libc_exits.backlog()
                + self.py_finalizes.backlog()
                + self.asyncio_exits.backlog(),
        }
    }

    /// Processes that exec'd or exited: nothing learnt about them holds any more.
    pub fn forget_processes(&mut self, changed: Changed) {
        match changed {
            Changed::Some(pids) => {
                // Their records may stay as they are (an exec'd thread's): judge them anew.
                let forgotten = self.verdicts.forget_processes(&pids);
                for (key, record) in forgotten
                    .into_iter()
                    .filter_map(|(tid, record)| Some((u32::try_from(tid).ok()?, record)))
                {
                    self.pending.insert(key, record.last_ns, wakes(&record));
                }
                self.holders.forget(&pids);
                self.quiet.forget_processes(&pids);
                self.asyncio_exits.sign.forget(&pids);
            }
            Changed::All => {
                // What was read of module files stays true.
                let libc_exits = std::mem::take(&mut self.libc_exits);
                let py_finalizes = std::mem::take(&mut self.py_finalizes);
                *self = ScanState {
                    libc_exits,
                    py_finalizes,
                    ..ScanState::default()
                };
            }
        }
    }

    /// After a scan's analysis: remembers the scan's blocked processes that were found
    /// live, with the process that keeps each one live (`live_by`), and forgets those
    /// that are part of a finding (`involved`).
    pub fn note_live(
        &mut self,
        scan: &Scan,
        live_by: &BTreeMap<Pid, Pid>,
        involved: &BTreeSet<Pid>,
        now_ns: u64,
    ) {
        // A witness live only because its poll is younger than the threshold is no
        // witness for long: it turns stuck by itself, with no event that would wake the
        // process it keeps live (polls are not recorded), so that one is looked at again.
        let polling = |pid: Pid| {
            scan.snapshot.processes.get(&pid).is_some_and(|process| {
                process
                    .threads
                    .iter()
                    .any(|t| !t.stuck && matches!(t.wait, Some(Wait::PollRead { .. })))
            })
        };
        for (pid, waits) in &scan.seed_waits {
            match live_by.get(pid) {
                Some(&witness) if !involved.contains(pid) && !polling(witness) => {
                    self.quiet.note(*pid, waits.clone(), witness, now_ns)
                }
                _ => self.quiet.forget(*pid),
            }
        }
    }
}

/// Processes read from `/proc` without trusting what earlier scans learnt of them.
#[derive(Clone, Copy)]
pub enum Fresh<'a> {
    /// Everything: `exitwatch explain`, which has no earlier scans.
    All,
    /// The waits of these (open incidents: that is how they end). Their pipe holders
    /// cannot have changed while they all stay blocked.
    Only(&'a BTreeSet<Pid>),
    /// As `Only`, and every process's pipe holders and parent when a wait of theirs is
    /// released by pipe holders or children: a new finding must not rest on an index
    /// entry that misses a live holder.
    Confirm(&'a BTreeSet<Pid>),
}

impl Fresh<'_> {
    fn contains(&self, pid: Pid) -> bool {
        match self {
            Fresh::All => true,
            Fresh::Only(pids) | Fresh::Confirm(pids) => pids.contains(&pid),
        }
    }

    fn confirms(&self) -> bool {
        matches!(self, Fresh::All | Fresh::Confirm(_))
    }
}

/// What the kernel probes recorded.
pub struct KernelView<'a> {
    /// The current record of a thread's wait, looked up in the probes' map.
    pub waits: &'a dyn Fn(u32) -> Option<BlockedWait>,
    pub exiting: Vec<(u32, ExitState)>,
}

pub struct Scan {
    pub snapshot: Snapshot,
    /// Map entries of threads and processes that no longer exist.
    pub gone_tids: Vec<u32>,
    pub gone_pids: Vec<u32>,
    /// Processes newly found in an exit phase by their stacks, with the
    /// `exitwatch_common::exit_reason` bit that says which.
    pub exits_found: Vec<(Pid, u32)>,
    /// Processes in an exit phase found on their stacks, in this scan or earlier ones.
    pub stack_exits: usize,
    /// Failed `/proc` reads, by [`crate::procfs::Error::reason`].
    pub errors: BTreeMap<&'static str, u64>,
    /// Processes that were wanted but could not be read, with why.
    pub unreadable: BTreeMap<Pid, crate::procfs::Error>,
    /// The blocked processes this scan looked at because of their own waits, with those
    /// waits: the ones [`ScanState::note_live`] may let later scans skip.
    pub seed_waits: BTreeMap<Pid, Waits>,
}

/// A thread verified to be in the wait its map entry describes.
#[derive(Clone, Debug)]
pub struct Verified {
    pub(super) wait: Wait,
    pub(super) since_ns: u64,
    pub stuck: bool,
    /// Stack pointer in the syscall, for the exit-phase search.
    pub(super) sp: u64,
    /// `/proc` state letter, `S` or `D`.
    state: char,
}

#[cfg(test)]
impl Verified {
    /// A thread stuck in `wait` since `since_ns`, with its stack pointer at `sp`.
    pub(super) fn stuck_in(wait: Wait, since_ns: u64, sp: u64) -> Self {
        Self {
            wait,
            since_ns,
            stuck: true,
            sp,
            state: 'S',
        }
    }
}

/// What a scan looks for and keeps.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub hang_after_ns: u64,
    /// How far ahead of their time pending records are looked up: the time to the next
    /// scan, so that the scanner can wake when one of them turns old.
    pub lookahead_ns: u64,
    /// Read command lines (redacted) for the processes involved.
    pub cmdlines: bool,
}

/// `describe` names processes to include (with every thread's wait) even if nothing in
/// them is a candidate.
pub fn collect(
    procfs: &ProcFs,
    kernel: &KernelView,
    now_ns: u64,
    options: Options,
    describe: &[Pid],
    fresh: Fresh,
    state: &mut ScanState,
) -> Scan {
    let Options {
        hang_after_ns,
        cmdlines,
        ..
    } = options;
    let old_enough = |since: u64| now_ns.saturating_sub(since) >= hang_after_ns;
    let mut exiting: BTreeMap<Pid, ExitState> = kernel
        .exiting
        .iter()
        .filter_map(|(pid, state)| Some((Pid::try_from(*pid).ok()?, *state)))
        .collect();
    let mut checked = verify_all(procfs, kernel, &exiting, fresh, state, options, now_ns);
    // Kept search verdicts hold for threads still in the same wait.
    let dropped = state.verdicts.take_dropped();
    let marked = exiting.len();
    let libc = state
        .libc_exits
        .find(procfs, &state.verdicts, &mut exiting, dropped);
    let finalizing = state
        .py_finalizes
        .find(procfs, &state.verdicts, &mut exiting, dropped);
    let asyncio = state
        .asyncio_exits
        .find(procfs, &state.verdicts, &mut exiting, dropped);
    let exits_found = found(LibcExit::REASON, libc)
        .chain(found(PyFinalize::REASON, finalizing))
        .chain(found(AsyncioShutdown::REASON, asyncio))
        .collect();
    let stack_exits = exiting.len() - marked;
    let seed_waits = seed_waits(
        &mut state.verdicts,
        &checked.active,
        &exiting,
        describe,
        fresh,
        &mut state.quiet,
        now_ns,
    );
    let verdicts = &state.verdicts;
    let seeds: BTreeSet<Pid> = seed_waits
        .keys()
        .copied()
        .chain(
            exiting
                .iter()
                .filter(|(_, e)| old_enough(e.since_ns))
                .map(|(pid, _)| *pid),
        )
        .chain(describe.iter().copied())
        .collect();
    let mut builder = Builder {
        procfs,
        now_ns,
        sched_clock: SchedClock::new(procfs),
        hang_after_ns,
        cmdlines,
        fresh,
        exiting: &exiting,
        verdicts,
        describe,
        processes: BTreeMap::new(),
        gone_pids: Vec::new(),
        errors: std::mem::take(&mut checked.errors),
        unreadable: BTreeMap::new(),
    };
    for pid in seeds {
        builder.add(pid);
    }
    let pipes = builder.add_releasers(&mut state.holders, &checked.active);
    Scan {
        snapshot: Snapshot {
            now_ns,
            hang_after_ns,
            processes: builder.processes,
            pipes,
        },
        gone_tids: checked.gone_tids,
        gone_pids: builder.gone_pids,
        exits_found,
        stack_exits,
        errors: builder.errors,
        unreadable: builder.unreadable,
        seed_waits,
    }
}

/// The blocked processes to look at for their own waits, with those waits: any stuck wait
/// of an exiting process, a pipe or child wait of any process, unless the process is
/// known live and nothing it rests on changed ([`QuietSeeds`]). Untimed futex waits are
/// how idle thread pools sleep; outside an exit they are looked at only when a pipe or a
/// child leads to their process. Only processes where something changed are looked at
/// here (their waits, or their witness), besides those not known live: a host's idle
/// pipe readers cost nothing while they stay quiet.
fn seed_waits(
    verdicts: &mut Verdicts,
    active: &HashSet<Pid>,
    exiting: &BTreeMap<Pid, ExitState>,
    describe: &[Pid],
    fresh: Fresh,
    quiet: &mut QuietSeeds,
    now_ns: u64,
) -> BTreeMap<Pid, Waits> {
    quiet.expire(now_ns);
    let changed = verdicts.take_seeding_changed();
    let verdicts = &*verdicts;
    let active: HashSet<Pid> = active.iter().chain(exiting.keys()).copied().collect();
    let forced = |pid: Pid| fresh.contains(pid) || describe.contains(&pid);
    let waits = |entries: &mut dyn Iterator<Item = (Pid, Pid, &BlockedWait, &Verified)>| {
        entries
            .filter_map(|(_, tid, record, _)| Some((u32::try_from(tid).ok()?, *record)))
            .collect::<Waits>()
    };
    let mut seeds: BTreeMap<Pid, Waits> = BTreeMap::new();
    for &pid in exiting.keys() {
        let stuck = waits(&mut verdicts.of_process(pid).filter(|(.., v)| v.stuck));
        if !stuck.is_empty() {
            seeds.insert(pid, stuck);
        }
    }
    let mut candidates: BTreeSet<Pid> = changed;
    candidates.extend(quiet.loud());
    candidates.extend(quiet.witnessed_by(&active));
    candidates.extend(describe);
    match fresh {
        Fresh::All => candidates.extend(verdicts.seeding_pids()),
        Fresh::Only(pids) | Fresh::Confirm(pids) => candidates.extend(pids),
    }
    for pid in candidates
        .into_iter()
        .filter(|pid| !exiting.contains_key(pid))
    {
        let own = waits(&mut verdicts.seeding_of(pid));
        if own.is_empty() {
            quiet.not_blocked(pid);
        } else if !quiet.is_quiet(pid, &own, &active) {
            // Looked at until a scan finds it live again (a later pass of this scan too).
            quiet.forget(pid);
            seeds.insert(pid, own);
        } else if forced(pid) {
            seeds.insert(pid, own);
        }
    }
    seeds
}

/// Whether a wait, once old, is worth a scan at that very time: untimed futex waits are
/// how idle thread pools sleep and make a finding only with an exit (whose own time the
/// scanner wakes for) or another wait.
fn wakes(record: &BlockedWait) -> bool {
    !matches!(record.syscall, nr::FUTEX | nr::FUTEX_WAITV | nr::FUTEX_WAIT)
}

/// What verifying this scan's records found besides the verdicts themselves.
struct Checked {
    /// Processes with a wait found stuck for the first time in this scan.
    active: HashSet<Pid>,
    gone_tids: Vec<u32>,
    /// Failed `/proc` reads, by [`crate::procfs::Error::reason`].
    errors: BTreeMap<&'static str, u64>,
}

/// Verifies the records that may have become old enough (or belong to processes in their
/// exit phase), from `/proc`: those of the processes read anew (`fresh`, and exits past
/// the threshold), then those pending whose time has come, newest first. Every other
/// record keeps its verdict: it did not change.
fn verify_all(
    procfs: &ProcFs,
    kernel: &KernelView,
    exiting: &BTreeMap<Pid, ExitState>,
    fresh: Fresh,
    state: &mut ScanState,
    options: Options,
    now_ns: u64,
) -> Checked {
    let Options {
        hang_after_ns,
        lookahead_ns,
        ..
    } = options;
    let old_enough = |since: u64| now_ns.saturating_sub(since) >= hang_after_ns;
    let ScanState {
        verdicts,
        pending,
        waits_left,
        libc_exits,
        py_finalizes,
        asyncio_exits,
        ..
    } = state;
    let mut checked = Checked {
        active: HashSet::new(),
        gone_tids: Vec::new(),
        errors: BTreeMap::new(),
    };
    // Records of exiting processes that are not old yet change while they run; they are
    // few, and always read. Fresh processes are read whatever was kept.
    let mut exact: BTreeSet<Pid> = exiting
        .iter()
        .filter(|(_, e)| old_enough(e.since_ns))
        .map(|(pid, _)| *pid)
        .collect();
    if let Fresh::Only(pids) | Fresh::Confirm(pids) = fresh {
        exact.extend(pids);
    }
    // (map key, (pid, tid), record, whether it is old enough to be stuck)
    let mut wanted: Vec<(u32, (Pid, Pid), BlockedWait, bool)> = Vec::new();
    for &pid in &exact {
        let Ok(tids) = procfs.tids(pid) else {
            continue;
        };
        let records = tids
            .into_iter()
            .filter_map(|tid| Some((u32::try_from(tid).ok()?, tid)))
            .filter_map(|(key, tid)| Some((key, tid, (kernel.waits)(key)?)))
            .filter(|(.., record)| Pid::try_from(record.tgid) == Ok(pid));
        for (key, tid, record) in records {
            let old = old_enough(record.last_ns);
            if old {
                pending.remove(key);
            } else {
                pending.insert(key, record.last_ns, wakes(&record));
            }
            let exit_is_old = exiting.get(&pid).is_some_and(|e| old_enough(e.since_ns));
            if old || exit_is_old {
                wanted.push((key, (pid, tid), record, old));
            } else {
                verdicts.forget(tid);
            }
        }
    }
    // Pending records whose time may have come: most of the budget newest first, so that
    // a fresh hang is never behind a start-up backlog, the rest oldest first, so that a
    // backlog that lasts (more waits turning old per scan than the budget) still drains.
    // A confirming pass takes none: it reads its processes whole.
    let budget = match fresh {
        Fresh::All => usize::MAX,
        Fresh::Only(_) => MAX_NEW_VERDICTS,
        Fresh::Confirm(_) => 0,
    };
    // Those due before the next scan are looked up too: their exact time is then known,
    // and the scanner wakes for it (see `Pending::next_wake`).
    let latest = (now_ns + lookahead_ns).saturating_sub(hang_after_ns);
    let mut left = budget;
    for (order, share) in [
        (Order::NewestFirst, budget - budget / 4),
        (Order::OldestFirst, budget / 4),
    ] {
        let mut take = share;
        let mut cursor = None;
        while take > 0 {
            let Some(due) = pending.next_due(latest, cursor, order) else {
                break;
            };
            cursor = Some(due);
            let key = due.1;
            let Some(record) = (kernel.waits)(key) else {
                pending.remove(key);
                if let Ok(tid) = Pid::try_from(key) {
                    verdicts.forget(tid);
                }
                continue;
            };
            // Ids above `i32::MAX` name no thread: nothing to verify, and the entry goes.
            let (Ok(pid), Ok(tid)) = (Pid::try_from(record.tgid), Pid::try_from(key)) else {
                pending.remove(key);
                checked.gone_tids.push(key);
                continue;
            };
            if !old_enough(record.last_ns) {
                pending.insert(key, record.last_ns, wakes(&record));
            } else {
                pending.remove(key);
                if !exact.contains(&pid) {
                    take -= 1;
                    left -= 1;
                    wanted.push((key, (pid, tid), record, true));
                }
            }
        }
    }
    if !matches!(fresh, Fresh::Confirm(_)) {
        // What the budget left: failed reads tried again are not a backlog.
        *waits_left = if left == 0 {
            pending.overdue(now_ns.saturating_sub(hang_after_ns))
        } else {
            0
        };
    }
    for (key, (pid, tid), record, old) in wanted {
        // Already known stuck (a fresh process read again): nothing new about it.
        let known = verdicts.known_stuck(tid, &record);
        match verify(procfs, pid, tid, &record, old) {
            Ok(verdict) => {
                if verdict.as_ref().is_some_and(|v| v.stuck) && !known {
                    checked.active.insert(pid);
                    // Each new stuck wait is looked at once for the exit phases that
                    // no probe marks.
                    libc_exits.offer(pid, tid, record.last_ns);
                    py_finalizes.offer(pid, tid, record.last_ns);
                    asyncio_exits.offer(pid, tid, record.last_ns);
                }
                // What /proc says now is what later scans start from.
                verdicts.insert((pid, tid), record, verdict);
            }
            Err(error) => {
                count(&mut checked.errors, &error);
                verdicts.forget(tid);
                if error.is_gone() {
                    pending.remove(key);
                    checked.gone_tids.push(key);
                } else {
                    // Tried again in a later scan.
                    pending.insert(key, record.last_ns, false);
                }
            }
        }
    }
    checked
}

fn found(reason: u32, pids: Vec<Pid>) -> impl Iterator<Item = (Pid, u32)> {
    pids.into_iter().map(move |pid| (pid, reason))
}

fn count(errors: &mut BTreeMap<&'static str, u64>, error: &crate::procfs::Error) {
    *errors.entry(error.reason()).or_default() += 1;
}

/// Confirms that the thread still sleeps in the recorded syscall with the recorded
/// arguments, and decodes what it waits for (and where its stack is).
fn verify(
    procfs: &ProcFs,
    pid: Pid,
    tid: Pid,
    entry: &BlockedWait,
    stuck: bool,
) -> Result<Option<Verified>, crate::procfs::Error> {
    let Syscall::In { nr, args, sp, .. } = procfs.syscall(pid, tid)? else {
        return Ok(None);
    };
    let current = [args[0], args[1], args[2], args[3]];
    if nr != i64::from(entry.syscall)
        || !same_wait(entry.syscall, &current, || sp, &entry.args, entry.sp)
    {
        return Ok(None);
    }
    let stat = procfs.stat(pid, tid)?;
    if !matches!(stat.state, 'S' | 'D') {
        return Ok(None);
    }
    Ok(
        // The record has four arguments; /proc has all six (futex_wait's timeout is the fifth).
        decode(procfs, pid, stat.pgrp, entry.syscall, args).map(|wait| Verified {
            // A wait with a timeout ends by itself: however long, it is no hang.
            stuck: stuck && !wait.ends_by_itself(),
            wait,
            since_ns: entry.last_ns,
            sp,
            state: stat.state,
        }),
    )
}

struct Builder<'a> {
    procfs: &'a ProcFs,
    now_ns: u64,
    /// Puts `se.exec_start` on the monotonic clock.
    sched_clock: SchedClock<'a>,
    hang_after_ns: u64,
    cmdlines: bool,
    /// Only these get the details that incidents show and analysis does not need
    /// (command line, wait channels).
    fresh: Fresh<'a>,
    exiting: &'a BTreeMap<Pid, ExitState>,
    verdicts: &'a Verdicts,
    describe: &'a [Pid],
    processes: BTreeMap<Pid, Process>,
    gone_pids: Vec<u32>,
    errors: BTreeMap<&'static str, u64>,
    unreadable: BTreeMap<Pid, crate::procfs::Error>,
}

impl Builder<'_> {
    fn add(&mut self, pid: Pid) {
        if self.processes.contains_key(&pid) {
            return;
        }
        match self.read_process(pid) {
            Ok(process) => {
                self.processes.insert(pid, process);
            }
            Err(error) => {
                count(&mut self.errors, &error);
                if error.is_gone() {
                    self.gone_pids.extend(u32::try_from(pid).ok());
                } else {
                    log::debug!("skipping pid {pid}: {error}");
                }
                self.unreadable.insert(pid, error);
            }
        }
    }

    fn read_process(&self, pid: Pid) -> Result<Process, crate::procfs::Error> {
        let stat = self.procfs.stat(pid, pid)?;
        let exit = self.exiting.get(&pid).map(|state| ExitPhase {
            since_ns: state.since_ns,
            reasons: state.reasons,
            thread_spawns: state.thread_spawns,
            signal: state.signal,
            // An impossible id (not a pid) stands for the main thread, where exits start.
            exit_tid: Pid::try_from(state.exit_tid).unwrap_or(pid),
        });
        let describe = exit.is_some() || self.describe.contains(&pid);
        let mut threads = Vec::new();
        for tid in self.procfs.tids(pid)? {
            match self.read_thread(pid, tid, stat.pgrp, describe) {
                Ok(thread) => threads.push(thread),
                Err(error) if error.is_gone() => {}
                Err(error) => return Err(error),
            }
        }
        Ok(Process {
            pid,
            ppid: stat.ppid,
            pgrp: stat.pgrp,
            start_ticks: stat.start_ticks,
            comm: stat.comm,
            cmdline: if self.cmdlines && self.fresh.contains(pid) {
                self.procfs
                    .cmdline(pid)
                    .map(|cmdline| shown(&cmdline))
                    .unwrap_or_default()
            } else {
                String::new()
            },
            threads,
            exit,
        })
    }

    /// A thread of an involved process. Threads of exiting processes are described even
    /// when not stuck, because the incident reports what every remaining thread does.
    fn read_thread(
        &self,
        pid: Pid,
        tid: Pid,
        pgrp: Pid,
        describe: bool,
    ) -> Result<Thread, crate::procfs::Error> {
        // A verified thread's state was read moments ago; the others need theirs now.
        if let Some(verified) = self.verdicts.get(pid, tid) {
            return Ok(Thread {
                tid,
                wait: Some(verified.wait.clone()),
                since_ns: verified.since_ns,
                stuck: verified.stuck,
                state: verified.state,
                wchan: self.wchan(pid, tid),
                stack: None,
            });
        }
        let stat = self.procfs.stat(pid, tid)?;
        let mut thread = Thread {
            tid,
            state: stat.state,
            ..Thread::default()
        };
        if matches!(stat.state, 'S' | 'D') {
            if let Syscall::In { nr, args, .. } = self.procfs.syscall(pid, tid)? {
                let nr = u32::try_from(nr).unwrap_or(u32::MAX);
                let poll = decode_poll(self.procfs, pid, nr, args);
                if poll.is_some() || describe {
                    // When it last ran: the start of its current sleep, near enough.
                    let last_ran = self
                        .procfs
                        .sched_exec_start_ns(pid, tid)?
                        .map(|ns| self.sched_clock.monotonic_ns(ns, stat.cpu));
                    thread.since_ns = last_ran.map_or(self.now_ns, |ns| ns.min(self.now_ns));
                    // The probes do not track polls; not having run since is the proof
                    // of no progress (and without that proof, it is not stuck).
                    thread.stuck = poll.is_some()
                        && last_ran.is_some()
                        && self.now_ns.saturating_sub(thread.since_ns) >= self.hang_after_ns;
                    thread.wait = poll.or_else(|| decode(self.procfs, pid, pgrp, nr, args));
                }
            }
        }
        if describe || thread.wait.is_some() {
            thread.wchan = self.wchan(pid, tid);
        }
        Ok(thread)
    }

    /// Whether a stuck wait of a fresh process is released by the holders of a pipe or
    /// by children, which come from the index. A finding whose waits are all futexes
    /// (threads of an exit waiting on each other) rests on no index entry.
    fn fresh_rest_on_holders(&self) -> bool {
        self.processes
            .values()
            .filter(|process| self.fresh.contains(process.pid))
            .flat_map(|process| &process.threads)
            .filter(|thread| thread.stuck)
            .filter_map(|thread| thread.wait.as_ref())
            .any(|wait| !wait.pipes().is_empty() || matches!(wait, Wait::Child { .. }))
    }

    /// Whether the analysis counts `pid` as able to run: a thread of it is not stuck, or
    /// it was not read.
    fn can_run(&self, pid: Pid) -> bool {
        self.processes
            .get(&pid)
            .is_none_or(|process| process.threads.iter().any(|t| !t.stuck))
    }

    /// Whether `pid` has exited and waits to be reaped.
    fn exited(&self, pid: Pid) -> bool {
        self.procfs
            .stat(pid, pid)
            .is_ok_and(|stat| stat.state == 'Z')
    }

    fn wchan(&self, pid: Pid, tid: Pid) -> String {
        if !self.fresh.contains(pid) {
            return String::new();
        }
        self.procfs.wchan(pid, tid).unwrap_or_default()
    }

    /// Adds every process that could release a stuck thread: holders of the other end
    /// of its pipes, the children of waiters, and the exited children of readers. Again
    /// while newly added processes bring new pipes (a poller found among the holders).
    /// Holders and children come from `index`, brought up to date once (rereading the
    /// processes in `reread`), and read whole when a finding is confirmed and rests on it
    /// or when it contradicts a blocked thread even after `/proc` is listed again. A
    /// process already indexed whose entry is stale can then stay unseen until it ages
    /// out; a finding that rests on the index is confirmed against a whole read anyway.
    fn add_releasers(
        &mut self,
        index: &mut HolderIndex,
        reread: &HashSet<Pid>,
    ) -> BTreeMap<u64, PipeEnds> {
        let mut pipes: BTreeMap<u64, PipeEnds> = BTreeMap::new();
        let mut waiters_done: BTreeSet<Pid> = BTreeSet::new();
        let (mut refreshed, mut refreshed_all) = (false, false);
        for _ in 0..MAX_RELEASER_ROUNDS {
            let stuck: Vec<(Pid, Wait)> = self
                .processes
                .values()
                .flat_map(|p| p.threads.iter().filter(|t| t.stuck).map(|t| (p.pid, t)))
                .filter_map(|(pid, t)| Some((pid, t.wait.clone()?)))
                .collect();
            // A process added by an earlier round may be the first to need the whole index:
            // what earlier rounds resolved from the index as it was is resolved again.
            let all = self.fresh.confirms() && self.fresh_rest_on_holders();
            if all && refreshed && !refreshed_all {
                pipes.clear();
                waiters_done.clear();
            }
            let wanted_pipes: BTreeSet<u64> = stuck
                .iter()
                .flat_map(|(_, w)| w.pipes())
                .filter(|pipe| !pipes.contains_key(pipe))
                .collect();
            let waits_for_child: BTreeSet<Pid> = stuck
                .iter()
                .filter(|(_, w)| matches!(w, Wait::Child { .. }))
                .map(|(pid, _)| *pid)
                .collect();
            // A pipe reader's children too: one that exited unreaped tells a parent reading
            // its child's output to EOF (see `graph::orphan`).
            let waiters: BTreeSet<Pid> = stuck
                .iter()
                .filter(|(_, w)| {
                    matches!(
                        w,
                        Wait::Child { .. } | Wait::PipeRead { .. } | Wait::PollRead { .. }
                    )
                })
                .map(|(pid, _)| *pid)
                .filter(|pid| !waiters_done.contains(pid))
                .collect();
            if wanted_pipes.is_empty() && waiters.is_empty() {
                break;
            }
            if !refreshed || (all && !refreshed_all) {
                index.refresh(self.procfs, self.now_ns, reread, all, &mut self.errors);
                refreshed = true;
                refreshed_all = all;
            }
            let mut ends = index.pipe_ends(self.procfs, &wanted_pipes, &mut self.errors);
            if !refreshed_all && contradicts(&stuck, &wanted_pipes, &ends) {
                let relisted = index.relist(self.procfs, self.now_ns, &mut self.errors);
                if relisted {
                    ends = index.pipe_ends(self.procfs, &wanted_pipes, &mut self.errors);
                }
                if !relisted || contradicts(&stuck, &wanted_pipes, &ends) {
                    index.refresh(self.procfs, self.now_ns, reread, true, &mut self.errors);
                    ends = index.pipe_ends(self.procfs, &wanted_pipes, &mut self.errors);
                    refreshed_all = true;
                }
            }
            waiters_done.extend(&waiters);
            let mut releasers: BTreeSet<Pid> = stuck
                .iter()
                .filter_map(|(_, wait)| match wait {
                    Wait::Child {
                        target: ChildTarget::Pid(child),
                    } => Some(*child),
                    _ => None,
                })
                .collect();
            let (parents, readers): (BTreeSet<Pid>, BTreeSet<Pid>) = waiters
                .iter()
                .partition(|pid| waits_for_child.contains(pid));
            releasers.extend(index.children(&parents));
            // A reader's live children release nothing (its pipe's writers do, and are
            // added as such), and a supervisor reading a pipe may have thousands of them,
            // each a full read of its threads: only exited ones are added.
            releasers.extend(
                index
                    .children(&readers)
                    .into_iter()
                    .filter(|&child| !self.processes.contains_key(&child) && self.exited(child)),
            );
            let mut crowded: Vec<Vec<Pid>> = Vec::new();
            for pipe in wanted_pipes {
                let ends = ends.remove(&pipe).unwrap_or_default();
                for holders in [&ends.readers, &ends.writers] {
                    if holders.len() > MAX_HOLDERS_READ {
                        crowded.push(holders.iter().copied().collect());
                    } else {
                        releasers.extend(holders);
                    }
                }
                pipes.insert(pipe, ends);
            }
            for pid in releasers {
                self.add(pid);
            }
            for holders in crowded {
                for pid in holders {
                    self.add(pid);
                    if self.can_run(pid) {
                        break;
                    }
                }
            }
        }
        pipes
    }
}

/// Whether the index misses a holder that must exist: a blocked writer's pipe has a
/// reader (or the write would fail), a blocked reader's a writer (or the read would end),
/// and the blocked thread's own process holds its end. Only the `wanted` pipes count:
/// `ends` holds no others.
fn contradicts(
    stuck: &[(Pid, Wait)],
    wanted: &BTreeSet<u64>,
    ends: &BTreeMap<u64, PipeEnds>,
) -> bool {
    let (empty, holders) = (PipeEnds::default(), |pipe: &u64| ends.get(pipe));
    stuck.iter().any(|(pid, wait)| match wait {
        Wait::PipeWrite { pipe, .. } if wanted.contains(pipe) => {
            let ends = holders(pipe).unwrap_or(&empty);
            ends.readers.is_empty() || !ends.writers.contains(pid)
        }
        Wait::PipeRead { pipe, .. } if wanted.contains(pipe) => {
            let ends = holders(pipe).unwrap_or(&empty);
            ends.writers.is_empty() || !ends.readers.contains(pid)
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pid` stuck reading `pipe` since `last_ns`, as kept after verification.
    fn reading(verdicts: &mut Verdicts, pid: Pid, pipe: u64, last_ns: u64) {
        let record = BlockedWait {
            tgid: u32::try_from(pid.as_raw()).expect("a test pid"),
            last_ns,
            ..BlockedWait::default()
        };
        let wait = Wait::PipeRead { fd: 0, pipe };
        verdicts.insert(
            (pid, pid),
            record,
            Some(Verified::stuck_in(wait, last_ns, 0)),
        );
    }

    #[test]
    fn seeds_follow_change_not_every_blocked_process() {
        let (mut verdicts, mut quiet) = (Verdicts::default(), QuietSeeds::default());
        let (a, b, witness) = (Pid::from_raw(10), Pid::from_raw(20), Pid::from_raw(30));
        let (none, fresh) = (HashSet::new(), BTreeSet::new());
        let seeds = |verdicts: &mut Verdicts, quiet: &mut QuietSeeds, active: &HashSet<Pid>| {
            let exiting = BTreeMap::new();
            let fresh = Fresh::Only(&fresh);
            seed_waits(verdicts, active, &exiting, &[], fresh, quiet, 1)
        };
        let found_live = |quiet: &mut QuietSeeds, seeds: BTreeMap<Pid, Waits>| {
            for (pid, waits) in seeds {
                quiet.note(pid, waits, witness, 1);
            }
        };
        reading(&mut verdicts, a, 1, 1);
        reading(&mut verdicts, b, 2, 1);
        let first = seeds(&mut verdicts, &mut quiet, &none);
        assert_eq!(
            first.keys().copied().collect::<Vec<_>>(),
            [a, b],
            "new waits"
        );
        found_live(&mut quiet, first);
        assert!(
            seeds(&mut verdicts, &mut quiet, &none).is_empty(),
            "no change"
        );

        reading(&mut verdicts, b, 2, 2);
        let renewed = seeds(&mut verdicts, &mut quiet, &none);
        assert_eq!(
            renewed.keys().copied().collect::<Vec<_>>(),
            [b],
            "a new record"
        );
        found_live(&mut quiet, renewed);
        let witness_stuck = seeds(&mut verdicts, &mut quiet, &HashSet::from([witness]));
        assert_eq!(witness_stuck.len(), 2, "witness stuck: {witness_stuck:?}");
        assert_eq!(
            seeds(&mut verdicts, &mut quiet, &none).len(),
            2,
            "not found live yet: looked at again"
        );
        found_live(&mut quiet, witness_stuck);

        verdicts.forget(a);
        assert!(seeds(&mut verdicts, &mut quiet, &none).is_empty());
        assert!(!quiet.is_quiet(a, &Waits::new(), &none));
        assert_eq!(quiet.loud().count(), 0, "a is no longer blocked");
    }
}
