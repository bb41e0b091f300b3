//! The reference: a bpftrace script tracking the same waits the usual way, with syscall
//! tracepoints (`reference.bt`).
use std::{
    fs,
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::Layout;

pub const SCRIPT: &str = include_str!("reference.bt");
const ATTACHED: &str = "REFERENCE-ATTACHED";

pub struct Reference {
    child: Child,
}

impl Reference {
    /// Starts bpftrace pinned to `cpu` and waits for its BEGIN line, printed once every
    /// probe is attached.
    pub fn start(layout: &Layout, cpu: Option<usize>) -> Result<Reference> {
        let script = layout.work.join("reference.bt");
        fs::write(&script, SCRIPT).context("writing the bpftrace script")?;
        let mut command = super::pinned("bpftrace", cpu);
        command
            .args(["-B", "line"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().context("starting bpftrace")?;
        let stdout = child.stdout.take().context("bpftrace stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains(ATTACHED) {
                    let _ = tx.send(());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut reference = Reference { child };
        loop {
            if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                return Ok(reference);
            }
            if let Some(status) = reference.child.try_wait()? {
                bail!("bpftrace exited before attaching: {status}");
            }
            if Instant::now() > deadline {
                bail!("bpftrace did not attach within 120 s");
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT (bpftrace's normal stop), SIGKILL if it lingers.
    pub fn stop(mut self) -> Result<()> {
        exitwatch_testkit::stop(&mut self.child, libc::SIGINT, Duration::from_secs(30))?;
        Ok(())
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
