//! One scan: candidates from the kernel maps, verified and completed from `/proc`.
use std::collections::{BTreeMap, BTreeSet};

use exitwatch_common::{exit_reason, BlockedWait, ExitState};

use super::{
    cmdline::shown,
    exit_stack::ExitStacks,
    wait::{decode, decode_poll},
};
use crate::{
    graph::{ChildTarget, ExitPhase, PipeEnds, Process, Snapshot, Thread, Wait},
    procfs::{Access, ProcFs, Syscall},
};

/// Chains of pollers through pipes are short; this bounds the passes over `/proc`.
const MAX_RELEASER_ROUNDS: usize = 3;

/// What the kernel probes recorded, as read from their maps.
pub struct KernelView {
    pub blocked: Vec<(u32, BlockedWait)>,
    pub exiting: Vec<(u32, ExitState)>,
}

pub struct Scan {
    pub snapshot: Snapshot,
    /// Map entries of threads and processes that no longer exist.
    pub gone_tids: Vec<u32>,
    pub gone_pids: Vec<u32>,
    /// Processes newly found inside libc's `exit` by their stacks.
    pub exits_found: Vec<i32>,
    /// Failed `/proc` reads, by [`crate::procfs::Error::reason`].
    pub errors: BTreeMap<&'static str, u64>,
    /// Processes that were wanted but could not be read, with why.
    pub unreadable: BTreeMap<i32, crate::procfs::Error>,
}

/// A thread verified to be in the wait its map entry describes.
struct Verified {
    wait: Wait,
    since_ns: u64,
    stuck: bool,
    /// Stack pointer in the syscall, for the exit-phase search.
    sp: u64,
    /// `/proc` state letter, `S` or `D`.
    state: char,
}

/// What a scan looks for and keeps.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub hang_after_ns: u64,
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
    describe: &[i32],
    exit_stacks: &mut ExitStacks,
) -> Scan {
    let Options {
        hang_after_ns,
        cmdlines,
    } = options;
    let old_enough = |since: u64| now_ns.saturating_sub(since) >= hang_after_ns;
    let mut exiting: BTreeMap<i32, ExitState> = kernel
        .exiting
        .iter()
        .map(|(pid, state)| (*pid as i32, *state))
        .collect();
    let mut gone_tids = Vec::new();
    let mut errors = BTreeMap::new();
    let mut verified: BTreeMap<(i32, i32), Verified> = BTreeMap::new();
    for (tid, entry) in &kernel.blocked {
        let (pid, tid) = (entry.tgid as i32, *tid as i32);
        let exit_is_old = exiting.get(&pid).is_some_and(|e| old_enough(e.since_ns));
        if !old_enough(entry.last_ns) && !exit_is_old {
            continue;
        }
        match verify(procfs, pid, tid, entry, old_enough(entry.last_ns)) {
            Ok(Some(thread)) => {
                verified.insert((pid, tid), thread);
            }
            Ok(None) => {}
            Err(error) => {
                count(&mut errors, &error);
                if error.is_gone() {
                    gone_tids.push(tid as u32);
                }
            }
        }
    }

    // C programs have no exit probe: a stuck thread inside libc's `exit` marks one.
    let mut exits_found = Vec::new();
    for (&(pid, tid), thread) in verified.iter().filter(|(_, v)| v.stuck) {
        if exiting.contains_key(&pid) {
            continue;
        }
        let (inside, fresh) = exit_stacks.in_exit(procfs, pid, tid, thread.since_ns, thread.sp);
        if inside {
            exiting.insert(
                pid,
                ExitState {
                    since_ns: thread.since_ns,
                    reasons: exit_reason::LIBC_EXIT,
                    exit_tid: tid as u32,
                    ..ExitState::default()
                },
            );
        }
        if inside && fresh {
            exits_found.push(pid);
        }
    }
    exit_stacks.retain(|pid, tid| verified.contains_key(&(pid, tid)));

    let mut builder = Builder {
        procfs,
        now_ns,
        sched_lag_ns: procfs.sched_clock_lag_ns(),
        hang_after_ns,
        cmdlines,
        exiting: &exiting,
        verified: &verified,
        describe,
        processes: BTreeMap::new(),
        gone_pids: Vec::new(),
        errors,
        unreadable: BTreeMap::new(),
    };
    let seeds: BTreeSet<i32> = verified
        .keys()
        .map(|(pid, _)| *pid)
        .chain(
            exiting
                .iter()
                .filter(|(_, e)| old_enough(e.since_ns))
                .map(|(pid, _)| *pid),
        )
        .chain(describe.iter().copied())
        .collect();
    for pid in seeds {
        builder.add(pid);
    }
    let pipes = builder.add_releasers();
    Scan {
        snapshot: Snapshot {
            now_ns,
            hang_after_ns,
            processes: builder.processes,
            pipes,
        },
        gone_tids,
        gone_pids: builder.gone_pids,
        exits_found,
        errors: builder.errors,
        unreadable: builder.unreadable,
    }
}

fn count(errors: &mut BTreeMap<&'static str, u64>, error: &crate::procfs::Error) {
    *errors.entry(error.reason()).or_default() += 1;
}

