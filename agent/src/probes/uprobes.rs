//! Exit-phase uprobes. A uprobe attaches to a file (inode), so one attach covers every
//! process that maps that interpreter, whichever mount namespace it runs in.
use std::{collections::BTreeSet, os::unix::fs::MetadataExt, path::Path};

use aya::{
    programs::{uprobe::UProbeScope, UProbe},
    Ebpf,
};
use exitwatch_common::names;

use super::{program, ProbeError};
use crate::procfs::ProcFs;

/// The interpreter's shutdown entry point, where the exit phase begins.
const SYMBOL: &str = "Py_FinalizeEx";

/// Whether a file of this name may define [`SYMBOL`]; others are not even opened.
fn may_be_interpreter(name: &str) -> bool {
    name.contains("python")
}

/// Where interpreters usually live, for discovery before any process uses them.
const INSTALL_DIRS: [&str; 6] = [
    "/usr/bin",
    "/usr/local/bin",
    "/usr/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/local/lib",
    "/lib/x86_64-linux-gnu",
];

pub struct Uprobes {
    procfs: ProcFs,
    /// Files already looked at, by (device, inode): attached or known not to qualify.
    seen: BTreeSet<(u64, u64)>,
    /// Executables whose mapped files were all looked at, by (device, inode).
    programs_seen: BTreeSet<(u64, u64)>,
    attached: usize,
}

impl Uprobes {
    pub fn load(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        let uprobe: &mut UProbe = program(ebpf, names::PROG_PY_FINALIZE)?;
        uprobe
            .load()
            .map_err(|e| ProbeError::program(names::PROG_PY_FINALIZE, e))?;
        Ok(Self {
            procfs: ProcFs::default(),
            seen: BTreeSet::new(),
            programs_seen: BTreeSet::new(),
            attached: 0,
        })
    }

    pub fn attached(&self) -> usize {
        self.attached
    }

    /// Looks at the files `pid` maps. A program whose libraries were already seen once
    /// (by executable file) costs a `stat`: exec-heavy hosts run the same few binaries.
    /// `settled` says the dynamic loader has had time to map every library, so the
    /// program need not be looked at again.
    pub fn discover(&mut self, ebpf: &mut Ebpf, pid: i32, settled: bool) {
        let dir = self.procfs.root().join(pid.to_string());
        let Ok(exe) = std::fs::metadata(dir.join("exe")) else {
            return;
        };
        let program = (exe.dev(), exe.ino());
        if self.programs_seen.contains(&program) {
            return;
        }
        let Ok(mut files) = self.procfs.mapped_files(pid) else {
            return;
        };
        if let Ok(exe) = std::fs::read_link(dir.join("exe")) {
            files.push(exe);
        }
        if settled {
            self.programs_seen.insert(program);
        }
        let root = dir.join("root");
        for file in files {
            // Open through the process's own root: it may live in another mount namespace.
            let path = root.join(file.strip_prefix("/").unwrap_or(&file));
            self.consider(ebpf, &path);
        }
    }

    pub fn discover_installed(&mut self, ebpf: &mut Ebpf) {
        for dir in INSTALL_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                self.consider(ebpf, &entry.path());
            }
        }
    }

    fn consider(&mut self, ebpf: &mut Ebpf, path: &Path) {
        if !path
            .file_name()
            .is_some_and(|name| may_be_interpreter(&name.to_string_lossy()))
        {
            return;
        }
        // Follows symlinks, so python3 -> python3.11 is one file.
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if !meta.is_file() || !self.seen.insert((meta.dev(), meta.ino())) {
            return;
        }
        match attach(ebpf, path) {
            Ok(()) => {
                self.attached += 1;
                log::info!("attached {SYMBOL} probe to {}", display(path));
            }
            // Most files matching the name pattern are scripts or tools that do not
            // define the symbol; that is expected, not an error.
            Err(error) => log::debug!("no {SYMBOL} probe on {}: {error}", display(path)),
        }
    }
}

fn attach(ebpf: &mut Ebpf, path: &Path) -> Result<(), ProbeError> {
    let uprobe: &mut UProbe = program(ebpf, names::PROG_PY_FINALIZE)?;
    uprobe
        .attach(SYMBOL, path, UProbeScope::AllProcesses)
        .map(drop)
        .map_err(|e| ProbeError::program(names::PROG_PY_FINALIZE, e))
}

/// `/proc/PID/root/usr/lib/x.so` reads better as `/usr/lib/x.so (via pid PID)`.
fn display(path: &Path) -> String {
    let mut parts = path.components();
    if let (Some(_), Some(proc), Some(pid), Some(root)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    {
        if proc.as_os_str() == "proc" && root.as_os_str() == "root" {
            let pid = pid.as_os_str().to_string_lossy();
            return format!("/{} (via pid {pid})", parts.as_path().display());
        }
    }
    path.display().to_string()
}
