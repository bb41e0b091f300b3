//! Reads that can block for as long as another process wants: reading its memory (or
//! anything the kernel fetches from it: `cmdline`, `maps`) waits for its mmap lock, and
//! opening or reading a file it maps can wait for a FUSE server it runs. Such reads run
//! on a worker thread and are given up after [`DEADLINE`]; the stuck worker is abandoned
//! (it ends whenever its read returns) and a fresh one takes over. The process it is
//! stuck on gets no further slow reads while it stays stuck: each would only strand
//! another thread on the same lock.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

/// Long enough for a loaded host (these reads take microseconds), short enough that a
/// scan with a few slow processes still finishes well within its interval.
pub const DEADLINE: Duration = Duration::from_millis(200);
/// How long a process whose read timed out has its slow reads refused outright, at least:
/// while the abandoned worker is still stuck on it, they stay refused however long.
const SLOW_FOR: Duration = Duration::from_secs(30);
/// Abandoned workers still blocked; past this, slow reads fail at once as timeouts
/// (each one is a thread the kernel holds; a hostile host could otherwise pile them up).
const MAX_ABANDONED: usize = 8;
/// Processes remembered as slow; beyond this, the oldest entries are dropped.
const MAX_SLOW: usize = 1024;
/// Unwinding and symbolizing a stack (DWARF parsing) run on the worker too, and need
/// more than the small reads do; only the pages touched are ever backed.
const WORKER_STACK_BYTES: usize = 4 << 20;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug)]
struct Worker {
    jobs: mpsc::Sender<Job>,
    /// Set by the thread once its queue is closed and its last job returned.
    ended: Arc<AtomicBool>,
}

