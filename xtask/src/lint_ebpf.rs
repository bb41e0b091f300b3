//! `cargo xtask lint-ebpf`: the kernel crate is outside the workspace (it builds for
//! another target with its own profile), so the workspace's fmt and clippy miss it. As
//! aya-template does, lint it separately, with the toolchain and flags of its build.
use std::{path::Path, process::Command};

use anyhow::{Context, Result};

use crate::{
    build_ebpf::ebpf_cargo,
    system::{run_command, say},
    toolchain::Toolchain,
};

pub fn lint(root: &Path) -> Result<()> {
    say("checking the eBPF crate's formatting");
    // Formatting needs no target: the outer toolchain's rustfmt, as for the workspace.
    run_command(
        Command::new("cargo")
            .args(["fmt", "--check"])
            .current_dir(root.join("ebpf")),
    )
    .context("the eBPF crate is not formatted: run `cargo fmt` in ebpf/")?;

    let toolchain = Toolchain::find_or_install()?;
    toolchain.ensure_clippy()?;
    say("running clippy on the eBPF crate");
    let mut clippy = ebpf_cargo(root, &toolchain, &[], "clippy");
    clippy.args(["--", "-D", "warnings"]);
    run_command(&mut clippy).context("clippy found problems in the eBPF crate")
}
