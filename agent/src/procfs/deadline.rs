//! Reads that can block for as long as another process wants: reading its memory (or
//! anything the kernel fetches from it: `cmdline`, `maps`) waits for its mmap lock, and
//! opening or reading a file it maps can wait for a FUSE server it runs. Such reads run
//! on a worker thread and are given up after [`DEADLINE`]; the stuck worker is abandoned
//! (it ends whenever its read returns) and a fresh one takes over.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

/// Long enough for a loaded host (these reads take microseconds), short enough that a
/// scan with a few slow processes still finishes well within its interval.
pub const DEADLINE: Duration = Duration::from_millis(200);
/// How long a process whose read timed out has its slow reads refused outright.
const SLOW_FOR: Duration = Duration::from_secs(30);
/// Abandoned workers still blocked; past this, slow reads fail at once as timeouts
/// (each one is a thread the kernel holds; a hostile host could otherwise pile them up).
const MAX_ABANDONED: usize = 8;
/// Processes remembered as slow; beyond this, the oldest entries are dropped.
const MAX_SLOW: usize = 1024;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug)]
struct Worker {
    jobs: mpsc::Sender<Job>,
    abandoned: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct State {
    worker: Option<Worker>,
    /// pid → (start time in ticks, refused until).
    slow: HashMap<i32, (Option<u64>, Instant)>,
}

/// One worker at a time per `Deadline`; callers take turns, each waiting at most
/// [`DEADLINE`] for the lock and [`DEADLINE`] for its read.
#[derive(Debug, Default)]
pub struct Deadline {
    state: Mutex<State>,
    stuck: Arc<AtomicUsize>,
    timeouts: AtomicU64,
}

/// The read did not finish in time (or the process is known to be slow).
#[derive(Debug)]
pub struct TimedOut;

impl Deadline {
    /// Runs `job` on the worker; `start` gives the process's start time, read only when
    /// the process is or becomes a slow one (so a reused pid is not refused).
    pub fn run<T: Send + 'static>(
        &self,
        pid: i32,
        start: impl Fn() -> Option<u64>,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, TimedOut> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(&(started, until)) = state.slow.get(&pid) {
            if now < until && start() == started {
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
                if let Some(worker) = state.worker.take() {
                    // Order matters: the worker counts itself out only after it sees its
                    // queue closed, which happens when `worker` drops below.
                    self.stuck.fetch_add(1, Ordering::SeqCst);
                    worker.abandoned.store(true, Ordering::SeqCst);
                }
                if state.slow.len() >= MAX_SLOW {
                    state.slow.retain(|_, (_, until)| *until > now);
                }
                if state.slow.len() < MAX_SLOW {
                    state.slow.insert(pid, (start(), now + SLOW_FOR));
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
            if self.stuck.load(Ordering::SeqCst) >= MAX_ABANDONED {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(TimedOut);
            }
            let (jobs, queue) = mpsc::channel::<Job>();
            let abandoned = Arc::new(AtomicBool::new(false));
            let (flag, stuck) = (abandoned.clone(), self.stuck.clone());
            thread::Builder::new()
                .name("exitwatch-read".into())
                .stack_size(64 * 1024)
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                    if flag.load(Ordering::SeqCst) {
                        stuck.fetch_sub(1, Ordering::SeqCst);
                    }
                })
                .map_err(|error| {
                    log::warn!("cannot start a /proc reader thread: {error}");
                    TimedOut
                })?;
            state.worker = Some(Worker { jobs, abandoned });
        }
        state.worker.as_ref().ok_or(TimedOut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(deadline.stuck.load(Ordering::SeqCst), 1);
        release.send(()).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while deadline.stuck.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(deadline.stuck.load(Ordering::SeqCst), 0, "the worker ended");
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
