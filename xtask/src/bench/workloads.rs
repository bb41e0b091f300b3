//! The workloads: `perf bench sched pipe`, four small C programs compiled at bench time,
//! and a real one, a `cargo build` from scratch; each pinned to one CPU and reporting one
//! number.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::Layout;

/// C sources, compiled with `cc -O2 -pthread` into the bench's work directory.
const SOURCES: [(&str, &str); 4] = [
    ("futex_pingpong", include_str!("futex_pingpong.c")),
    ("syscall_storm", include_str!("syscall_storm.c")),
    ("thread_churn", include_str!("thread_churn.c")),
    ("spawn_churn", include_str!("spawn_churn.c")),
];

/// The real workload: a command-line tool's dependencies built from scratch (clap with
/// its derive macros and what they need, syn among them), offline, from the crates the
/// workspace already uses, versions pinned by its lock file.
const BUILD_MANIFEST: &str = r#"[package]
name = "bench-build"
version = "0.1.0"
edition = "2021"

[dependencies]
clap = { version = "4", features = ["derive"] }

[workspace]
"#;

pub fn compile(layout: &Layout) -> Result<()> {
    prepare_build(layout)?;
    for (name, source) in SOURCES {
        exitwatch_testkit::compile_c(&layout.work, name, source)?;
    }
    Ok(())
}

/// The scratch project of the `cargo build` workload, in the bench's work directory.
fn prepare_build(layout: &Layout) -> Result<()> {
    let project = build_project(layout);
    fs::create_dir_all(project.join("src")).context("creating the build workload's project")?;
    fs::write(project.join("Cargo.toml"), BUILD_MANIFEST).context("writing its Cargo.toml")?;
    fs::write(project.join("src/main.rs"), "fn main() {}\n").context("writing its main.rs")?;
    fs::copy(layout.root.join("Cargo.lock"), project.join("Cargo.lock"))
        .context("copying the workspace's Cargo.lock")?;
    Ok(())
}

fn build_project(layout: &Layout) -> PathBuf {
    layout.work.join("build-workload")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Workload {
    Pipe,
    Futex,
    Storm,
    Threads,
    Spawns,
    Build,
}

/// Operations per run of each workload, sized for about a second each on this kind of
/// machine (`--quick` divides them by 4).
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub pipe: u64,
    pub futex: u64,
    pub storm: u64,
    pub threads: u64,
    pub spawns: u64,
    /// Builds per run: always one, a build is its own natural unit.
    pub builds: u64,
}

impl Sizes {
    pub const FULL: Sizes = Sizes {
        pipe: 500_000,
        futex: 600_000,
        storm: 10_000_000,
        threads: 80_000,
        spawns: 1_200,
        builds: 1,
    };

    pub fn scaled(self, divisor: u64) -> Sizes {
        Sizes {
            pipe: self.pipe / divisor,
            futex: self.futex / divisor,
            storm: self.storm / divisor,
            threads: self.threads / divisor,
            spawns: self.spawns / divisor,
            builds: self.builds,
        }
    }
}

