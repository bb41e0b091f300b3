//! Puts a task's `se.exec_start` on the monotonic clock. The scheduler's clock leaves out
//! time spent in interrupts and stolen by a hypervisor, which adds up with uptime, and it
//! does so per CPU: after nine hours, the two CPUs of a 2-CPU VM lagged the monotonic
//! clock by 24.55 s and 25.09 s. One lag for all CPUs misdates a sleep by the difference,
//! so each CPU's lag is measured where the task last ran, by moving the calling thread
//! there for one read (once per CPU per use of a [`SchedClock`]).
use std::{cell::RefCell, collections::BTreeMap, mem};

use super::ProcFs;

pub struct SchedClock<'a> {
    procfs: &'a ProcFs,
    lags: RefCell<BTreeMap<u32, u64>>,
}

impl<'a> SchedClock<'a> {
    pub fn new(procfs: &'a ProcFs) -> Self {
        Self {
            procfs,
            lags: RefCell::new(BTreeMap::new()),
        }
    }

    /// `exec_start_ns` of a task that last ran on `cpu`, on the monotonic clock.
    pub fn monotonic_ns(&self, exec_start_ns: u64, cpu: u32) -> u64 {
        let lag = *self
            .lags
            .borrow_mut()
            .entry(cpu)
            .or_insert_with(|| self.lag_on(cpu));
        exec_start_ns.saturating_add(lag)
    }

    /// The lag on `cpu`, or on whichever CPU this thread runs when it may not run on
    /// `cpu` (outside its cpuset, or offline): off by a CPU's difference, not more.
    fn lag_on(&self, cpu: u32) -> u64 {
        on_cpu(cpu, || self.procfs.sched_clock_lag_ns())
            .unwrap_or_else(|| self.procfs.sched_clock_lag_ns())
    }
}

/// `f` run by the calling thread while it is pinned to `cpu`; its affinity is restored
/// after. `None` when it may not run there.
fn on_cpu<T>(cpu: u32, f: impl FnOnce() -> T) -> Option<T> {
    let cpu = usize::try_from(cpu).ok()?;
    if cpu >= libc::CPU_SETSIZE as usize {
        return None;
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; the calls get its true size, and 0
    // names the calling thread.
    unsafe {
        let mut saved: libc::cpu_set_t = mem::zeroed();
        if libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut saved) != 0 {
            return None;
        }
        let mut only: libc::cpu_set_t = mem::zeroed();
        libc::CPU_SET(cpu, &mut only);
        // The kernel has moved the thread to `cpu` by the time this returns.
        if libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &only) != 0 {
            return None;
        }
        let value = f();
        libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &saved);
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cpu_gets_its_own_lag_and_the_thread_its_affinity_back() {
        let procfs = ProcFs::default();
        let clock = SchedClock::new(&procfs);
        // SAFETY: as in `on_cpu`.
        let (before, cpus) = unsafe {
            let mut set: libc::cpu_set_t = mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            let cpus: Vec<u32> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
                .map(|cpu| cpu as u32)
                .collect();
            (set, cpus)
        };
        for &cpu in &cpus {
            let on = on_cpu(cpu, || unsafe { libc::sched_getcpu() });
            assert_eq!(on, Some(cpu as i32), "not moved to CPU {cpu}");
            clock.monotonic_ns(0, cpu);
        }
        assert_eq!(clock.lags.borrow().len(), cpus.len());
        // SAFETY: as above.
        unsafe {
            let mut after: libc::cpu_set_t = mem::zeroed();
            libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut after);
            assert!(libc::CPU_EQUAL(&before, &after), "affinity not restored");
        }
        assert_eq!(on_cpu(libc::CPU_SETSIZE as u32, || ()), None);
    }
}
