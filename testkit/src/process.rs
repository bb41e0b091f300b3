//! Signals and waits for child processes.
use std::{
    io,
    process::{Child, ExitStatus},
    thread,
    time::{Duration, Instant},
};

/// How often a waiting loop looks again: short next to every deadline here.
const POLL: Duration = Duration::from_millis(20);

/// Sends `signal_number` to `pid`; a process that is already gone is no error.
pub fn signal(pid: i32, signal_number: i32) {
    // SAFETY: a plain syscall with no memory passed; a stale pid only yields ESRCH.
    unsafe { libc::kill(pid, signal_number) };
}

/// The child's exit status once it exits, or `None` once `within` has passed (it is left
/// running).
pub fn wait_for_exit(child: &mut Child, within: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

/// Sends `signal_number` and waits up to `within` for the child to exit: its status, or
/// `None` if it lingered and was killed.
pub fn stop(
    child: &mut Child,
    signal_number: i32,
    within: Duration,
) -> io::Result<Option<ExitStatus>> {
    // Ids of running processes fit in an i32 (pid_max is at most 2^22).
    signal(child.id() as i32, signal_number);
    let status = wait_for_exit(child, within)?;
    if status.is_none() {
        child.kill()?;
        child.wait()?;
    }
    Ok(status)
}
