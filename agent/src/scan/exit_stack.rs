//! C programs in their exit phase, found without a probe on every process exit: a thread
//! that blocks inside `exit()` (in an `atexit` handler or a static destructor) has a
//! return address into libc's `exit` on its stack. Only threads already stuck past the
//! threshold are looked at, and each wait only once.
use std::{collections::BTreeMap, ops::Range, path::Path};

use crate::{
    elf::Elf,
    pid::Pid,
    procfs::{open_mapping, FileId, Mapping, ProcFs},
};

/// How much of a stack above its pointer is searched: exit handlers sit near the top of
/// a short call chain.
const STACK_WINDOW: u64 = 64 * 1024;
/// Distinct libc files remembered; any process can make more (a file named libc.so.6).
const MAX_LIBCS: usize = 256;

#[derive(Default)]
pub struct ExitStacks {
    /// `exit`'s address range relative to the library's load base, per libc file;
    /// `None` where the file has no such symbol or cannot be read.
    exit_ranges: BTreeMap<FileId, Option<Range<u64>>>,
    /// Verdicts per waiting thread, valid while the same wait (same start) lasts.
    verdicts: BTreeMap<(Pid, Pid), (u64, bool)>,
}

impl ExitStacks {
    /// The verdict on thread `tid` of `pid` in its wait that began at `since_ns`, if its
    /// stack was searched already.
    pub fn remembered(&self, pid: Pid, tid: Pid, since_ns: u64) -> Option<bool> {
        self.verdicts
            .get(&(pid, tid))
            .filter(|(since, _)| *since == since_ns)
            .map(|&(_, verdict)| verdict)
    }

    /// Whether thread `tid` of `pid`, in a wait that began at `since_ns` with stack
    /// pointer `sp`, is running inside libc's `exit`. When a read fails or times out
    /// there is no verdict: "no" for now, and a later scan looks again.
    pub fn search(&mut self, procfs: &ProcFs, pid: Pid, tid: Pid, since_ns: u64, sp: u64) -> bool {
        let Some(verdict) = self.search_stack(procfs, pid, sp) else {
            return false;
        };
        self.verdicts.insert((pid, tid), (since_ns, verdict));
        verdict
    }

    /// Forgets verdicts of threads no longer waiting.
    pub fn retain(&mut self, waiting: impl Fn(Pid, Pid) -> bool) {
        self.verdicts.retain(|&(pid, tid), _| waiting(pid, tid));
    }

    /// The verdict, or `None` if a read failed (a timeout, a mapping that changed).
    fn search_stack(&mut self, procfs: &ProcFs, pid: Pid, sp: u64) -> Option<bool> {
        let maps = procfs.mappings(pid).ok()?;
        let Some(libc) = maps.iter().find(|m| m.offset == 0 && is_libc(m)) else {
            return Some(false);
        };
        let Some(range) = self.exit_range(procfs, pid, libc)? else {
            return Some(false);
        };
        // The range comes from a file anyone may have written: past the end of the address
        // space, no return address can be in it.
        let (Some(low), Some(high)) = (
            libc.start.checked_add(range.start),
            libc.start.checked_add(range.end),
        ) else {
            return Some(false);
        };
        let Some(words) = procfs.stack_above(pid, &maps, sp, STACK_WINDOW).ok()? else {
            return Some(false);
        };
        Some(words.chunks_exact(8).any(|word| {
            let value = u64::from_ne_bytes([
                word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
            ]);
            // `exit` ends with its call into the (noreturn) exit handlers, so the return
            // address may be exactly its end.
            (low..=high).contains(&value)
        }))
    }

    /// From the cache, else from the file behind the mapping; `None` if that could not
    /// be read (a timeout or a mapping that changed, not remembered: a later scan tries
    /// again), `Some(None)` if it has no usable `exit`.
    fn exit_range(
        &mut self,
        procfs: &ProcFs,
        pid: Pid,
        libc: &Mapping,
    ) -> Option<Option<Range<u64>>> {
        let key = libc.file_id();
        if let Some(range) = self.exit_ranges.get(&key) {
            return Some(range.clone());
        }
        let mapping = libc.clone();
        let range = procfs
            .bounded(pid, move |root| {
                let (file, _) = open_mapping(root, pid, &mapping)?;
                Ok(exit_range(&file))
            })
            .ok()?;
        if self.exit_ranges.len() >= MAX_LIBCS {
            self.exit_ranges.clear();
        }
        self.exit_ranges.insert(key, range.clone());
        Some(range)
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

/// `exit`'s range from the symbol tables, relative to the lowest loaded address (where
/// the mapping at file offset 0 starts).
fn exit_range(file: &std::fs::File) -> Option<Range<u64>> {
    let elf = Elf::parse(file).ok()?;
    let base = elf.load_base()?;
    let exit = elf.function("exit").ok()??;
    if exit.size == 0 {
        return None;
    }
    let start = exit.address.checked_sub(base)?;
    Some(start..start.checked_add(exit.size)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_verdicts_are_remembered() {
        let mut stacks = ExitStacks::default();
        // The fixture maps libc and a stack but has no map_files: the ELF lookup fails.
        let fixture = ProcFs::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/proc"));
        let sp = 0x7ffd_a5bf_0000;
        assert!(!stacks.search(&fixture, Pid::from_raw(100), Pid::from_raw(100), 7, sp));
        assert_eq!(
            stacks.remembered(Pid::from_raw(100), Pid::from_raw(100), 7),
            None,
            "a failed search was remembered"
        );
        // This thread, which is not in `exit`: a real "no", remembered for its wait.
        let proc = ProcFs::default();
        let pid = Pid::try_from(std::process::id()).unwrap();
        let local = 0u64;
        let sp = std::ptr::addr_of!(local) as u64;
        assert!(!stacks.search(&proc, pid, pid, 7, sp));
        assert_eq!(stacks.remembered(pid, pid, 7), Some(false));
        assert_eq!(stacks.remembered(pid, pid, 8), None, "another wait");
    }

    #[test]
    fn an_exit_range_past_the_address_space_is_no_exit() {
        let proc = ProcFs::default();
        let pid = Pid::try_from(std::process::id()).unwrap();
        let maps = proc.mappings(pid).unwrap();
        let libc = maps
            .iter()
            .find(|m| m.offset == 0 && is_libc(m))
            .expect("this test binary maps libc");
        let mut stacks = ExitStacks::default();
        stacks
            .exit_ranges
            .insert(libc.file_id(), Some(u64::MAX - 16..u64::MAX));
        let local = 0u64;
        let sp = std::ptr::addr_of!(local) as u64;
        assert!(!stacks.search(&proc, pid, pid, 7, sp));
        assert_eq!(stacks.remembered(pid, pid, 7), Some(false));
    }
}
