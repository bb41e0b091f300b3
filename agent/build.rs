//! Embeds the eBPF object built by `cargo xtask build-ebpf`, but only if it was built from
//! the current sources. Without a fresh object the agent still compiles (so `cargo check`
//! and `cargo clippy` work anywhere) and refuses to run, naming the command to fix it.
#[path = "../xtask/src/ebpf_fingerprint.rs"]
mod ebpf_fingerprint;

use std::{env, fs, path::PathBuf};

use ebpf_fingerprint::{fingerprint, INPUTS, OBJECT, STAMP};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("agent/ is inside the workspace");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("exitwatch.bpf.o");

    for input in INPUTS.iter().chain([&OBJECT, &STAMP]) {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }

    let current = fingerprint(root).expect("reading the eBPF sources");
    let built = fs::read_to_string(root.join(STAMP)).unwrap_or_default();
    let status = if !root.join(OBJECT).exists() {
        "missing"
    } else if built.trim() != current {
        "stale"
    } else {
        "fresh"
    };
    if status == "fresh" {
        fs::copy(root.join(OBJECT), &out).expect("copying the eBPF object");
    } else {
        fs::write(&out, []).expect("writing the empty eBPF placeholder");
        println!(
            "cargo:warning=the eBPF object is {status}: run `cargo xtask build-ebpf`; \
             this exitwatch binary will refuse to run"
        );
    }
    println!("cargo:rustc-env=EXITWATCH_EBPF_STATUS={status}");

    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EXITWATCH_RUSTC={version}");
    println!("cargo:rustc-env=EXITWATCH_REVISION={}", revision(root));
}

/// The commit the agent is built from (`git rev-parse --short=12 HEAD`); outside a git
/// checkout (a source tarball, a container build without `.git`), `EXITWATCH_REVISION`
/// from the build's environment, else "unknown".
fn revision(root: &std::path::Path) -> String {
    println!("cargo:rerun-if-env-changed=EXITWATCH_REVISION");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|text| text.trim().to_string())
            .filter(|text| !text.is_empty())
    };
    // A commit moves HEAD (a branch checkout) or the ref it points to; in a worktree
    // HEAD lives in its own git dir, the refs in the common one.
    if let (Some(dir), Some(common)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) {
        let watched = [
            format!("{dir}/HEAD"),
            format!("{common}/refs"),
            format!("{common}/packed-refs"),
        ];
        // cargo reruns the script on every build for a path that does not exist.
        for path in watched.iter().filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"])
        .or_else(|| {
            env::var("EXITWATCH_REVISION")
                .ok()
                .filter(|r| !r.is_empty())
        })
        .unwrap_or_else(|| "unknown".into())
}
