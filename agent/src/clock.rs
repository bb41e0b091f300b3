//! The probes time things on the monotonic clock; people read wall-clock time.
use std::time::{Duration, SystemTime};

/// Both clocks read at one instant, to convert between them.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub monotonic_ns: u64,
    pub wall: SystemTime,
}

impl Clock {
    pub fn now() -> Self {
        Self {
            monotonic_ns: monotonic_ns(),
            wall: SystemTime::now(),
        }
    }

    pub fn monotonic_to_wall(&self, ns: u64) -> SystemTime {
        let ago = Duration::from_nanos(self.monotonic_ns.saturating_sub(ns));
        self.wall.checked_sub(ago).unwrap_or(self.wall)
    }

    /// Seconds from `then` until this instant (0 if `then` is later).
    pub fn seconds_since(&self, then: SystemTime) -> f64 {
        self.wall
            .duration_since(then)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
