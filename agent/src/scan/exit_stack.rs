//! C programs in their exit phase, found without a probe on every process exit: a thread
//! that blocks inside `exit()` (in an `atexit` handler or a static destructor) has a
//! return address into libc's `exit` on its stack.
use std::{collections::BTreeMap, ops::Range};

use exitwatch_common::exit_reason;

use super::{collect::Verified, exit_search::Sign};
use crate::{
    elf::Elf,
    pid::Pid,
    procfs::{open_mapping, Mapping, ProcFs},
    stacks::{module_name, FileVersion},
};

/// How much of a stack above its pointer is searched: exit handlers sit near the top of
/// a short call chain.
const STACK_WINDOW: u64 = 64 * 1024;
/// Distinct libc files remembered; any process can make more (a file named libc.so.6).
const MAX_LIBCS: usize = 256;

#[derive(Default)]
pub struct LibcExit {
    /// `exit`'s address range relative to the library's load base, per libc file;
    /// `None` where the file has no such symbol or cannot be read.
    exit_ranges: BTreeMap<FileVersion, Option<Range<u64>>>,
}

impl Sign for LibcExit {
    const REASON: u32 = exit_reason::LIBC_EXIT;
    const MAX_SEARCHES: usize = 256;

    /// Only main threads, where `exit` runs when `main` returns: on a host of idle thread
    /// pools, every pool thread's stack would be read once per wait for nothing.
    fn candidate(&self, pid: Pid, tid: Pid, thread: &Verified) -> bool {
        tid == pid && thread.stuck
    }

    /// Whether the thread is running inside libc's `exit`.
    fn search(&mut self, procfs: &ProcFs, pid: Pid, _: Pid, thread: &Verified) -> Option<bool> {
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
        let Some(words) = procfs
            .stack_above(pid, &maps, thread.sp, STACK_WINDOW)
            .ok()?
        else {
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
}

impl LibcExit {
    /// From the cache, else from the file behind the mapping (opened either way, to tell
    /// a file rewritten in place); `None` if that could not be read (a timeout or a
    /// mapping that changed, not remembered: a later scan tries again), `Some(None)` if
    /// it has no usable `exit`.
    fn exit_range(
        &mut self,
        procfs: &ProcFs,
        pid: Pid,
        libc: &Mapping,
    ) -> Option<Option<Range<u64>>> {
        let mapping = libc.clone();
        let (file, version) = procfs
            .bounded(pid, move |root| {
                let (file, meta) = open_mapping(root, pid, &mapping)?;
                Ok((file, FileVersion::of(&mapping, &meta)))
            })
            .ok()?;
        if let Some(range) = self.exit_ranges.get(&version) {
            return Some(range.clone());
        }
        let range = procfs.bounded(pid, move |_| Ok(exit_range(&file))).ok()?;
        if self.exit_ranges.len() >= MAX_LIBCS {
            self.exit_ranges.clear();
        }
        self.exit_ranges.insert(version, range.clone());
        Some(range)
    }
}

fn is_libc(mapping: &Mapping) -> bool {
    let name = module_name(mapping);
    name.starts_with("libc.so") || name.starts_with("libc-")
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
    use crate::graph::Wait;

    /// This thread, as if stuck in a futex wait right here.
    fn this_thread() -> (ProcFs, Pid, Verified) {
        let pid = Pid::try_from(std::process::id()).expect("a pid");
        let local = 0u64;
        let sp = std::ptr::addr_of!(local) as u64;
        let thread = Verified::stuck_in(Wait::Futex { timed: false }, 7, sp);
        (ProcFs::default(), pid, thread)
    }

    #[test]
    fn a_failed_read_is_no_verdict_and_a_thread_outside_exit_is_no() {
        let mut libc = LibcExit::default();
        // The fixture maps libc and a stack but has no map_files: the ELF lookup fails.
        let fixture = ProcFs::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/proc"));
        let (proc, pid, thread) = this_thread();
        let fixture_thread = Verified::stuck_in(Wait::Futex { timed: false }, 7, 0x7ffd_a5bf_0000);
        let fixture_pid = Pid::from_raw(100);
        assert_eq!(
            libc.search(&fixture, fixture_pid, fixture_pid, &fixture_thread),
            None
        );
        assert_eq!(libc.search(&proc, pid, pid, &thread), Some(false));
    }

    #[test]
    fn an_exit_range_past_the_address_space_is_no_exit() {
        let (proc, pid, thread) = this_thread();
        let maps = proc.mappings(pid).expect("this process's maps");
        let mapped = maps
            .iter()
            .find(|m| m.offset == 0 && is_libc(m))
            .expect("this test binary maps libc");
        let (_, meta) = open_mapping(std::path::Path::new("/proc"), pid, mapped)
            .expect("opening this process's libc");
        let mut libc = LibcExit::default();
        libc.exit_ranges.insert(
            FileVersion::of(mapped, &meta),
            Some(u64::MAX - 16..u64::MAX),
        );
        assert_eq!(libc.search(&proc, pid, pid, &thread), Some(false));
    }
}
