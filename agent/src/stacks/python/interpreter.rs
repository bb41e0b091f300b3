//! Finding a process's CPython interpreter: the module (the `python` executable, or the
//! `libpython` it loads) that defines `_PyRuntime`, where that is in the process, and
//! the interpreter's version. Modules are opened only through their mappings, their
//! symbol tables read with the ELF reader's caps, once per file.
use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Mutex, MutexGuard, PoisonError},
};

use super::{
    layout::{self, Layout, Version},
    memory::{int_at, Memory},
    ReadError,
};
use crate::{
    elf::{Elf, ElfError},
    pid::Pid,
    procfs::{open_mapping, Mapping},
    stacks::FileVersion,
};

/// Modules looked into at most: a `python` executable and a libpython or two.
const MAX_CANDIDATES: usize = 3;
/// Module files remembered at most: a host runs a few interpreters.
const MAX_MODULES: usize = 256;
/// What `_Py_DebugOffsets` (3.13 and later) starts `_PyRuntime` with.
const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// Functions that appeared in each version before 3.11 (which states its version in
/// `Py_Version`): the newest one a module defines dates it.
const INTRODUCED: [(&str, u8); 3] = [
    ("Py_NewRef", 10),
    ("PyFrame_GetBack", 9),
    ("PyCode_NewWithPosOnlyArgs", 8),
];

#[derive(thiserror::Error, Debug)]
pub enum FindError {
    #[error("CPython {0} is not supported (3.7 to 3.13 are)")]
    Unsupported(Version),
    #[error("the interpreter's version could not be read: {0}")]
    Version(#[from] ReadError),
    #[error(
        "_PyRuntime does not start with the debug offsets of CPython {0} as exitwatch \
         knows them (a free-threaded or debug build?)"
    )]
    NoDebugOffsets(Version),
}

/// A CPython interpreter in a process.
pub struct Interpreter {
    /// The address of `_PyRuntime` in the process.
    pub runtime: u64,
    pub version: Version,
    pub layout: &'static Layout,
}

/// The interpreter `maps` load, if any: `Ok(None)` for a process that runs no CPython
/// 3.7 or later (3.6 and older have no `_PyRuntime`).
pub fn find(
    root: &Path,
    pid: Pid,
    maps: &[Mapping],
    memory: &mut Memory,
) -> Result<Option<Interpreter>, FindError> {
    for mapping in candidates(maps) {
        let Some(module) = module(root, pid, mapping) else {
            continue;
        };
        let runtime = mapping.start.wrapping_add(module.runtime);
        let version = match module.version {
            Dated::Published(at) => {
                let hex = memory.word(mapping.start.wrapping_add(at))?;
                Version::from_hex(hex & 0xffff_ffff)
            }
            Dated::Guessed(version) => version,
        };
        let layout = layout::layout(version).ok_or(FindError::Unsupported(version))?;
        if version.minor == 13 {
            debug_offsets(memory, runtime, version)?;
        }
        return Ok(Some(Interpreter {
            runtime,
            version,
            layout,
        }));
    }
    Ok(None)
}

/// What a module's symbols say about the interpreter in it, as distances from the start
/// of its mapping (the same in every process that maps the file at that offset).
#[derive(Clone, Copy, Debug)]
struct Module {
    runtime: u64,
    version: Dated,
}

#[derive(Clone, Copy, Debug)]
enum Dated {
    /// `Py_Version` is there (3.11 and later), to be read from the process.
    Published(u64),
    /// Guessed from the functions the module defines.
    Guessed(Version),
}

