//! `cargo xtask build-ebpf`: kernel programs → target/bpf/exitwatch.bpf.o + fingerprint.
use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result};

use crate::{
    ebpf_fingerprint::{fingerprint, OBJECT, STAMP},
    system::{run_command, say},
    toolchain::{bpf_linker_dir, Toolchain},
};

const TARGET: &str = "bpfel-unknown-none";

/// `cargo <subcommand>` for the eBPF crate, with the flags and target directory of its
/// build, so a check sees exactly what the build compiles.
pub fn ebpf_cargo(
    root: &Path,
    toolchain: &Toolchain,
    extra_path: &[&Path],
    subcommand: &str,
) -> Command {
    let mut command = toolchain.cargo(extra_path);
    command
        .args([
            subcommand,
            "--release",
            "-Z",
            "build-std=core",
            "--target",
            TARGET,
        ])
        .env("CARGO_TARGET_DIR", root.join("target/ebpf"))
        .current_dir(root.join("ebpf"));
    command
}

pub fn build(root: &Path) -> Result<()> {
    let toolchain = Toolchain::find_or_install()?;
    let linker_dir = bpf_linker_dir()?;
    say("building the eBPF programs");
    run_command(&mut ebpf_cargo(root, &toolchain, &[&linker_dir], "build"))
        .context("building the eBPF programs")?;

    let built = root
        .join("target/ebpf")
        .join(TARGET)
        .join("release/exitwatch");
    let object = root.join(OBJECT);
    if let Some(dir) = object.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    let stamp = fingerprint(root).context("fingerprinting the eBPF sources")?;
    fs::write(root.join(STAMP), &stamp).context("writing the eBPF fingerprint")?;
    say(format!("eBPF object ready: {OBJECT} (sources {stamp})"));
    Ok(())
}
