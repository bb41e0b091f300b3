//! Programs in their exit phase, found without a probe on every process exit: a main
//! thread that blocks inside libc's `exit()` (in an `atexit` handler or a static
//! destructor), or inside CPython's `Py_FinalizeEx` (joining threads at interpreter
//! shutdown), has a return address into that function on its stack. The probe on
//! `Py_FinalizeEx` marks the same phase as it begins, but it is attached only to
//! root-owned interpreters, and only once discovery has seen the process: an interpreter
//! that hangs within milliseconds of starting, or one a user built, is found here.
use std::{marker::PhantomData, ops::Range};

use exitwatch_common::exit_reason;

use super::{collect::Verified, exit_search::Sign};
use crate::{
    elf::Elf,
    pid::Pid,
    procfs::{open_mapping, Mapping, ProcFs},
    stacks::{may_be_interpreter, module_name, FileVersion, Remembered},
};

/// How much of a stack above its pointer is searched: exit handlers sit near the top of
/// a short call chain.
const STACK_WINDOW: u64 = 64 * 1024;
/// Distinct module files remembered, the oldest dropped first; any process can make more
/// (a file named libc.so.6).
const MAX_MODULES: usize = 256;
/// Modules of one process searched for the function: a program maps one libc, and one
/// interpreter (its executable or its libpython).
const MAX_MODULES_PER_PROCESS: usize = 4;

/// The function a thread runs inside in its exit phase, and the modules that define it.
pub trait ExitFunction {
    /// The `exitwatch_common::exit_reason` bit of a process inside it.
    const REASON: u32;
    const SYMBOL: &'static str;
    fn defined_in(mapping: &Mapping) -> bool;
}

pub struct Libc;

impl ExitFunction for Libc {
    const REASON: u32 = exit_reason::LIBC_EXIT;
    const SYMBOL: &'static str = "exit";
    fn defined_in(mapping: &Mapping) -> bool {
        is_libc(mapping)
    }
}

pub struct Interpreter;

impl ExitFunction for Interpreter {
    const REASON: u32 = exit_reason::PY_FINALIZE;
    const SYMBOL: &'static str = "Py_FinalizeEx";
    fn defined_in(mapping: &Mapping) -> bool {
        may_be_interpreter(mapping)
    }
}

pub type LibcExit = InFunction<Libc>;
pub type PyFinalize = InFunction<Interpreter>;

pub struct InFunction<F> {
    /// The function's address range relative to the module's load base, per module file;
    /// `None` where the file has no such symbol or cannot be read.
    ranges: Remembered<Option<Range<u64>>>,
    function: PhantomData<F>,
}

impl<F> Default for InFunction<F> {
    fn default() -> Self {
        Self {
            // A range is a few bytes: the count bounds them.
            ranges: Remembered::new(MAX_MODULES, u64::MAX),
            function: PhantomData,
        }
    }
}

impl<F: ExitFunction> Sign for InFunction<F> {
    const REASON: u32 = F::REASON;
    const MAX_SEARCHES: usize = 64;

    /// Only main threads, where `exit` runs when `main` returns and the interpreter
    /// finalizes: on a host of idle thread pools, every pool thread's stack would be
    /// read once per wait for nothing.
    fn candidate(&self, pid: Pid, tid: Pid, thread: &Verified) -> bool {
        tid == pid && thread.stuck
    }

    /// Whether the thread is running inside the function.
    fn search(&mut self, procfs: &ProcFs, pid: Pid, _: Pid, thread: &Verified) -> Option<bool> {
        let maps = procfs.mappings(pid).ok()?;
        let mut inside = Vec::new();
        for module in maps
            .iter()
            .filter(|m| m.offset == 0 && F::defined_in(m))
            .take(MAX_MODULES_PER_PROCESS)
        {
            let Some(range) = self.range(procfs, pid, module)? else {
                continue;
            };
            // The range comes from a file anyone may have written: past the end of the
            // address space, no return address can be in it. A call returns after the
            // function's first instruction, so its first byte is left out: that value on
            // a stack is a pointer to the function (as `atexit` keeps), not a return.
            if let (Some(low), Some(high)) = (
                module
                    .start
                    .checked_add(range.start)
                    .and_then(|a| a.checked_add(1)),
                module.start.checked_add(range.end),
            ) {
                inside.push(low..=high);
            }
        }
        if inside.is_empty() {
            return Some(false);
        }
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
            inside.iter().any(|range| range.contains(&value))
        }))
    }
}

impl<F: ExitFunction> InFunction<F> {
    /// From the cache, else from the file behind the mapping (opened either way, to tell
    /// a file rewritten in place); `None` if that could not be read (a timeout or a
    /// mapping that changed, not remembered: a later scan tries again), `Some(None)` if
    /// it has no usable function.
    fn range(&mut self, procfs: &ProcFs, pid: Pid, module: &Mapping) -> Option<Option<Range<u64>>> {
        let mapping = module.clone();
        let (file, version) = procfs
            .bounded(pid, move |root| {
                let (file, meta) = open_mapping(root, pid, &mapping)?;
                Ok((file, FileVersion::of(&mapping, &meta)))
            })
            .ok()?;
        if let Some(range) = self.ranges.get(&version) {
            return Some(range.clone());
        }
        let range = procfs
            .bounded(pid, move |_| Ok(function_range(&file, F::SYMBOL)))
            .ok()?;
        self.ranges.insert(version, range.clone(), 0);
        Some(range)
    }
}

fn is_libc(mapping: &Mapping) -> bool {
    let name = module_name(mapping);
    name.starts_with("libc.so") || name.starts_with("libc-")
}

/// `symbol`'s range from the symbol tables, relative to the lowest loaded address (where
/// the mapping at file offset 0 starts).
fn function_range(file: &std::fs::File, symbol: &str) -> Option<Range<u64>> {
    let elf = Elf::parse(file).ok()?;
    let base = elf.load_base()?;
    let function = elf.function(symbol).ok()??;
    if function.size == 0 {
        return None;
    }
    let start = function.address.checked_sub(base)?;
    Some(start..start.checked_add(function.size)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Wait;

    /// This thread, as if stuck in a futex wait with its stack pointer at `local`: a
    /// local of the test itself, so that the search's own frames (below it) are not
    /// read as the stack.
    fn this_thread(local: &u64) -> (ProcFs, Pid, Verified) {
        let pid = Pid::try_from(std::process::id()).expect("a pid");
        let sp = std::ptr::from_ref(local) as u64;
        let thread = Verified::stuck_in(Wait::Futex { timed: false }, 7, sp);
        (ProcFs::default(), pid, thread)
    }

    #[test]
    fn a_failed_read_is_no_verdict_and_a_thread_outside_exit_is_no() {
        let mut libc = LibcExit::default();
        // The fixture maps libc and a stack but has no map_files: the ELF lookup fails.
        let fixture = ProcFs::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/proc"));
        let local = 0u64;
        let (proc, pid, thread) = this_thread(&local);
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
        let local = 0u64;
        let (proc, pid, thread) = this_thread(&local);
        let maps = proc.mappings(pid).expect("this process's maps");
        let mapped = maps
            .iter()
            .find(|m| m.offset == 0 && is_libc(m))
            .expect("this test binary maps libc");
        let (_, meta) = open_mapping(std::path::Path::new("/proc"), pid, mapped)
            .expect("opening this process's libc");
        let mut libc = LibcExit::default();
        libc.ranges.insert(
            FileVersion::of(mapped, &meta),
            Some(u64::MAX - 16..u64::MAX),
            0,
        );
        assert_eq!(libc.search(&proc, pid, pid, &thread), Some(false));
    }
}
