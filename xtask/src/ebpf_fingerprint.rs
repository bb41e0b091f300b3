//! Fingerprint of the sources that make up the eBPF object. `cargo xtask build-ebpf`
//! stores it next to the object and the agent's build script compares it, so an object
//! built from other sources is never embedded silently. Shared by both through `#[path]`.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Inputs of the eBPF build, relative to the workspace root.
pub const INPUTS: [&str; 6] = [
    "ebpf/src",
    "ebpf/Cargo.toml",
    "ebpf/.cargo/config.toml",
    "ebpf/Cargo.lock",
    "common/src",
    "common/Cargo.toml",
];

/// Where `cargo xtask build-ebpf` leaves the object, relative to the workspace root.
pub const OBJECT: &str = "target/bpf/exitwatch.bpf.o";
pub const STAMP: &str = "target/bpf/exitwatch.bpf.o.fingerprint";

/// FNV-1a over every input file's relative path and contents, in sorted order: cheap,
/// dependency-free, and stable across checkouts (mtimes are not).
pub fn fingerprint(root: &Path) -> io::Result<String> {
    let mut files = Vec::new();
    for input in INPUTS {
        collect(&root.join(input), &mut files)?;
    }
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in files {
        let relative = file.strip_prefix(root).unwrap_or(&file);
        for byte in relative
            .to_string_lossy()
            .bytes()
            .chain([0])
            .chain(fs::read(&file)?)
        {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{hash:016x}"))
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    if path.is_dir() {
        for entry in fs::read_dir(path)? {
            collect(&entry?.path(), files)?;
        }
    } else if path.is_file() {
        files.push(path.to_path_buf());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::{fingerprint, INPUTS};

    fn tree() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("temp dir");
        for input in INPUTS {
            let path = root.path().join(input);
            if input.ends_with("src") {
                fs::create_dir_all(&path).expect("mkdir");
                fs::write(path.join("lib.rs"), input).expect("write");
            } else {
                fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                fs::write(&path, input).expect("write");
            }
        }
        root
    }

    #[test]
    fn same_sources_same_fingerprint_anywhere() {
        let (a, b) = (tree(), tree());
        let first = fingerprint(a.path()).expect("fingerprint");
        assert_eq!(first, fingerprint(a.path()).expect("fingerprint"));
        assert_eq!(first, fingerprint(b.path()).expect("fingerprint"));
    }

    #[test]
    fn any_source_change_changes_it() {
        let root = tree();
        let before = fingerprint(root.path()).expect("fingerprint");
        fs::write(root.path().join("ebpf/src/extra.rs"), "// new").expect("write");
        let added = fingerprint(root.path()).expect("fingerprint");
        assert_ne!(before, added);
        fs::write(root.path().join("common/src/lib.rs"), "changed").expect("write");
        assert_ne!(added, fingerprint(root.path()).expect("fingerprint"));
    }
}