/// The interpreter symbols of the module at `mapping`, from [`MODULES`] or its file;
/// `None` when it has none, or when its file could not be read (not remembered: a later
/// capture tries again).
fn module(root: &Path, pid: Pid, mapping: &Mapping) -> Option<Module> {
    let (file, meta) = open_mapping(root, pid, mapping).ok()?;
    let key = FileVersion::of(mapping, &meta);
    if let Some(known) = modules().get(&key) {
        return *known;
    }
    let read = Elf::parse(&file).and_then(|elf| read_module(&elf, mapping.offset));
    let module = match read {
        Err(ElfError::Io(_)) => return None,
        Err(_) => None,
        Ok(module) => module,
    };
    let mut modules = modules();
    if modules.len() < MAX_MODULES {
        modules.insert(key, module);
    }
    module
}

/// What each module file's symbols said: a symbol search reads the whole string table
/// and streams the symbols, so it is made once per file, not once per capture. The lock
/// is held for lookups only, never over a read: a file on a stalled file system must
/// not hold up the captures of other processes.
static MODULES: Mutex<BTreeMap<FileVersion, Option<Module>>> = Mutex::new(BTreeMap::new());

fn modules() -> MutexGuard<'static, BTreeMap<FileVersion, Option<Module>>> {
    MODULES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `_PyRuntime` and the version's source in `elf`, mapped from file offset `offset`.
fn read_module(elf: &Elf, offset: u64) -> Result<Option<Module>, ElfError> {
    let Some(runtime) = elf.object("_PyRuntime")? else {
        return Ok(None);
    };
    let Some(load) = elf.address_of(offset) else {
        return Ok(None);
    };
    Ok(Some(Module {
        runtime: runtime.address.wrapping_sub(load),
        version: version(elf, load),
    }))
}

/// The first mapping of each file that may be the interpreter: files named like
/// `python*` or `libpython*` (a statically linked interpreter renamed to something else
/// is not looked for).
fn candidates(maps: &[Mapping]) -> impl Iterator<Item = &Mapping> {
    let mut seen = Vec::new();
    maps.iter()
        .filter(move |m| {
            let first = super::may_be_interpreter(m) && !seen.contains(&m.file_id());
            if first {
                seen.push(m.file_id());
            }
            first
        })
        .take(MAX_CANDIDATES)
}

/// `Py_Version` where the module defines it (3.11 and later), else the newest function
/// of [`INTRODUCED`] it defines; `load` is where the mapping starts in the file's
/// addresses.
fn version(elf: &Elf, load: u64) -> Dated {
    if let Some(symbol) = elf.object("Py_Version").ok().flatten() {
        return Dated::Published(symbol.address.wrapping_sub(load));
    }
    let minor = INTRODUCED
        .iter()
        .find(|(name, _)| elf.function(name).ok().flatten().is_some())
        .map_or(7, |(_, minor)| *minor);
    Dated::Guessed(Version { major: 3, minor })
}

/// 3.13 publishes its layout at the start of `_PyRuntime`, after a cookie and the
/// version: all must be there and agree with the table, or this is not the interpreter
/// the table describes.
fn debug_offsets(memory: &mut Memory, runtime: u64, version: Version) -> Result<(), FindError> {
    let published = layout::debug_offsets_3_13();
    let words = published
        .iter()
        .map(|(index, _)| index + 1)
        .max()
        .unwrap_or(2);
    let head = memory.bytes(runtime, words * 8)?;
    let word = |index: usize| int_at::<8>(&head, index as u64 * 8);
    let agrees = head.starts_with(DEBUG_COOKIE)
        && word(1).map(Version::from_hex) == Some(version)
        && published
            .iter()
            .all(|(index, value)| word(*index) == Some(*value));
    if agrees {
        Ok(())
    } else {
        Err(FindError::NoDebugOffsets(version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_without_an_interpreter_is_remembered_as_such() {
        let (pid, libc) = crate::stacks::own_libc();
        assert!(module(Path::new("/proc"), pid, &libc).is_none());
        let remembered = modules()
            .iter()
            .any(|(key, module)| key.file_id() == libc.file_id() && module.is_none());
        assert!(remembered, "libc's symbols were not remembered");
    }
}
