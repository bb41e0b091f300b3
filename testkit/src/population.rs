//! A host's quiet majority, for scale tests and the bench: idle thread pools (threads in
//! untimed futex waits) and idle pipe readers (blocked in `read` on a pipe whose writer is
//! alive and idle), started by `idle_population.c` and ready once every one of their
//! threads sleeps where it should. Killed when dropped.
use std::{
    fs,
    os::unix::process::CommandExt,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::{compile_c, process, Error, Subject};

const SOURCE: &str = include_str!("idle_population.c");
/// How often the threads' states are read while the population settles.
const POLL: Duration = Duration::from_millis(200);
/// Where each kind of thread ends up: futex (pool threads), read (readers), pause (their
/// writers and the launcher), as `/proc/PID/task/TID/syscall` prints them.
const SETTLED_SYSCALLS: [&str; 3] = ["202", "0", "34"];

/// How many of each: `processes` pools of `threads` threads (main thread included), and
/// `pipe_readers` reader/writer pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PopulationSize {
    pub processes: usize,
    pub threads: usize,
    pub pipe_readers: usize,
}

impl PopulationSize {
    /// A server-shaped host: 20,000 idle pool threads in 2,000 processes, and 1,000 idle
    /// pipe readers.
    pub const FULL: PopulationSize = PopulationSize {
        processes: 2_000,
        threads: 10,
        pipe_readers: 1_000,
    };

    /// `1/divisor` of the processes and pipe readers, with as many threads per process.
    pub fn divided(self, divisor: usize) -> PopulationSize {
        PopulationSize {
            processes: self.processes / divisor,
            threads: self.threads,
            pipe_readers: self.pipe_readers / divisor,
        }
    }

    /// Threads idle in futex waits.
    pub fn idle_threads(self) -> usize {
        self.processes * self.threads
    }

    /// Every thread the population runs: the pools, each reader and its writer, and the
    /// launcher.
    fn all_threads(self) -> usize {
        self.idle_threads() + 2 * self.pipe_readers + 1
    }
}

pub struct Population {
    launcher: Subject,
    size: PopulationSize,
}

impl Population {
    /// Compiles the launcher into `work_dir`, starts it, and waits up to `within`
    /// until every thread of the population sleeps in its final wait.
    pub fn start(
        size: PopulationSize,
        work_dir: &Path,
        within: Duration,
    ) -> Result<Population, Error> {
        let program = compile_c(work_dir, "idle_population", SOURCE)?;
        let mut command = Command::new(program);
        command
            .arg(size.processes.to_string())
            .arg(size.threads.to_string())
            .arg(size.pipe_readers.to_string())
            // One process group: the population is every process in it.
            .process_group(0);
        let started = Instant::now();
        let launcher = Subject::spawn("idle_population", command, within)?;
        let population = Population { launcher, size };
        loop {
            let settled = population.settled_threads();
            if settled == size.all_threads() {
                return Ok(population);
            }
            if started.elapsed() > within {
                return Err(Error::NotSettled {
                    settled,
                    expected: size.all_threads(),
                    within,
                });
            }
            thread::sleep(POLL);
        }
    }

    pub fn size(&self) -> PopulationSize {
        self.size
    }

    /// The launcher's pid, which is also the population's process group.
    fn group(&self) -> i32 {
        self.launcher.pids().get("pid").copied().unwrap_or(0)
    }

    /// Every process of the population.
    pub fn pids(&self) -> Vec<i32> {
        let group = self.group();
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| process_group(pid) == Some(group))
            .collect()
    }

    /// Threads of the population asleep in the syscall they end up in.
    fn settled_threads(&self) -> usize {
        self.pids()
            .into_iter()
            .filter_map(|pid| fs::read_dir(format!("/proc/{pid}/task")).ok())
            .flat_map(|tasks| tasks.flatten())
            .filter(|task| {
                fs::read_to_string(task.path().join("syscall")).is_ok_and(|text| {
                    text.split_whitespace()
                        .next()
                        .is_some_and(|nr| SETTLED_SYSCALLS.contains(&nr))
                })
            })
            .count()
    }
}

impl Drop for Population {
    fn drop(&mut self) {
        // The children die with the launcher (PR_SET_PDEATHSIG); killing the group also
        // covers one that forked before its parent's death was armed.
        let group = self.group();
        if group > 0 {
            process::signal(-group, libc::SIGKILL);
        }
    }
}

/// Field 5 of `/proc/PID/stat`, after the parenthesised command name.
fn process_group(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(2)?.parse().ok()
}
