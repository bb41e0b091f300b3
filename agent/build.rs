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
}
