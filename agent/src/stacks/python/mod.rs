//! Python frames of a CPython process's threads (3.7 to 3.13), read from its memory
//! without stopping it: the interpreter's `_PyRuntime` (found by symbol in the module
//! that defines it), its main interpreter's thread states, and each wanted thread's
//! frame chain. Threads are told apart by `native_thread_id` (3.11 and later); before
//! 3.11 a thread state holds only the thread's `pthread_t`, which is the main thread's
//! (`_PyRuntime.main_thread`) or else is matched to a kernel thread id through where the
//! C library keeps that id in its thread descriptor, found from the main thread's.
//! Each thread's `threading` name comes with its frames (see [`names`]).
//! Everything read is bounded (see [`memory`]), and any of it may be garbage.
mod awaits;
mod frames;
mod interpreter;
mod layout;
mod lines;
mod memory;
mod names;
mod objects;

use std::{collections::BTreeMap, path::Path, time::Instant};

pub use frames::PythonStack;
pub use interpreter::FindError;
use memory::{int_at, Memory, ReadError};

use crate::{pid::Pid, procfs::Mapping};

/// Thread states walked at most: a process has one per thread.
const MAX_THREAD_STATES: usize = 1024;
/// Bytes of a thread state read: up to `native_thread_id` in every version.
const THREAD_STATE_BYTES: usize = 184;
/// Bytes of the main thread's C library descriptor searched for its thread id, and where
/// glibc keeps it on x86-64, preferred when the id is found in more than one place.
const PTHREAD_BYTES: usize = 1024;
const GLIBC_TID_OFFSET: u64 = 0x2d0;

#[derive(thiserror::Error, Debug)]
pub enum PythonError {
    #[error(transparent)]
    Find(#[from] FindError),
    #[error("cannot open the process's memory: {0}")]
    Open(std::io::Error),
    #[error("the interpreter's thread list cannot be read: {0}")]
    Read(#[from] ReadError),
    #[error("the interpreter's thread states do not look like CPython {0}'s")]
    Layout(layout::Version),
}

impl PythonError {
    /// Whether the read ran out of time before it could tell anything (a read on a less
    /// loaded machine, or with the module's symbols remembered, may succeed).
    pub fn out_of_time(&self) -> bool {
        matches!(
            self,
            PythonError::Read(ReadError::Late)
                | PythonError::Find(FindError::Version(ReadError::Late))
        )
    }
}

/// The Python stacks of those of `tids` that run Python code, in process `pid` whose
/// mappings are `maps`; empty when the process runs no CPython. Reads stop at `until`.
/// `root` is the `/proc` mount; call inside [`crate::procfs::ProcFs::bounded`] (the
/// modules' files and the process's memory are read).
pub fn stacks(
    root: &Path,
    pid: Pid,
    maps: &[Mapping],
    tids: &[Pid],
    until: Instant,
) -> Result<BTreeMap<Pid, PythonStack>, PythonError> {
    let mut memory = Memory::open(root, pid, until).map_err(PythonError::Open)?;
    let Some(interpreter) = interpreter::find(root, pid, maps, &mut memory)? else {
        return Ok(BTreeMap::new());
    };
    let layout = interpreter.layout;
    let main_interpreter =
        memory.word(interpreter.runtime.wrapping_add(layout.main_interpreter))?;
    let main_thread = memory.word(interpreter.runtime.wrapping_add(layout.main_thread))?;
    let states = thread_states(&mut memory, layout, main_interpreter)
        .ok_or(PythonError::Layout(interpreter.version))?;
    let mut tid_offset = None;
    let mut reader = frames::Reader::new(&mut memory, layout);
    let mut stacks = BTreeMap::new();
    for state in states {
        let tid = match state.native_id {
            Some(native) => u32::try_from(native)
                .ok()
                .and_then(|n| Pid::try_from(n).ok()),
            None if state.pthread == main_thread => Some(pid),
            None => {
                let offset = *tid_offset
                    .get_or_insert_with(|| pthread_tid_offset(reader.memory(), main_thread, pid));
                offset.and_then(|offset| pthread_tid(reader.memory(), state.pthread, offset))
            }
        };
        if let Some(tid) = tid.filter(|tid| tids.contains(tid)) {
            stacks.insert(tid, (state.pthread, reader.stack(state.address)));
        }
    }
    // Names after every stack: the frames matter more, should time run out.
    let pthreads: Vec<u64> = stacks.values().map(|(pthread, _)| *pthread).collect();
    let mut names = names::thread_names(reader.memory(), layout, main_interpreter, &pthreads);
    Ok(stacks
        .into_iter()
        .map(|(tid, (pthread, stack))| {
            let thread_name = names.remove(&pthread);
            (
                tid,
                PythonStack {
                    thread_name,
                    ..stack
                },
            )
        })
        .collect())
}

struct ThreadState {
    address: u64,
    pthread: u64,
    native_id: Option<u64>,
}

/// The thread states of the interpreter at `interpreter`, newest first; `None` when the
/// first one does not point back at it (not the layout of this version).
fn thread_states(
    memory: &mut Memory,
    layout: &layout::Layout,
    interpreter: u64,
) -> Option<Vec<ThreadState>> {
    let mut address = memory
        .word(interpreter.wrapping_add(layout.threads_head))
        .ok()?;
    let mut states: Vec<ThreadState> = Vec::new();
    while address != 0 && states.len() < MAX_THREAD_STATES {
        if states.iter().any(|s| s.address == address) {
            break;
        }
        let Ok(bytes) = memory.bytes(address, THREAD_STATE_BYTES) else {
            break;
        };
        let field = |at| int_at::<8>(&bytes, at);
        if field(layout.interp) != Some(interpreter) {
            // Garbage from the start means a wrong layout; later, a thread that went.
            if states.is_empty() {
                return None;
            }
            break;
        }
        states.push(ThreadState {
            address,
            pthread: field(layout.thread_id)?,
            native_id: layout.native_thread_id.and_then(field),
        });
        address = field(layout.next)?;
    }
    Some(states)
}

/// Where the C library's thread descriptor (what `pthread_t` points at) holds the
/// thread's kernel id: the one place in the main thread's descriptor that holds `pid`.
fn pthread_tid_offset(memory: &mut Memory, main_thread: u64, pid: Pid) -> Option<u64> {
    let bytes = memory.bytes(main_thread, PTHREAD_BYTES).ok()?;
    let found: Vec<u64> = (0..PTHREAD_BYTES as u64)
        .step_by(4)
        .filter(|at| int_at::<4>(&bytes, *at) == Some(u64::from(pid.as_raw() as u32)))
        .collect();
    match found[..] {
        [offset] => Some(offset),
        _ if found.contains(&GLIBC_TID_OFFSET) => Some(GLIBC_TID_OFFSET),
        _ => None,
    }
}

fn pthread_tid(memory: &mut Memory, pthread: u64, offset: u64) -> Option<Pid> {
    let bytes = memory.bytes(pthread.wrapping_add(offset), 4).ok()?;
    Pid::try_from(int_at::<4>(&bytes, 0)? as u32).ok()
}

/// Whether `mapping` may be a CPython interpreter's module (by its name, which only
/// decides whether to look: the symbols decide what it is).
pub fn may_be_interpreter(mapping: &Mapping) -> bool {
    let name = super::module_name(mapping);
    mapping.inode != 0 && (name.starts_with("python") || name.starts_with("libpython"))
}
