//! C programs in their exit phase, found without a probe on every process exit: a thread
//! that blocks inside `exit()` (in an `atexit` handler or a static destructor) has a
//! return address into libc's `exit` on its stack. Only threads already stuck past the
//! threshold are looked at, and each wait only once.
use std::{
    collections::BTreeMap,
    ops::Range,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSegment, ObjectSymbol};

use crate::procfs::{Mapping, ProcFs};

/// How much of a stack above its pointer is searched: exit handlers sit near the top of
/// a short call chain.
const STACK_WINDOW: u64 = 64 * 1024;

#[derive(Default)]
pub struct ExitStacks {
    /// `exit`'s address range relative to the library's load base, per libc file
    /// (device, inode); `None` where the file has no such symbol.
    exit_ranges: BTreeMap<(u64, u64), Option<Range<u64>>>,
    /// Verdicts per waiting thread, valid while the same wait (same start) lasts.
    verdicts: BTreeMap<(i32, i32), (u64, bool)>,
}

impl ExitStacks {
    /// Whether thread `tid` of `pid`, in a wait that began at `since_ns` with stack
    /// pointer `sp`, is running inside libc's `exit`; and whether that was found just now
    /// (rather than remembered from an earlier scan of the same wait).
    pub fn in_exit(
        &mut self,
        procfs: &ProcFs,
        pid: i32,
        tid: i32,
        since_ns: u64,
        sp: u64,
    ) -> (bool, bool) {
        if let Some(&(since, verdict)) = self.verdicts.get(&(pid, tid)) {
            if since == since_ns {
                return (verdict, false);
            }
        }
        let verdict = self.search(procfs, pid, sp).unwrap_or(false);
        self.verdicts.insert((pid, tid), (since_ns, verdict));
        (verdict, true)
    }

    /// Forgets verdicts of threads no longer waiting.
    pub fn retain(&mut self, waiting: impl Fn(i32, i32) -> bool) {
        self.verdicts.retain(|&(pid, tid), _| waiting(pid, tid));
    }

    fn search(&mut self, procfs: &ProcFs, pid: i32, sp: u64) -> Option<bool> {
        let maps = procfs.mappings(pid).ok()?;
        let libc = maps.iter().find(|m| m.offset == 0 && is_libc(m))?;
        let stack = maps.iter().find(|m| m.start <= sp && sp < m.end)?;
        // The library is opened through the process's root: it may be a container's.
        let file = in_root(procfs, pid, libc.path.as_deref()?);
        let meta = std::fs::metadata(&file).ok()?;
        let range = self
            .exit_ranges
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| exit_range(&file))
            .clone()?;
        let (low, high) = (libc.start + range.start, libc.start + range.end);
        let length = (stack.end - sp).min(STACK_WINDOW) as usize;
        let words = procfs.memory(pid, sp, length).ok()?;
        Some(words.chunks_exact(8).any(|word| {
            let value = u64::from_ne_bytes([
                word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
            ]);
            // `exit` ends with its call into the (noreturn) exit handlers, so the return
            // address may be exactly its end.
            (low..=high).contains(&value)
        }))
    }
}

fn is_libc(mapping: &Mapping) -> bool {
    mapping
        .path
        .as_deref()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy())
        .is_some_and(|name| name.starts_with("libc.so") || name.starts_with("libc-"))
}

fn in_root(procfs: &ProcFs, pid: i32, path: &Path) -> PathBuf {
    procfs
        .root()
        .join(pid.to_string())
        .join("root")
        .join(path.strip_prefix("/").unwrap_or(path))
}

/// `exit`'s range from the dynamic symbol table, relative to the lowest loaded address
/// (where the mapping at file offset 0 starts).
fn exit_range(file: &Path) -> Option<Range<u64>> {
    let data = std::fs::read(file).ok()?;
    let elf = object::File::parse(&*data).ok()?;
    let base = elf.segments().map(|s| s.address()).min()? & !0xfff;
    let exit = elf
        .dynamic_symbols()
        .find(|symbol| symbol.name() == Ok("exit") && symbol.size() > 0)?;
    let start = exit.address().checked_sub(base)?;
    Some(start..start + exit.size())
}
