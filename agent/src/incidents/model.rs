use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::rfc3339;
use crate::{
    graph::{Kind, Phase},
    pid::Pid,
    workload::Workload,
};

/// The body of `/api/v1/incidents`: active first, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IncidentList {
    pub incidents: Vec<Incident>,
}

/// The JSON shape served at `/api/v1/incidents`; `exitwatch incidents` reads it back.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Incident {
    pub id: u64,
    pub kind: Kind,
    pub state: State,
    pub pids: Vec<Pid>,
    /// The host the agent runs on (`NODE_NAME`, else the hostname).
    #[serde(default)]
    pub node: String,
    /// The workload all of its described processes share; `null` when they differ or
    /// nothing is known.
    #[serde(default)]
    pub workload: Option<Workload>,
    /// Processes that wait on this incident's processes and so are stuck too (a `tee`
    /// reading a deadlocked program's output), without being part of its cause.
    pub blocked_behind: Vec<Pid>,
    /// At most 32 processes are described; this many more are in `pids` only.
    pub processes: Vec<IncidentProcess>,
    #[serde(default)]
    pub processes_omitted: usize,
    /// Inodes of the pipes between the processes, as `/proc/PID/fd` shows `pipe:[inode]`.
    pub pipes: Vec<u64>,
    /// Threads created while the process was exiting (exit kinds only).
    pub thread_spawns: Option<u64>,
    pub thread_spawns_per_second: Option<f64>,
    /// The part of the exit the hang is in, when the stacks show it (`threading_shutdown`,
    /// `executor_shutdown`, `multiprocessing_exit`, `atexit_handler`, `static_destructor`,
    /// `asyncio_shutdown`); `null` otherwise.
    #[serde(default)]
    pub exit_phase: Option<Phase>,
    pub summary: String,
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub detected_at: SystemTime,
    // `with` loses serde's "a missing `Option` is `None`"; `default` restores it.
    #[serde(default, with = "rfc3339::option")]
    pub resolved_at: Option<SystemTime>,
    pub ended: Option<Ending>,
}

impl Incident {
    /// The pids for a log line: the first ten, and how many more (a knot can have
    /// hundreds; `pids` in the JSON has them all).
    pub fn pids_brief(&self) -> String {
        const SHOWN: usize = 10;
        let shown: Vec<String> = self.pids.iter().take(SHOWN).map(Pid::to_string).collect();
        match self.pids.len().saturating_sub(SHOWN) {
            0 => format!("[{}]", shown.join(", ")),
            more => format!("[{}, … and {more} more]", shown.join(", ")),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Active,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Resolved => "resolved",
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// A process involved exited (or was killed), which ends the wait.
    Exited,
    /// The processes are still there but no longer stuck.
    Unblocked,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Exited => "exited",
            Ending::Unblocked => "unblocked",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IncidentProcess {
    pub pid: Pid,
    pub ppid: Pid,
    pub comm: String,
    pub cmdline: String,
    #[serde(default)]
    pub workload: Workload,
    /// Exit markers seen (`py_finalize`, `libc_exit` and `asyncio_shutdown` (found on
    /// the stack), `main_thread_exit`, `signal`).
    pub exiting: Vec<String>,
    /// Stuck threads first, then threads in a wait; at most 64.
    pub threads: Vec<IncidentThread>,
    #[serde(default)]
    pub threads_omitted: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IncidentThread {
    pub tid: Pid,
    /// `pipe_write`, `pipe_read`, `wait_child`, `futex`, `other`, or `running`.
    pub wait: String,
    pub state: String,
    pub wchan: String,
    pub blocked_seconds: f64,
    pub pipe: Option<u64>,
    pub fd: Option<i32>,
    pub target_pid: Option<Pid>,
    pub timed: Option<bool>,
    /// Blocked past the threshold with no progress.
    pub stuck: bool,
    /// The thread's name in Python's `threading` (`"MainThread"`, `"Thread-1 (run)"`,
    /// or the name the program gave it), read with its stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_thread: Option<String>,
    /// Where a stuck thread's code is, innermost frame first, when it could be captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<crate::stacks::Stack>,
}
