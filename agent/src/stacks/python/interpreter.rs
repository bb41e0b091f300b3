//! Finding a process's CPython interpreter: the module (the `python` executable, or the
//! `libpython` it loads) that defines `_PyRuntime`, where that is in the process, and
//! the interpreter's version. Modules are opened only through their mappings, their
//! symbol tables read with the ELF reader's caps.
use std::path::Path;

use super::{
    layout::{self, Layout, Version},
    memory::{int_at, Memory},
    ReadError,
};
use crate::{
    elf::Elf,
    pid::Pid,
    procfs::{open_mapping, Mapping},
};

/// Modules looked into at most: a `python` executable and a libpython or two.
const MAX_CANDIDATES: usize = 3;
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
        let Ok((file, _)) = open_mapping(root, pid, mapping) else {
            continue;
        };
        let Ok(elf) = Elf::parse(&file) else {
            continue;
        };
        let Some(runtime) = elf.object("_PyRuntime").ok().flatten() else {
            continue;
        };
        let Some(bias) = elf
            .address_of(mapping.offset)
            .map(|address| mapping.start.wrapping_sub(address))
        else {
            continue;
        };
        let runtime = bias.wrapping_add(runtime.address);
        let version = version(&elf, bias, memory)?;
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
/// of [`INTRODUCED`] it defines.
fn version(elf: &Elf, bias: u64, memory: &mut Memory) -> Result<Version, FindError> {
    if let Some(symbol) = elf.object("Py_Version").ok().flatten() {
        let hex = memory.word(bias.wrapping_add(symbol.address))?;
        return Ok(Version::from_hex(hex & 0xffff_ffff));
    }
    let minor = INTRODUCED
        .iter()
        .find(|(name, _)| elf.function(name).ok().flatten().is_some())
        .map_or(7, |(_, minor)| *minor);
    Ok(Version { major: 3, minor })
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