/// Confirms that the thread still sleeps in the recorded syscall with the recorded
/// arguments, and decodes what it waits for (and where its stack is).
fn verify(
    procfs: &ProcFs,
    pid: i32,
    tid: i32,
    entry: &BlockedWait,
    stuck: bool,
) -> Result<Option<Verified>, crate::procfs::Error> {
    let Syscall::In { nr, args, sp, .. } = procfs.syscall(pid, tid)? else {
        return Ok(None);
    };
    if nr != i64::from(entry.syscall) || args[..4] != entry.args {
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
    /// Added to `se.exec_start` to put it on the monotonic clock.
    sched_lag_ns: u64,
    hang_after_ns: u64,
    cmdlines: bool,
    exiting: &'a BTreeMap<i32, ExitState>,
    verified: &'a BTreeMap<(i32, i32), Verified>,
    describe: &'a [i32],
    processes: BTreeMap<i32, Process>,
    gone_pids: Vec<u32>,
    errors: BTreeMap<&'static str, u64>,
    unreadable: BTreeMap<i32, crate::procfs::Error>,
}

impl Builder<'_> {
    fn add(&mut self, pid: i32) {
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
                    self.gone_pids.push(pid as u32);
                } else {
                    log::debug!("skipping pid {pid}: {error}");
                }
                self.unreadable.insert(pid, error);
            }
        }
    }

    fn read_process(&self, pid: i32) -> Result<Process, crate::procfs::Error> {
        let stat = self.procfs.stat(pid, pid)?;
        let exit = self.exiting.get(&pid).map(|state| ExitPhase {
            since_ns: state.since_ns,
            reasons: state.reasons,
            thread_spawns: state.thread_spawns,
            signal: state.signal,
            exit_tid: state.exit_tid as i32,
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
            cmdline: if self.cmdlines {
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
        pid: i32,
        tid: i32,
        pgrp: i32,
        describe: bool,
    ) -> Result<Thread, crate::procfs::Error> {
        // A verified thread's state was read moments ago; the others need theirs now.
        if let Some(verified) = self.verified.get(&(pid, tid)) {
            return Ok(Thread {
                tid,
                wait: Some(verified.wait.clone()),
                since_ns: verified.since_ns,
                stuck: verified.stuck,
                state: verified.state,
                wchan: self.procfs.wchan(pid, tid).unwrap_or_default(),
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
                        .map(|ns| ns.saturating_add(self.sched_lag_ns));
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
            thread.wchan = self.procfs.wchan(pid, tid).unwrap_or_default();
        }
        Ok(thread)
    }

    /// Adds every process that could release a stuck thread: holders of the other end
    /// of its pipes, and the children of waiters and readers. Passes over `/proc` only
    /// when a stuck thread needs them, again while newly added processes bring new pipes
    /// (a poller found among the holders).
    fn add_releasers(&mut self) -> BTreeMap<u64, PipeEnds> {
        let mut pipes: BTreeMap<u64, PipeEnds> = BTreeMap::new();
        let mut waiters_done: BTreeSet<i32> = BTreeSet::new();
        for _ in 0..MAX_RELEASER_ROUNDS {
            let stuck: Vec<(i32, Wait)> = self
                .processes
                .values()
                .flat_map(|p| p.threads.iter().filter(|t| t.stuck).map(|t| (p.pid, t)))
                .filter_map(|(pid, t)| Some((pid, t.wait.clone()?)))
                .collect();
            let wanted_pipes: BTreeSet<u64> = stuck
                .iter()
                .flat_map(|(_, w)| w.pipes())
                .filter(|pipe| !pipes.contains_key(pipe))
                .collect();
            // A pipe reader's children too: one that exited unreaped tells a parent reading
            // its child's output to EOF (see `graph::orphan`).
            let waiters: BTreeSet<i32> = stuck
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
            waiters_done.extend(&waiters);
            let mut releasers: BTreeSet<i32> = stuck
                .iter()
                .filter_map(|(_, wait)| match wait {
                    Wait::Child {
                        target: ChildTarget::Pid(child),
                    } => Some(*child),
                    _ => None,
                })
                .collect();
            for pipe in &wanted_pipes {
                pipes.entry(*pipe).or_default();
            }
            for pid in self.procfs.pids().unwrap_or_default() {
                if !waiters.is_empty() {
                    if let Ok(stat) = self.procfs.stat(pid, pid) {
                        if waiters.contains(&stat.ppid) {
                            releasers.insert(pid);
                        }
                    }
                }
                if wanted_pipes.is_empty() {
                    continue;
                }
                let fds = self.procfs.pipe_fds(pid).unwrap_or_else(|error| {
                    count(&mut self.errors, &error);
                    Vec::new()
                });
                for fd in fds {
                    let inode = fd.pipe;
                    if !wanted_pipes.contains(&inode) {
                        continue;
                    }
                    let ends = pipes.entry(inode).or_default();
                    if matches!(fd.access, Access::Read | Access::ReadWrite) {
                        ends.readers.insert(pid);
                    }
                    if matches!(fd.access, Access::Write | Access::ReadWrite) {
                        ends.writers.insert(pid);
                    }
                    releasers.insert(pid);
                }
            }
            for pid in releasers {
                self.add(pid);
            }
        }
        pipes
    }
}
