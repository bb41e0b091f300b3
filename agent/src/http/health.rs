//! What `/healthz` answers: whether scans still complete, the probes' event loop still
//! runs, and the agent is not shutting down.
use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use crate::clock::monotonic_ns;

/// Scans this many intervals late mean the scanner is stuck.
const STALE_AFTER_INTERVALS: u32 = 3;

pub struct Health {
    scan_interval: Duration,
    /// Monotonic time of the last completed scan (of start-up until the first).
    last_scan_ns: AtomicU64,
    events_stopped: AtomicBool,
    shutting_down: AtomicBool,
}

/// Sets the event-loop flag when dropped: when the loop returns, panics or is cancelled.
pub struct EventLoopAlive<'a>(&'a Health);

impl Drop for EventLoopAlive<'_> {
    fn drop(&mut self) {
        self.0.events_stopped.store(true, Ordering::Relaxed);
    }
}

impl Health {
    pub fn new(scan_interval: Duration) -> Health {
        Health {
            scan_interval,
            last_scan_ns: AtomicU64::new(monotonic_ns()),
            events_stopped: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
        }
    }

    pub fn scan_completed(&self) {
        self.last_scan_ns.store(monotonic_ns(), Ordering::Relaxed);
    }

    pub fn event_loop_alive(&self) -> EventLoopAlive<'_> {
        EventLoopAlive(self)
    }

    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// `Err(reason)` when the agent is not doing its job.
    pub fn check(&self) -> Result<(), String> {
        verdict(
            Duration::from_nanos(
                monotonic_ns().saturating_sub(self.last_scan_ns.load(Ordering::Relaxed)),
            ),
            self.scan_interval,
            self.events_stopped.load(Ordering::Relaxed),
            self.shutting_down.load(Ordering::Relaxed),
        )
    }
}

fn verdict(
    since_scan: Duration,
    scan_interval: Duration,
    events_stopped: bool,
    shutting_down: bool,
) -> Result<(), String> {
    if shutting_down {
        return Err("shutting down".to_string());
    }
    if events_stopped {
        return Err("the probes' event loop has stopped (exec discovery is off)".to_string());
    }
    if since_scan > scan_interval * STALE_AFTER_INTERVALS {
        return Err(format!(
            "last scan {:.1} s ago (scan interval {})",
            since_scan.as_secs_f64(),
            humantime::format_duration(scan_interval)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn healthy_while_scans_are_recent() {
        assert_eq!(verdict(Duration::ZERO, SECOND, false, false), Ok(()));
        assert_eq!(verdict(3 * SECOND, SECOND, false, false), Ok(()));
    }

    #[test]
    fn stale_scans_are_named() {
        assert_eq!(
            verdict(Duration::from_millis(7200), SECOND, false, false),
            Err("last scan 7.2 s ago (scan interval 1s)".to_string())
        );
    }

    #[test]
    fn a_dead_event_loop_or_shutdown_is_unhealthy() {
        assert!(verdict(Duration::ZERO, SECOND, true, false)
            .is_err_and(|reason| reason.contains("event loop")));
        assert_eq!(
            verdict(Duration::ZERO, SECOND, false, true),
            Err("shutting down".to_string())
        );
    }

    #[test]
    fn the_event_loop_guard_sets_the_flag_when_dropped() {
        let health = Health::new(SECOND);
        let alive = health.event_loop_alive();
        assert_eq!(health.check(), Ok(()));
        drop(alive);
        assert!(health.check().is_err());
    }
}