/// One run: the workload's own figure (time per operation) and the wall time around it.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub value: f64,
    pub ops: u64,
    pub wall: Duration,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::Pipe,
        Workload::Futex,
        Workload::Storm,
        Workload::Threads,
        Workload::Spawns,
        Workload::Build,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Pipe => "pipe ping-pong",
            Workload::Futex => "futex ping-pong",
            Workload::Storm => "syscall storm",
            Workload::Threads => "thread churn",
            Workload::Spawns => "process churn",
            Workload::Build => "cargo build",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Workload::Pipe | Workload::Futex => "µs/round trip",
            Workload::Storm => "ns/syscall",
            Workload::Threads => "µs/thread",
            Workload::Spawns => "µs/process",
            Workload::Build => "s/build",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Workload::Pipe => "`perf bench sched pipe -l N` (two processes, pipe tokens)",
            Workload::Futex => {
                "two threads hand a token through one futex word (`futex_pingpong.c`)"
            }
            Workload::Storm => "one-byte `write` to /dev/null, never sleeps (`syscall_storm.c`)",
            Workload::Threads => {
                "`pthread_create` + `pthread_join` of an empty thread (`thread_churn.c`)"
            }
            Workload::Spawns => "`fork` + `execl(\"/bin/true\")` + `waitpid` (`spawn_churn.c`)",
            Workload::Build => {
                "`cargo build --offline -j 1` of `clap` 4 with `derive` and its dependencies, \
                 into an empty target directory"
            }
        }
    }

    /// The slowdown allowed with the agent running (on vs off).
    pub fn target(self) -> f64 {
        match self {
            Workload::Pipe => 1.02,
            Workload::Futex | Workload::Threads => 1.03,
            Workload::Storm | Workload::Build => 1.01,
            Workload::Spawns => 1.05,
        }
    }

    /// The slowdown allowed over an empty `sched_switch` program, for the workloads whose
    /// cost is that hook's.
    pub fn floor_target(self) -> Option<f64> {
        match self {
            Workload::Pipe | Workload::Futex => Some(1.01),
            _ => None,
        }
    }

    /// Tracked sleeps per operation (sleeps in read/write/wait4/futex waits).
    pub fn tracked_sleeps_per_op(self) -> f64 {
        match self {
            Workload::Pipe | Workload::Futex => 2.0,
            _ => 0.0,
        }
    }

    pub fn ops(self, sizes: &Sizes) -> u64 {
        match self {
            Workload::Pipe => sizes.pipe,
            Workload::Futex => sizes.futex,
            Workload::Storm => sizes.storm,
            Workload::Threads => sizes.threads,
            Workload::Spawns => sizes.spawns,
            Workload::Build => sizes.builds,
        }
    }

    /// The command line, shown in the report.
    pub fn shown(self, sizes: &Sizes, cpu: usize) -> String {
        let n = self.ops(sizes);
        match self {
            Workload::Pipe => format!("taskset -c {cpu} perf bench sched pipe -l {n}"),
            Workload::Futex => format!("taskset -c {cpu} futex_pingpong {n}"),
            Workload::Storm => format!("taskset -c {cpu} syscall_storm {n}"),
            Workload::Threads => format!("taskset -c {cpu} thread_churn {n}"),
            Workload::Spawns => format!("taskset -c {cpu} spawn_churn {n}"),
            Workload::Build => format!(
                "rm -rf target && taskset -c {cpu} cargo build --offline -j 1 (in a project \
                 that depends on clap with derive)"
            ),
        }
    }

    pub fn run(self, layout: &Layout, sizes: &Sizes, cpu: usize) -> Result<Outcome> {
        if self == Workload::Build {
            return build(layout, cpu);
        }
        let ops = self.ops(sizes);
        let mut command = Command::new("taskset");
        command.args(["-c", &cpu.to_string()]);
        match self {
            Workload::Pipe => {
                command.args(["perf", "bench", "sched", "pipe", "-l", &ops.to_string()]);
            }
            _ => {
                command
                    .arg(program(&layout.work, self))
                    .arg(ops.to_string());
            }
        }
        let started = Instant::now();
        let out = command
            .output()
            .with_context(|| format!("running the {} workload", self.name()))?;
        let wall = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "the {} workload failed ({}): {}{}",
                self.name(),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let value = parse(self, &stdout)
            .with_context(|| format!("no result in the {} output:\n{stdout}", self.name()))?;
        Ok(Outcome { value, ops, wall })
    }
}

/// One `cargo build` from scratch; its figure is the wall time of the build.
fn build(layout: &Layout, cpu: usize) -> Result<Outcome> {
    let project = build_project(layout);
    let target = project.join("target");
    if target.exists() {
        fs::remove_dir_all(&target).context("emptying the build workload's target directory")?;
    }
    // The cargo that runs the bench, whatever PATH says under sudo.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let out = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(cargo)
        .args(["build", "--offline", "--quiet", "-j", "1"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&project)
        .output()
        .context("running the cargo build workload")?;
    let wall = started.elapsed();
    if !out.status.success() {
        bail!(
            "the cargo build workload failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Outcome {
        value: wall.as_secs_f64(),
        ops: 1,
        wall,
    })
}

fn program(work: &Path, workload: Workload) -> PathBuf {
    let name = match workload {
        Workload::Futex => "futex_pingpong",
        Workload::Storm => "syscall_storm",
        Workload::Threads => "thread_churn",
        _ => "spawn_churn",
    };
    work.join(name)
}

/// `perf` prints `  2.345 usecs/op`; the C programs print `RESULT 2.345 unit`.
fn parse(workload: Workload, stdout: &str) -> Option<f64> {
    let first_number =
        |line: &str| -> Option<f64> { line.split_whitespace().find_map(|word| word.parse().ok()) };
    match workload {
        Workload::Pipe => stdout
            .lines()
            .find(|line| line.contains("usecs/op"))
            .and_then(first_number),
        _ => stdout
            .lines()
            .find_map(|line| line.strip_prefix("RESULT "))
            .and_then(first_number),
    }
}
