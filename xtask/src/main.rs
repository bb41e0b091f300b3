//! Developer tasks: `cargo xtask build-ebpf | lint-ebpf | run | test | kernel-matrix | bench |
//! dist`.
mod bench;
mod build_ebpf;
mod dist;
mod ebpf_fingerprint;
mod kernel_matrix;
mod lint_ebpf;
mod system;
mod toolchain;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "exitwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the kernel programs into target/bpf/, installing the toolchain if missing.
    BuildEbpf,
    /// Check the kernel programs' formatting and lint them with clippy (-D warnings).
    LintEbpf,
    /// Build everything and run the agent with its defaults (as root, via sudo if needed).
    Run {
        /// Arguments passed to `exitwatch run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build everything and run the whole test suite, privileged tests included, then the
    /// kernel matrix (`EXITWATCH_SKIP_KERNEL_MATRIX=1` leaves it out, except under CI=true).
    Test,
    /// Run the seed hangs and the healthy control on Debian's stock 6.1 and 6.12 kernels
    /// under QEMU.
    KernelMatrix,
    /// Measure the agent's overhead, footprint and detection latency; write BENCHMARKS.md.
    Bench(bench::Options),
    /// Build the release tarball (static agent, systemd unit, dashboards, licences) into
    /// target/dist/.
    Dist,
}

fn main() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().task {
        Task::BuildEbpf => build_ebpf::build(&root),
        Task::LintEbpf => lint_ebpf::lint(&root),
        Task::Run { args } => {
            build_ebpf::build(&root)?;
            system::run(
                &root,
                "cargo",
                &["build", "--release", "--package", "exitwatch"],
            )?;
            let mut command = vec!["target/release/exitwatch".to_string(), "run".to_string()];
            command.extend(args);
            system::run_as_root(&root, &command)
        }
        Task::Test => {
            // A skip that CI must refuse fails here, before the suite, not after it.
            let skip_kernel_matrix = kernel_matrix::skipped_by_request()?;
            system::ensure_commands(TEST_COMMANDS, "the test suite's programs and servers")?;
            build_ebpf::build(&root)?;
            // The release tests unpack and run what users download.
            let tarball = dist::build(&root)?;
            // Integration tests start real agents and hang real programs; one at a time
            // keeps their probes and timings from interfering.
            let mut test = vec![
                "env".to_string(),
                format!("{}={}", dist::TARBALL_VAR, tarball.display()),
            ];
            test.extend(
                ["cargo", "test", "--workspace", "--", "--test-threads=1"].map(String::from),
            );
            system::run_as_root(&root, &test)?;
            if skip_kernel_matrix {
                return Ok(());
            }
            kernel_matrix::run(&root)
        }
        Task::KernelMatrix => {
            build_ebpf::build(&root)?;
            kernel_matrix::run(&root)
        }
        Task::Bench(options) => bench::run(&root, &options),
        Task::Dist => {
            build_ebpf::build(&root)?;
            dist::build(&root).map(drop)
        }
    }
}

/// What the test suite runs besides the agent: (command, Debian package).
const TEST_COMMANDS: &[(&str, &str)] = &[
    ("python3", "python3"),
    ("cc", "gcc"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("chromium", "chromium"),
    ("openssl", "openssl"),
    ("systemd-analyze", "systemd"),
    ("setpriv", "util-linux"),
    ("buildah", "buildah"),
];

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}
