//! Running commands and installing Debian packages, loudly.
use std::{
    ffi::OsStr,
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Context, Result};

pub fn say(message: impl AsRef<str>) {
    eprintln!("xtask: {}", message.as_ref());
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

pub fn run_command(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

pub fn run<S: AsRef<OsStr>>(dir: &Path, program: &str, args: &[S]) -> Result<()> {
    run_command(Command::new(program).args(args).current_dir(dir))
}

/// Runs `command` as root: directly when we are root, through `sudo -E` otherwise.
pub fn run_as_root(dir: &Path, command: &[String]) -> Result<()> {
    let Some((program, args)) = command.split_first() else {
        bail!("empty command");
    };
    if is_root() {
        return run(dir, program, args);
    }
    say(format!(
        "{program} needs root (BPF, /proc of other users): using sudo"
    ));
    let path = std::env::var("PATH").unwrap_or_default();
    let mut sudo = Command::new("sudo");
    sudo.arg("-E")
        .arg("env")
        .arg(format!("PATH={path}"))
        .arg(program)
        .args(args)
        .current_dir(dir);
    run_command(&mut sudo)
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// `apt-get ARGS` as root (through `sudo` when we are not), non-interactively.
fn apt_get(args: &[&str]) -> Result<()> {
    let mut command = if is_root() {
        Command::new("apt-get")
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("apt-get");
        sudo
    };
    run_command(command.args(args).env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Refreshes the package lists, at most once per xtask run.
pub fn apt_update_once() -> Result<()> {
    if APT_UPDATED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    apt_get(&["update", "-q"])
}

/// Installs Debian packages, saying which and why; fails with the manual command where
/// apt is not available.
pub fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    let list = packages.join(" ");
    if !have("apt-get") {
        bail!("{why} needs the packages `{list}` (or their equivalent); install them and retry");
    }
    say(format!("installing {list} ({why})"));
    apt_update_once()?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend_from_slice(packages);
    apt_get(&install)
}

/// Installs the Debian packages of whichever `(command, package)` is missing.
pub fn ensure_commands(needed: &[(&str, &str)], why: &str) -> Result<()> {
    let missing = missing_packages(needed);
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing, why)
}

/// The packages of `needed` (command, Debian package) whose command is not on PATH.
pub fn missing_packages<'a>(needed: &[(&str, &'a str)]) -> Vec<&'a str> {
    let mut missing: Vec<&str> = needed
        .iter()
        .filter(|(command, _)| !have(command))
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    missing
}
