//! `cargo xtask dist`: the release tarball, `target/dist/exitwatch-VERSION-x86_64-linux.tar.gz`,
//! with a statically linked agent, the systemd unit, dashboards, alert rules, licences
//! and `sha256sums`.
mod linkage;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::system::{ensure_commands, run, run_command, say};

/// Tells the release tests (`agent/tests/release_tarball.rs`) which tarball to unpack.
pub const TARBALL_VAR: &str = "EXITWATCH_DIST_TARBALL";
const TARGET: &str = "x86_64-unknown-linux-gnu";
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The programs packing takes: (command, Debian package).
const COMMANDS: &[(&str, &str)] = &[
    ("readelf", "binutils"),
    ("tar", "tar"),
    ("sha256sum", "coreutils"),
];

/// Files of the tarball: (source relative to the workspace root, path in the tarball, mode).
const FILES: &[(&str, &str, u32)] = &[
    ("deploy/README.dist.md", "README.md", 0o644),
    ("deploy/exitwatch.service", "exitwatch.service", 0o644),
    ("deploy/web-config.yml", "web-config.yml", 0o644),
    (
        "dashboards/exitwatch.json",
        "dashboards/exitwatch.json",
        0o644,
    ),
    ("dashboards/alerts.yml", "dashboards/alerts.yml", 0o644),
    ("dashboards/README.md", "dashboards/README.md", 0o644),
    ("LICENSE-MIT", "LICENSE-MIT", 0o644),
    ("LICENSE-APACHE", "LICENSE-APACHE", 0o644),
];

/// `exitwatch-VERSION-x86_64-linux`: the tarball's top directory and file stem.
pub fn name() -> String {
    format!("exitwatch-{VERSION}-x86_64-linux")
}

/// Builds the static agent (the eBPF object must be built already) and packs the
/// tarball; returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    ensure_commands(COMMANDS, "the release tarball")?;
    let binary = build_static_agent(root)?;
    linkage::check_static(&binary)?;
    let dist = root.join("target/dist");
    let staging = dist.join(name());
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("removing the old {}", staging.display()))?;
    }
    copy(&binary, &staging.join("exitwatch"), 0o755)?;
    for (source, destination, mode) in FILES {
        copy(&root.join(source), &staging.join(destination), *mode)?;
    }
    write_sha256sums(&staging)?;
    let tarball = dist.join(format!("{}.tar.gz", name()));
    // Owners and order fixed, so the archive says nothing about the build machine.
    run(
        &dist,
        "tar",
        &[
            "--create",
            "--gzip",
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--file",
            &tarball.to_string_lossy(),
            &name(),
        ],
    )
    .context("packing the tarball")?;
    say(format!("release tarball ready: {}", tarball.display()));
    Ok(tarball)
}

/// The agent built as the bench builds it (`cargo build --release`), but for an explicit
/// target with glibc linked statically: the explicit target keeps `+crt-static` away from
/// build scripts and proc macros (which must stay dynamic) and leaves `target/release`
/// to the dynamic builds of `cargo xtask run` and the bench.
fn build_static_agent(root: &Path) -> Result<PathBuf> {
    say(format!("building the static release agent for {TARGET}"));
    let flags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        TARGET.to_uppercase().replace('-', "_")
    );
    run_command(
        Command::new("cargo")
            .args(["build", "--release", "--package", "exitwatch"])
            .args(["--target", TARGET])
            .env(flags_var, "-C target-feature=+crt-static")
            .current_dir(root),
    )
    .context("building the static agent")?;
    Ok(root.join("target").join(TARGET).join("release/exitwatch"))
}

fn copy(source: &Path, destination: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = destination.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(source, destination)
        .with_context(|| format!("copying {} to {}", source.display(), destination.display()))?;
    fs::set_permissions(destination, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", destination.display()))
}

/// `sha256sums` in the format `sha256sum --check` reads, over every other file.
fn write_sha256sums(staging: &Path) -> Result<()> {
    let mut files = Vec::new();
    collect_files(staging, staging, &mut files)?;
    files.sort();
    let output = Command::new("sha256sum")
        .arg("--")
        .args(&files)
        .current_dir(staging)
        .output()
        .context("running sha256sum (coreutils)")?;
    if !output.status.success() {
        bail!(
            "sha256sum failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    fs::write(staging.join("sha256sums"), output.stdout).context("writing sha256sums")
}

/// Paths of the regular files under `dir`, relative to `base`.
fn collect_files(base: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.is_dir() {
            collect_files(base, &path, files)?;
        } else {
            files.push(path.strip_prefix(base).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}
