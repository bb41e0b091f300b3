//! `cargo xtask build-ebpf`: kernel programs → target/bpf/exitwatch.bpf.o + fingerprint.
use std::{fs, path::Path};

use anyhow::{Context, Result};

use crate::{
    ebpf_fingerprint::{fingerprint, OBJECT, STAMP},
    system::{run_command, say},
    toolchain::{bpf_linker_dir, Toolchain},
};

const TARGET: &str = "bpfel-unknown-none";

pub fn build(root: &Path) -> Result<()> {
    let toolchain = Toolchain::find_or_install()?;
    let linker_dir = bpf_linker_dir()?;
    let target_dir = root.join("target/ebpf");
    say("building the eBPF programs");
    let path = format!(
        "{}:{}",
        linker_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run_command(
        toolchain
            .cargo()
            .args([
                "build",
                "--release",
                "-Z",
                "build-std=core",
                "--target",
                TARGET,
            ])
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("PATH", path)
            .current_dir(root.join("ebpf")),
    )
    .context("building the eBPF programs")?;

    let built = target_dir.join(TARGET).join("release/exitwatch");
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
