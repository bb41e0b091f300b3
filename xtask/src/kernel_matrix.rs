//! `cargo xtask kernel-matrix`: the seed hangs and the healthy control on Debian's stock
//! kernels, each booted under QEMU with the host root shared read-only, so the agent's
//! "Linux ≥ 5.15" is tested on more than the host's kernel.
mod guest;
mod initramfs;
mod packages;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::system::{ensure_commands, say};

/// The kernels, as `apt-cache search --names-only` patterns: the newest of each series
/// in Debian 12's archive (6.12 comes from its backports).
const KERNELS: &[(&str, &str)] = &[
    ("6.1", r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"),
    ("6.12", r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$"),
];

/// The host programs the matrix runs: (command, Debian package).
const COMMANDS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    ("apt-get", "apt"),
    ("dpkg-deb", "dpkg"),
];

/// The test binary run in every guest: both seed hangs and the healthy control.
const TEST: &str = "seed_hangs";

/// Set to 1 to leave the matrix out of `cargo xtask test` on a developer machine.
const SKIP_VARIABLE: &str = "EXITWATCH_SKIP_KERNEL_MATRIX";

/// Whether `cargo xtask test` leaves the matrix out: only when a developer asks, never
/// in CI, where a skipped matrix would pass silently.
pub fn skipped_by_request() -> Result<bool> {
    if std::env::var(SKIP_VARIABLE).as_deref() != Ok("1") {
        return Ok(false);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        bail!("{SKIP_VARIABLE}=1 is refused when CI=true: CI always runs the kernel matrix");
    }
    say(format!(
        "{SKIP_VARIABLE}=1: skipping the kernel matrix (CI runs it)"
    ));
    Ok(true)
}

pub fn run(root: &Path) -> Result<()> {
    ensure_commands(COMMANDS, "the kernel matrix (QEMU guests)")?;
    let cache = root.join("target/kernel-matrix");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let (binary, dir) = build_test_binary(root)?;
    let test = initramfs::GuestTest {
        root,
        binary: &binary,
        dir: &dir,
    };
    let busybox_tree = packages::unpacked(&cache, "busybox-static")?;
    let busybox = busybox_tree.join("bin/busybox");

    let started = Instant::now();
    let mut results = Vec::new();
    for (series, pattern) in KERNELS {
        let package = packages::newest_matching(pattern)?;
        let tree = packages::unpacked(&cache, &package)?;
        let release = release_of(&tree)?;
        let work = cache.join("runs").join(series);
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let image = initramfs::build(&tree, &release, &busybox, &test, &work)?;
        let log = work.join("console.log");
        say(format!(
            "kernel {release}: booting under QEMU (TCG) to run {TEST}; console in {}",
            log.display()
        ));
        let kernel = tree.join("boot").join(format!("vmlinuz-{release}"));
        let timings = guest::run(&kernel, &image, &log)
            .with_context(|| format!("kernel {release} ({package})"))?;
        say(format!(
            "kernel {release}: passed (boot {:.1} s, tests {:.1} s)",
            timings.boot.as_secs_f64(),
            timings.tests.as_secs_f64()
        ));
        results.push((release, timings));
    }
    say(format!(
        "kernel matrix passed in {:.0} s:",
        started.elapsed().as_secs_f64()
    ));
    for (release, timings) in &results {
        say(format!(
            "  {release}: boot {}, {TEST} {}",
            seconds(timings.boot),
            seconds(timings.tests)
        ));
    }
    Ok(())
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// The kernel release (`6.1.0-57-amd64`): the one directory under `lib/modules`.
fn release_of(tree: &Path) -> Result<String> {
    let modules = tree.join("lib/modules");
    let mut releases = fs::read_dir(&modules)
        .with_context(|| format!("listing {}", modules.display()))?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("listing {}", modules.display()))?;
    match releases.as_mut_slice() {
        [release] => Ok(std::mem::take(release)),
        _ => bail!(
            "expected one kernel release in {}, found {releases:?}",
            modules.display()
        ),
    }
}

/// Builds the test binary on the host (the guest has no toolchain and sees the host's
/// files at the same paths); its path and the package directory it runs in.
fn build_test_binary(root: &Path) -> Result<(PathBuf, PathBuf)> {
    say(format!("building the {TEST} test binary"));
    let output = Command::new("cargo")
        .args(["test", "--package", "exitwatch", "--test", TEST, "--no-run"])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !output.status.success() {
        bail!("building the {TEST} test binary failed: {}", output.status);
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["target"]["name"] != TEST {
            continue;
        }
        let (Some(binary), Some(manifest)) = (
            message["executable"].as_str(),
            message["manifest_path"].as_str(),
        ) else {
            continue;
        };
        let dir = Path::new(manifest)
            .parent()
            .context("a manifest path without a directory")?;
        return Ok((PathBuf::from(binary), dir.to_path_buf()));
    }
    bail!("cargo built no {TEST} test executable")
}
