use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

pub use crate::pid::Pid;

/// What a blocked thread is waiting for, resolved against `/proc`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Wait {
    /// `write`/`writev` on a pipe: released by whoever holds the read end.
    PipeWrite { fd: i32, pipe: u64 },
    /// `read`/`readv` on a pipe: released by whoever holds the write end.
    PipeRead { fd: i32, pipe: u64 },
    /// `poll`/`epoll_wait` without a timeout for input on pipes only: released by
    /// whoever holds a write end of any of them.
    PollRead { pipes: Vec<u64> },
    /// `wait4`/`waitid`: released by the child(ren) exiting.
    Child { target: ChildTarget },
    /// A futex wait; one with a timeout wakes by itself.
    Futex { timed: bool },
    /// A tracked syscall on something that is not a pipe (a file, a socket, a tty).
    Other { syscall: String },
}

impl Wait {
    /// Short label used in metrics and tables.
    pub fn label(&self) -> &'static str {
        match self {
            Self::PipeWrite { .. } => "pipe_write",
            Self::PipeRead { .. } => "pipe_read",
            Self::PollRead { .. } => "poll",
            Self::Child { .. } => "wait_child",
            Self::Futex { .. } => "futex",
            Self::Other { .. } => "other",
        }
    }

    /// Waits with a timeout: they end without anyone's help.
    pub fn ends_by_itself(&self) -> bool {
        matches!(self, Self::Futex { timed: true })
    }

    /// The pipe of a read or write.
    pub fn pipe(&self) -> Option<u64> {
        match self {
            Self::PipeWrite { pipe, .. } | Self::PipeRead { pipe, .. } => Some(*pipe),
            _ => None,
        }
    }

    /// Every pipe this wait depends on.
    pub fn pipes(&self) -> Vec<u64> {
        match self {
            Self::PollRead { pipes } => pipes.clone(),
            _ => self.pipe().into_iter().collect(),
        }
    }
}

/// What the thread is doing, as a verb phrase ("writing fd 1 into pipe 42").
impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PipeWrite { fd, pipe } => write!(f, "writing fd {fd} into pipe {pipe}"),
            Self::PipeRead { fd, pipe } => write!(f, "reading fd {fd} from pipe {pipe}"),
            Self::PollRead { pipes } => {
                let pipes: Vec<String> = pipes.iter().map(u64::to_string).collect();
                write!(
                    f,
                    "polling (no timeout) for input on pipe {}",
                    pipes.join(", ")
                )
            }
            Self::Child { target } => write!(f, "in wait() for {target}"),
            Self::Futex { timed: false } => {
                write!(f, "waiting on a lock or joining a thread (futex)")
            }
            Self::Futex { timed: true } => write!(
                f,
                "in a timed wait (futex with timeout, as in a Timer or Event.wait(t))"
            ),
            Self::Other { syscall } => write!(f, "blocked in {syscall}()"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum ChildTarget {
    Pid(Pid),
    AnyChild,
    Group(Pid),
}

impl std::fmt::Display for ChildTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pid(pid) => write!(f, "child {pid}"),
            Self::AnyChild => write!(f, "any child"),
            Self::Group(pgrp) => write!(f, "any child in process group {pgrp}"),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Thread {
    pub tid: Pid,
    /// The wait this thread is in now, if it is in one exitwatch understands.
    pub wait: Option<Wait>,
    /// Monotonic ns when the current sleep began (0 when not waiting).
    pub since_ns: u64,
    /// Blocked past the threshold in this wait without any progress.
    pub stuck: bool,
    /// `/proc` state letter (`S`, `D`, `T`, …).
    pub state: char,
    /// Kernel wait channel, a hint for threads in waits exitwatch does not model.
    pub wchan: String,
    /// Where its code is stuck, once captured (stuck threads of findings only).
    pub stack: Option<std::sync::Arc<crate::stacks::Stack>>,
}

impl Thread {
    /// Its name in Python's `threading`, when its captured stack could tell.
    pub fn python_name(&self) -> Option<&str> {
        self.stack.as_deref()?.python_thread.as_deref()
    }
}

/// A process's exit phase as the kernel probes saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitPhase {
    pub since_ns: u64,
    /// Bit set of `exitwatch_common::exit_reason` values.
    pub reasons: u32,
    pub thread_spawns: u64,
    pub signal: u32,
    pub exit_tid: Pid,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub pid: Pid,
    pub ppid: Pid,
    pub pgrp: Pid,
    pub start_ticks: u64,
    pub comm: String,
    /// As shown: redacted, cut (see `scan::cmdline`); empty when not collected.
    pub cmdline: String,
    pub threads: Vec<Thread>,
    pub exit: Option<ExitPhase>,
}

impl ExitPhase {
    /// Really exiting, not just signalled: a handled signal alone does not end a process.
    pub fn is_exiting(&self) -> bool {
        self.reasons & !exitwatch_common::exit_reason::SIGNAL != 0
    }

    pub fn was_signalled(&self) -> bool {
        self.reasons & exitwatch_common::exit_reason::SIGNAL != 0
    }
}

impl Process {
    pub fn thread(&self, tid: Pid) -> Option<&Thread> {
        self.threads.iter().find(|thread| thread.tid == tid)
    }

    /// The thread that is driving the exit: the one that entered it, else the main thread.
    pub fn exit_thread(&self) -> Option<&Thread> {
        let exit = self.exit?;
        self.thread(exit.exit_tid).or_else(|| self.thread(self.pid))
    }
}

/// Which processes hold each end of a pipe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipeEnds {
    pub readers: BTreeSet<Pid>,
    pub writers: BTreeSet<Pid>,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub now_ns: u64,
    pub hang_after_ns: u64,
    pub processes: BTreeMap<Pid, Process>,
    pub pipes: BTreeMap<u64, PipeEnds>,
}

impl Snapshot {
    pub fn children_of(&self, parent: Pid) -> impl Iterator<Item = &Process> {
        self.processes.values().filter(move |p| p.ppid == parent)
    }
}
