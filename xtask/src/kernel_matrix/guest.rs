//! One QEMU guest: boots a kernel under TCG (no usable KVM on the machines this runs on),
//! follows its serial console in a log file, and enforces the time limit.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::initramfs::{BOOTED, MARK, ROOT_TAG, STATUS, TESTING};

/// How long one kernel may take from QEMU's start to power-off. A run takes about 4
/// minutes; the rest is room for a loaded machine, not for a hang.
const TIME_LIMIT: Duration = Duration::from_secs(12 * 60);
/// Lines of the console shown when a guest fails.
const TAIL_LINES: usize = 80;

pub struct Timings {
    /// QEMU start to the first line of the init script.
    pub boot: Duration,
    /// The test binary's start to its exit status.
    pub tests: Duration,
}

/// Boots `kernel` with `initramfs`, the host root shared read-only, and waits for the
/// test status the init script prints; fails unless it is 0.
pub fn run(kernel: &Path, initramfs: &Path, log: &Path) -> Result<Timings> {
    let console = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let console_err = console
        .try_clone()
        .with_context(|| format!("sharing {}", log.display()))?;
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "3G"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        // panic=-1 reboots at once, which -no-reboot turns into QEMU exiting.
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
        .args([
            "-fsdev",
            &format!("local,id={ROOT_TAG},path=/,security_model=none,readonly=on,multidevs=remap"),
            "-device",
            &format!("virtio-9p-pci,fsdev={ROOT_TAG},mount_tag={ROOT_TAG}"),
        ])
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console_err)
        .spawn()
        .context("starting qemu-system-x86_64")?;

    let mut booted = None;
    let mut testing = None;
    let outcome = loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if booted.is_none() && text.contains(BOOTED) {
            booted = Some(started.elapsed());
        }
        if testing.is_none() && text.contains(TESTING) {
            testing = Some(Instant::now());
        }
        if let Some(status) = test_status(&text) {
            break Ok(status);
        }
        if let Some(exit) = qemu.try_wait().context("polling qemu")? {
            break Err(format!("the guest stopped ({exit}) without a test status"));
        }
        if started.elapsed() > TIME_LIMIT {
            break Err(format!("no test status within {TIME_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let tests = testing.map(|since| since.elapsed());
    // A guest with a status powers off by itself right after it; one without is stuck.
    let grace = if outcome.is_ok() {
        Duration::from_secs(30)
    } else {
        Duration::ZERO
    };
    let stopping = Instant::now();
    while qemu.try_wait().context("polling qemu")?.is_none() {
        if stopping.elapsed() >= grace {
            qemu.kill().context("killing qemu")?;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let failure = match outcome {
        Ok(0) => None,
        Ok(status) => Some(format!("the tests failed (exit status {status})")),
        Err(problem) => Some(problem),
    };
    if let Some(failure) = failure {
        bail!(
            "{failure}; console log {}, last {TAIL_LINES} lines:\n{}",
            log.display(),
            tail(log)
        );
    }
    Ok(Timings {
        boot: booted.context("the guest never printed its boot line")?,
        tests: tests.context("the guest never started the tests")?,
    })
}

/// The status after `STATUS` in the console text, once the line is complete.
fn test_status(text: &str) -> Option<i32> {
    let (_, rest) = text.split_once(STATUS)?;
    let (line, _) = rest.split_once('\n')?;
    line.split_whitespace().next()?.parse().ok()
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    let setup_failures = lines[..start].iter().filter(|line| line.contains(MARK));
    // Marker lines from before the tail (module loading) explain most setup failures.
    setup_failures
        .chain(&lines[start..])
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::test_status;

    #[test]
    fn status_is_read_from_a_complete_line_only() {
        let line = "exitwatch-kernel-matrix: test status ";
        assert_eq!(test_status(&format!("boot\n{line}0 at 9.1 s")), None);
        assert_eq!(
            test_status(&format!("boot\n{line}101 at 9.1 s\n")),
            Some(101)
        );
        assert_eq!(test_status("boot\n"), None);
    }
}
