//! Where stuck code is: native stacks (with Python frames in CPython processes) of the
//! stuck threads of every finding (and of the threads its summary names), captured once
//! per wait and remembered while it lasts, then named in the finding's summary.
mod capture;
mod debug_file;
pub mod model;
mod python;
mod remembered;
mod symbolize;
mod tables;
mod unwind;

use std::{
    collections::{btree_map::Entry, BTreeMap, BTreeSet},
    fs::Metadata,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use exitwatch_common::{exit_reason, BlockedWait};

pub(crate) use capture::read_python;
use capture::CaptureError;
pub use capture::Captures;
pub use model::Stack;
pub(crate) use python::may_be_interpreter;
pub(crate) use remembered::Remembered;
pub use unwind::Registers;

use crate::{
    graph::{describe, Finding, Process, Snapshot, Thread},
    pid::Pid,
    procfs::{FileId, Mapping, ProcFs},
};

/// New captures per scan at most, and the time they may take together: a knot of
/// hundreds of processes gets its stacks over a few scans instead of one scan taking
/// seconds.
const MAX_CAPTURES_PER_SCAN: usize = 16;
const SCAN_CAPTURE_TIME: Duration = Duration::from_millis(200);
/// Processes of a finding whose threads get stacks, and threads of the process that
/// `explain` is asked about: as many as an incident describes.
const MAX_PROCESSES: usize = 32;
const MAX_THREADS: usize = 64;
/// Stacks one finding carries, so an open incident stays small (each is up to 64
/// frames) whatever the knot: the first stuck (or named) threads of its first
/// processes.
const MAX_STACKS_PER_FINDING: usize = 16;

/// A thread's capture, for the wait (its first sleep) it was made in; `None` when the
/// capture failed (the thread exited, a read timed out): not retried in the same wait.
struct Captured {
    first_ns: u64,
    stack: Option<Arc<Stack>>,
}

/// Captured stacks by (pid, tid).
#[derive(Default)]
pub struct Stacks {
    captured: BTreeMap<(Pid, Pid), Captured>,
}

impl Stacks {
    /// Gives the stuck threads of `findings`, and the threads their summaries name, their
    /// stacks (capturing those not captured for their current wait yet) and rewrites the
    /// summaries that can now name code.
    /// `blocked` is what the probes recorded (registers included); `counted` is told the
    /// result and duration of every capture made.
    pub fn attach(
        &mut self,
        procfs: &ProcFs,
        blocked: &[(u32, BlockedWait)],
        snapshot: &mut Snapshot,
        findings: &mut [Finding],
        mut counted: impl FnMut(&'static str, Duration),
    ) {
        // Without findings there is nothing to keep: no need to index every recorded
        // wait of the host.
        if findings.is_empty() {
            self.captured.clear();
            return;
        }
        let waits = by_tid(blocked);
        self.captured.retain(|(_, tid), captured| {
            waits
                .get(tid)
                .is_some_and(|w| w.first_ns == captured.first_ns)
                || captured.first_ns == AWAITING
        });
        // An event loop's frames are kept as long as a wait of its process is.
        let waiting: BTreeSet<Pid> = self
            .captured
            .iter()
            .filter(|(_, captured)| captured.first_ns != AWAITING)
            .map(|((pid, _), _)| *pid)
            .collect();
        self.captured
            .retain(|(pid, _), captured| captured.first_ns != AWAITING || waiting.contains(pid));
        let mut budget = Budget::new(MAX_CAPTURES_PER_SCAN, SCAN_CAPTURE_TIME);
        for finding in findings.iter_mut() {
            let mut attached = false;
            let mut left = MAX_STACKS_PER_FINDING;
            // The threads its sentence is about too: the exit a re-arming Timer blocks has
            // no thread that stays in one wait long enough to be stuck.
            let linked: Vec<Pid> = finding.chain.iter().map(|link| link.tid).collect();
            let mut wanted = |thread: &Thread| {
                let take = (thread.stuck || linked.contains(&thread.tid)) && left > 0;
                left -= usize::from(take);
                take
            };
            for pid in finding.pids.iter().take(MAX_PROCESSES) {
                if let Some(process) = snapshot.processes.get_mut(pid) {
                    attached |= self.give(
                        procfs,
                        &waits,
                        process,
                        &mut wanted,
                        &mut budget,
                        &mut counted,
                    );
                }
            }
            if attached {
                describe(snapshot, finding);
            }
        }
    }

    /// Gives every thread of `pid` that is in a wait its stack (as many as an incident
    /// describes): for `exitwatch explain`, before its analysis.
    pub fn attach_waiting(
        &mut self,
        procfs: &ProcFs,
        blocked: &[(u32, BlockedWait)],
        snapshot: &mut Snapshot,
        pid: Pid,
    ) {
        let waits = by_tid(blocked);
        let mut budget = Budget::new(MAX_THREADS, capture::BUDGET * MAX_THREADS as u32);
        if let Some(process) = snapshot.processes.get_mut(&pid) {
            let in_wait = |t: &Thread| t.wait.is_some();
            self.give(
                procfs,
                &waits,
                process,
                in_wait,
                &mut budget,
                &mut |_, _| {},
            );
        }
    }

    /// Stacks for the `wanted` threads of `process`, captured while `budget` lasts;
    /// whether any thread got one.
    fn give(
        &mut self,
        procfs: &ProcFs,
        waits: &BTreeMap<Pid, &BlockedWait>,
        process: &mut Process,
        mut wanted: impl FnMut(&Thread) -> bool,
        budget: &mut Budget,
        counted: &mut impl FnMut(&'static str, Duration),
    ) -> bool {
        let pid = process.pid;
        let awaiting = awaiting_loop(process);
        let chosen: Vec<bool> = process
            .threads
            .iter()
            .map(|t| wanted(t) || Some(t.tid) == awaiting)
            .collect();
        // Waits found in /proc before the probes ran may lack registers.
        let wait_of = |tid: &Pid| waits.get(tid).filter(|w| w.ip != 0);
        // The threads the budget may capture, whose Python frames are read together.
        let to_capture = process
            .threads
            .iter()
            .zip(&chosen)
            .filter(|(t, chosen)| {
                **chosen
                    && (wait_of(&t.tid).is_some() || Some(t.tid) == awaiting)
                    && !self.captured.contains_key(&(pid, t.tid))
            })
            .map(|(t, _)| t.tid)
            .take(budget.captures)
            .collect();
        let mut captures = Captures::new(pid, to_capture);
        let mut attached = false;
        for (thread, _) in process.threads.iter_mut().zip(chosen).filter(|(_, c)| *c) {
            let tid = thread.tid;
            let wait = wait_of(&tid);
            if wait.is_none() && Some(tid) != awaiting {
                continue;
            }
            let captured = match self.captured.entry((pid, tid)) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(_) if !budget.spend() => continue,
                Entry::Vacant(entry) => entry.insert(match wait {
                    Some(wait) => Captured {
                        first_ns: wait.first_ns,
                        stack: capture_counted(procfs, &mut captures, pid, tid, wait, counted),
                    },
                    None => Captured {
                        first_ns: AWAITING,
                        stack: python_counted(procfs, &mut captures, pid, tid, counted),
                    },
                }),
            };
            thread.stack = captured.stack.clone();
            attached |= thread.stack.is_some();
        }
        attached
    }
}

/// What a capture of an event loop's Python frames alone is remembered for in place
/// of a wait's start: no wait starts at 0.
const AWAITING: u64 = 0;

/// The main thread of a process found in `asyncio.run()`'s teardown: its event loop
/// waits in `epoll_wait`, where the probes record no wait, and its Python frames show
/// what the loop awaits.
fn awaiting_loop(process: &Process) -> Option<Pid> {
    let exit = process.exit?;
    (exit.reasons & exit_reason::ASYNCIO_SHUTDOWN != 0).then_some(process.pid)
}

/// Captures left, and until when new ones may start.
struct Budget {
    captures: usize,
    until: Instant,
}

impl Budget {
    fn new(captures: usize, time: Duration) -> Self {
        Self {
            captures,
            until: Instant::now() + time,
        }
    }

    /// Takes one capture, if any is left.
    fn spend(&mut self) -> bool {
        let left = self.captures > 0 && Instant::now() < self.until;
        if left {
            self.captures -= 1;
        }
        left
    }
}

fn by_tid(blocked: &[(u32, BlockedWait)]) -> BTreeMap<Pid, &BlockedWait> {
    blocked
        .iter()
        .filter_map(|(tid, wait)| Some((Pid::try_from(*tid).ok()?, wait)))
        .collect()
}

fn capture_counted(
    procfs: &ProcFs,
    captures: &mut Captures,
    pid: Pid,
    tid: Pid,
    wait: &BlockedWait,
    counted: &mut impl FnMut(&'static str, Duration),
) -> Option<Arc<Stack>> {
    let regs = Registers {
        ip: wait.ip,
        sp: wait.sp,
        bp: wait.bp,
    };
    let started = Instant::now();
    let result = captures.capture(procfs, tid, regs);
    counted_result(pid, tid, result, started, counted)
}

/// A capture's stack, its result counted and logged.
fn counted_result(
    pid: Pid,
    tid: Pid,
    result: Result<Stack, CaptureError>,
    started: Instant,
    counted: &mut impl FnMut(&'static str, Duration),
) -> Option<Arc<Stack>> {
    match result {
        Ok(stack) => {
            counted(
                if stack.complete { "ok" } else { "partial" },
                started.elapsed(),
            );
            log::debug!(
                "stack of thread {tid} of pid {pid}: {} frames in {:?}",
                stack.frames.len(),
                started.elapsed()
            );
            Some(Arc::new(stack))
        }
        Err(error) => {
            counted(error.result(), started.elapsed());
            log::debug!("no stack for thread {tid} of pid {pid}: {error}");
            None
        }
    }
}

/// [`Captures::python_only`], counted like the other captures.
fn python_counted(
    procfs: &ProcFs,
    captures: &mut Captures,
    pid: Pid,
    tid: Pid,
    counted: &mut impl FnMut(&'static str, Duration),
) -> Option<Arc<Stack>> {
    let started = Instant::now();
    let result = captures.python_only(procfs, tid);
    counted_result(pid, tid, result, started, counted)
}

/// A mapping's file name for display: the last part of the name `maps` printed (the
/// process chose it), never used to open anything.
pub(crate) fn module_name(mapping: &Mapping) -> String {
    mapping
        .path
        .as_deref()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().chars().take(128).collect())
        .unwrap_or_default()
}

/// A mapped file as it is now: its modification time and length too, so that a file
/// rewritten in place (same inode) is read again; and the file offset it is mapped from,
/// which places it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileVersion {
    file: FileId,
    offset: u64,
    modified: Option<SystemTime>,
    len: u64,
}

impl FileVersion {
    /// The file of `mapping`, whose metadata (from the file opened through it) is `meta`.
    pub fn of(mapping: &Mapping, meta: &Metadata) -> Self {
        Self {
            file: mapping.file_id(),
            offset: mapping.offset,
            modified: meta.modified().ok(),
            len: meta.len(),
        }
    }

    #[cfg(test)]
    pub fn file_id(&self) -> FileId {
        self.file
    }

    /// A file opened by the agent itself, whose metadata is `meta`, as a whole.
    pub fn of_file(meta: &Metadata) -> Self {
        Self {
            file: (
                (libc::major(meta.dev()), libc::minor(meta.dev())),
                meta.ino(),
            ),
            offset: 0,
            modified: meta.modified().ok(),
            len: meta.len(),
        }
    }
}

/// This test binary's pid and its mapping of libc's start (file offset 0).
#[cfg(test)]
fn own_libc() -> (Pid, Mapping) {
    let pid = Pid::try_from(std::process::id()).expect("a pid");
    let maps = ProcFs::default().mappings(pid).expect("own maps");
    let libc = maps
        .into_iter()
        .find(|m| m.offset == 0 && module_name(m).starts_with("libc.so"))
        .expect("this test binary maps libc");
    (pid, libc)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::graph::{Kind, Wait};

    /// `threads` stuck threads of `pid` (tids from `pid` up) in a finding, as the scanner
    /// would hand them over.
    fn finding_of(pid: Pid, threads: i32) -> (Snapshot, Vec<Finding>) {
        let thread = |tid| Thread {
            tid,
            wait: Some(Wait::Futex { timed: false }),
            stuck: true,
            state: 'S',
            ..Thread::default()
        };
        let process = Process {
            pid,
            comm: "true".into(),
            threads: (pid.as_raw()..pid.as_raw() + threads)
                .map(|tid| thread(Pid::from_raw(tid)))
                .collect(),
            ..Process::default()
        };
        let mut snapshot = Snapshot::default();
        snapshot.processes.insert(pid, process);
        let finding = Finding {
            kind: Kind::ExitBlockedOnThreads,
            pids: vec![pid],
            chain: Vec::new(),
            behind: Vec::new(),
            started_ns: 0,
            summary: "as analysed".into(),
            phase: None,
        };
        (snapshot, vec![finding])
    }

    /// A wait the probe published, with registers.
    fn waiting(pid: Pid) -> BlockedWait {
        BlockedWait {
            tgid: u32::try_from(pid).expect("a pid"),
            first_ns: 1,
            ip: 0x40_1000,
            sp: 0x7ffd_0000_0000,
            ..BlockedWait::default()
        }
    }

    #[test]
    fn a_finding_gets_a_bounded_number_of_stacks_over_scans() {
        // No process has this pid (above pid_max): every capture is a quick "gone".
        let raw: u32 = 1 << 22;
        let pid = Pid::try_from(raw).expect("a pid");
        let (mut snapshot, mut findings) = finding_of(pid, 40);
        let blocked: Vec<(u32, BlockedWait)> =
            (raw..raw + 40).map(|tid| (tid, waiting(pid))).collect();
        let mut stacks = Stacks::default();
        let mut results = Vec::new();
        for _ in 0..3 {
            stacks.attach(
                &ProcFs::default(),
                &blocked,
                &mut snapshot,
                &mut findings,
                |r, _| results.push(r),
            );
        }
        assert_eq!(results.len(), MAX_STACKS_PER_FINDING);
        assert!(results.iter().all(|r| *r == "gone"), "{results:?}");
    }

    #[test]
    fn a_thread_that_exited_before_its_capture_is_counted_gone_once() {
        for reaped in [true, false] {
            let mut child = Command::new("true").spawn().expect("running true");
            let pid = Pid::try_from(child.id()).expect("a pid");
            let procfs = ProcFs::default();
            if reaped {
                child.wait().expect("reaping true");
            } else {
                // A zombie: exited, not reaped, its pid still in /proc.
                while procfs.stat(pid, pid).expect("the zombie's stat").state != 'Z' {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            let (mut snapshot, mut findings) = finding_of(pid, 1);
            let blocked = [(child.id(), waiting(pid))];
            let mut stacks = Stacks::default();
            let mut results = Vec::new();
            for _ in 0..2 {
                stacks.attach(&procfs, &blocked, &mut snapshot, &mut findings, |r, _| {
                    results.push(r)
                });
            }
            assert_eq!(results, ["gone"], "reaped: {reaped}");
            assert!(snapshot.processes[&pid].threads[0].stack.is_none());
            assert_eq!(findings[0].summary, "as analysed");
            // Reaps the zombie (a reaped child's status is remembered).
            child.wait().expect("reaping true");
        }
    }
}
