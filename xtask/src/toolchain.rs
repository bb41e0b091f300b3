//! Finding (or installing) a compiler that can build `core` for `bpfel-unknown-none`, its
//! clippy, and `bpf-linker`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::system::{apt_install, have, run_command, say};

/// LLVM major version of Debian's `rustc-web`; bpf-linker must link the same one.
const LLVM_MAJOR: u32 = 22;
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Installed by `rust-web-clippy`, the clippy matching `rustc-web`.
const DEBIAN_CLIPPY_DRIVER: &str = "/usr/bin/clippy-driver";

/// How to invoke cargo so that `-Z build-std=core` works.
pub enum Toolchain {
    /// rustup's nightly with the `rust-src` component (the usual developer setup).
    RustupNightly,
    /// Debian's `rustc-web` + `rust-web-src`, unlocked with `RUSTC_BOOTSTRAP=1`.
    DebianRustcWeb,
}

impl Toolchain {
    pub fn find_or_install() -> Result<Self> {
        if rustup_nightly_has_rust_src() {
            say("using rustup's nightly toolchain with rust-src");
            return Ok(Self::RustupNightly);
        }
        if !debian_rustc_web_ready() {
            apt_install(
                &["rustc-web", "cargo-web", "rust-web-src"],
                "a rustc with the `core` sources to build for bpfel-unknown-none",
            )?;
        }
        if !debian_rustc_web_ready() {
            bail!(
                "no compiler can build `core` for BPF: install rustup's nightly with \
                 `rustup toolchain install nightly --component rust-src`, or on Debian \
                 the packages rustc-web, cargo-web and rust-web-src"
            );
        }
        say("using Debian's rustc-web (RUSTC_BOOTSTRAP=1 for the eBPF build only)");
        Ok(Self::DebianRustcWeb)
    }

    /// Makes sure this toolchain has clippy, installing Debian's if it is missing.
    pub fn ensure_clippy(&self) -> Result<()> {
        match self {
            Self::RustupNightly => {
                let works = self
                    .cargo(&[])
                    .args(["clippy", "--version"])
                    .output()
                    .is_ok_and(|out| out.status.success());
                if !works {
                    bail!(
                        "rustup's nightly has no clippy: \
                         `rustup component add clippy --toolchain nightly`"
                    );
                }
            }
            Self::DebianRustcWeb => {
                if !Path::new(DEBIAN_CLIPPY_DRIVER).exists() {
                    apt_install(&["rust-web-clippy"], "clippy for the eBPF crate")?;
                }
            }
        }
        Ok(())
    }

    /// `cargo` of this toolchain, with `extra_path` searched first for helper programs.
    pub fn cargo(&self, extra_path: &[&Path]) -> Command {
        let mut path: Vec<PathBuf> = extra_path.iter().map(|dir| dir.to_path_buf()).collect();
        let mut command = match self {
            Self::RustupNightly => {
                let mut command = Command::new("rustup");
                command.args(["run", "nightly", "cargo"]);
                command
            }
            Self::DebianRustcWeb => {
                // Cargo looks for subcommands such as `cargo-clippy` on PATH, where
                // rustup's proxies would otherwise win over Debian's.
                path.push(PathBuf::from("/usr/bin"));
                let mut command = Command::new("/usr/bin/cargo");
                command
                    .env("RUSTC", "/usr/bin/rustc")
                    .env("RUSTC_BOOTSTRAP", "1");
                command
            }
        };
        path.extend(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths),
        );
        if let Ok(path) = std::env::join_paths(path) {
            command.env("PATH", path);
        }
        // The outer `cargo xtask` runs under rustup's stable; none of its choices apply.
        for var in [
            "RUSTUP_TOOLCHAIN",
            "RUSTC_WRAPPER",
            "RUSTFLAGS",
            "CARGO_BUILD_RUSTC",
        ] {
            command.env_remove(var);
        }
        command
    }
}

fn rustup_nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status.success() && has_core_sources(&sysroot)
}

fn debian_rustc_web_ready() -> bool {
    Path::new("/usr/bin/rustc").exists()
        && Path::new("/usr/bin/cargo").exists()
        && has_core_sources(Path::new("/usr"))
}

fn has_core_sources(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}

/// Directory holding `bpf-linker`, installing it (and the LLVM it links) if needed.
pub fn bpf_linker_dir() -> Result<PathBuf> {
    let cargo_bin = cargo_home().join("bin");
    if have("bpf-linker") {
        return Ok(cargo_bin);
    }
    if cargo_bin.join("bpf-linker").exists() {
        return Ok(cargo_bin);
    }
    let llvm_bin = PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}/bin"));
    if !llvm_bin.join("llvm-config").exists() {
        apt_install(
            &[
                &format!("llvm-{LLVM_MAJOR}-dev"),
                &format!("libpolly-{LLVM_MAJOR}-dev"),
                "libzstd-dev",
                "zlib1g-dev",
            ],
            "LLVM for bpf-linker",
        )?;
    }
    say(format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about a minute)"
    ));
    let path = format!(
        "{}:{}",
        llvm_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run_command(
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ])
            .env("PATH", path),
    )
    .context("building bpf-linker")?;
    Ok(cargo_bin)
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
}