/// A worker given up on, and the process (pid, start time) whose read it is stuck in.
#[derive(Debug)]
struct Abandoned {
    pid: i32,
    start: Option<u64>,
    ended: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct State {
    worker: Option<Worker>,
    /// pid → (start time in ticks, refused until).
    slow: HashMap<i32, (Option<u64>, Instant)>,
    /// Abandoned workers; those that ended are dropped at the next read.
    abandoned: Vec<Abandoned>,
}

/// One worker at a time per `Deadline`; callers take turns while holding the lock, so one
/// waits up to [`DEADLINE`] for each caller ahead of it, then up to [`DEADLINE`] for its
/// own read. Callers that must not wait for each other use separate `Deadline`s.
#[derive(Debug, Default)]
pub struct Deadline {
    state: Mutex<State>,
    timeouts: AtomicU64,
}

/// The read did not finish in time (or the process is known to be slow).
#[derive(Debug)]
pub struct TimedOut;

impl Deadline {
    /// Runs `job` on the worker; `start` gives the process's start time, read (once) only
    /// when the process is or becomes a slow one (so a reused pid is not refused).
    pub fn run<T: Send + 'static>(
        &self,
        pid: i32,
        start: impl Fn() -> Option<u64>,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, TimedOut> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        state
            .abandoned
            .retain(|worker| !worker.ended.load(Ordering::SeqCst));
        let mut started = None;
        let mut start = || *started.get_or_insert_with(&start);
        let stuck_on = |worker: &Abandoned| worker.pid == pid && worker.start == start();
        if state.abandoned.iter().any(stuck_on) {
            return Err(TimedOut);
        }
        if let Some(&(slow_since, until)) = state.slow.get(&pid) {
            if now < until && start() == slow_since {
                return Err(TimedOut);
            }
            state.slow.remove(&pid);
        }
        let (sender, receiver) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = sender.send(job());
        });
        if self.worker(&mut state)?.jobs.send(job).is_err() {
            // The worker thread died (it cannot panic, but a dead one is just replaced).
            state.worker = None;
            return Err(TimedOut);
        }
        match receiver.recv_timeout(DEADLINE) {
            Ok(result) => Ok(result),
            Err(_) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                let start = start();
                if let Some(worker) = state.worker.take() {
                    // Dropping `worker.jobs` closes its queue, so the thread ends (and
                    // says so) once its read returns.
                    state.abandoned.push(Abandoned {
                        pid,
                        start,
                        ended: worker.ended,
                    });
                }
                if state.slow.len() >= MAX_SLOW {
                    state.slow.retain(|_, (_, until)| *until > now);
                }
                if state.slow.len() < MAX_SLOW {
                    state.slow.insert(pid, (start, now + SLOW_FOR));
                }
                log::debug!("a read of pid {pid}'s memory or files took over {DEADLINE:?}");
                Err(TimedOut)
            }
        }
    }

    /// Reads given up so far: past the deadline, or refused because too many workers are
    /// stuck (not those of processes already known to be slow).
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    fn worker<'a>(&self, state: &'a mut State) -> Result<&'a Worker, TimedOut> {
        if state.worker.is_none() {
            if state.abandoned.len() >= MAX_ABANDONED {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(TimedOut);
            }
            let (jobs, queue) = mpsc::channel::<Job>();
            let ended = Arc::new(AtomicBool::new(false));
            let flag = ended.clone();
            thread::Builder::new()
                .name("exitwatch-read".into())
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                    flag.store(true, Ordering::SeqCst);
                })
                .map_err(|error| {
                    log::warn!("cannot start a /proc reader thread: {error}");
                    TimedOut
                })?;
            state.worker = Some(Worker { jobs, ended });
        }
        state.worker.as_ref().ok_or(TimedOut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Abandoned workers whose read has not returned yet.
    fn stuck_workers(deadline: &Deadline) -> usize {
        let state = deadline.state.lock().unwrap();
        let alive = |worker: &&Abandoned| !worker.ended.load(Ordering::SeqCst);
        state.abandoned.iter().filter(alive).count()
    }

    fn wait_until_unstuck(deadline: &Deadline) {
        let until = Instant::now() + Duration::from_secs(10);
        while stuck_workers(deadline) > 0 && Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(stuck_workers(deadline), 0, "the worker ended");
    }

    #[test]
    fn quick_jobs_return_their_result() {
        let deadline = Deadline::default();
        assert_eq!(deadline.run(1, || None, || 7).unwrap(), 7);
        assert_eq!(deadline.run(1, || None, || 8).unwrap(), 8);
        assert_eq!(deadline.timeouts(), 0);
    }

    #[test]
    fn a_stuck_job_times_out_and_its_process_is_skipped_until_it_restarts() {
        let deadline = Deadline::default();
        let (release, blocked) = mpsc::channel::<()>();
        let started = Instant::now();
        let stuck = deadline.run(5, || Some(100), move || blocked.recv().is_ok());
        assert!(stuck.is_err());
        assert!(started.elapsed() < DEADLINE * 5, "{:?}", started.elapsed());
        // Same process: refused without running anything.
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        assert!(deadline
            .run(5, || Some(100), move || flag.store(true, Ordering::SeqCst))
            .is_err());
        assert!(!ran.load(Ordering::SeqCst));
        // Another process, or the pid reused by a new process: a fresh worker serves it.
        assert_eq!(deadline.run(6, || Some(1), || 6).unwrap(), 6);
        assert_eq!(deadline.run(5, || Some(200), || 5).unwrap(), 5);
        assert_eq!(deadline.timeouts(), 1);
        assert_eq!(stuck_workers(&deadline), 1);
        release.send(()).unwrap();
        wait_until_unstuck(&deadline);
    }

    #[test]
    fn a_process_stays_refused_while_a_worker_is_stuck_on_it() {
        let deadline = Deadline::default();
        let (release, blocked) = mpsc::channel::<()>();
        assert!(deadline
            .run(5, || Some(100), move || blocked.recv().is_ok())
            .is_err());
        // As if SLOW_FOR had passed.
        let expire = |deadline: &Deadline| {
            let mut state = deadline.state.lock().unwrap();
            for (_, until) in state.slow.values_mut() {
                *until = Instant::now();
            }
        };
        expire(&deadline);
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let (_hold, second) = mpsc::channel::<()>();
        let retry = deadline.run(
            5,
            || Some(100),
            move || {
                flag.store(true, Ordering::SeqCst);
                second.recv().is_ok()
            },
        );
        assert!(retry.is_err());
        assert!(
            !ran.load(Ordering::SeqCst),
            "the stuck process got another read"
        );
        assert_eq!(stuck_workers(&deadline), 1);
        assert_eq!(deadline.timeouts(), 1);
        // Once the stuck read returned, the process is read again.
        release.send(()).unwrap();
        wait_until_unstuck(&deadline);
        assert_eq!(deadline.run(5, || Some(100), || 5).unwrap(), 5);
    }

    #[test]
    fn abandoned_workers_are_capped() {
        let deadline = Deadline::default();
        let mut releases = Vec::new();
        for pid in 0..MAX_ABANDONED as i32 {
            let (release, blocked) = mpsc::channel::<()>();
            releases.push(release);
            assert!(deadline.run(pid, || None, move || blocked.recv()).is_err());
        }
        // Over the cap, even a quick read fails, at once.
        let started = Instant::now();
        assert!(deadline.run(1000, || None, || 1).is_err());
        assert!(started.elapsed() < DEADLINE);
        assert_eq!(deadline.timeouts(), MAX_ABANDONED as u64 + 1);
        drop(releases);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match deadline.run(1000, || None, || 1) {
                Ok(value) => break assert_eq!(value, 1),
                Err(_) if Instant::now() < until => thread::sleep(Duration::from_millis(10)),
                Err(_) => panic!("no worker came back after the stuck reads returned"),
            }
        }
    }
}
