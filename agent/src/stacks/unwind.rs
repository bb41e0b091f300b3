//! Native unwinding with framehop over a copy of the stack: DWARF CFI (`.eh_frame`, or
//! `.debug_frame` where there is none) of the modules the walk actually passes through,
//! frame pointers where a module has no unwind table. Modules are opened only through
//! their mappings ([`open_mapping`]); their tables come from [`tables`].
use std::{
    collections::BTreeMap,
    fs::{File, Metadata},
    path::Path,
    time::Instant,
};

use framehop::{
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
};

use super::{
    debug_file,
    tables::{self, Data},
    FileVersion,
};
use crate::{
    pid::Pid,
    procfs::{open_mapping, Mapping},
};

/// Frames walked at most: hangs sit in short call chains, and a corrupt stack could
/// otherwise loop through its own words.
pub const MAX_FRAMES: usize = 64;
/// Unwind tables used by one capture, all modules together: a process writes its own
/// stack, so its return addresses can lead the walk into any number of big files.
const MAX_CAPTURE_UNWIND_BYTES: u64 = 32 << 20;

/// User registers where the thread entered its wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// Stack memory copied from the process: `bytes` from address `start` up.
pub struct StackCopy {
    pub start: u64,
    pub bytes: Vec<u8>,
}

impl StackCopy {
    fn word(&self, address: u64) -> Option<u64> {
        let at = usize::try_from(address.checked_sub(self.start)?).ok()?;
        let word = self.bytes.get(at..at.checked_add(8)?)?;
        Some(u64::from_le_bytes(word.try_into().ok()?))
    }
}

/// A module file opened for one capture, and where it is loaded.
pub struct Loaded {
    pub file: File,
    pub version: FileVersion,
    /// Added to an address the file states to get the address in the process.
    pub bias: u64,
    /// The file's symbol tables are small enough to be read.
    pub symbols: bool,
    /// The file's DWARF may be read: it names no other file to read it from (a debug
    /// link's name is the file author's choice, and would be opened by path), and it
    /// is small enough.
    pub dwarf: bool,
    /// What naming from the file holds in memory (see [`tables::Tables::symbol_bytes`]).
    pub symbol_bytes: u64,
    /// Root's separate debug file for it, if one is installed, and its metadata.
    pub debug: Option<(File, Metadata)>,
}

/// The walk's return addresses (innermost first: the instruction pointer, then return
/// addresses), whether it reached the outermost frame, and the modules it opened, by the
/// start of their executable mapping.
pub struct Walk {
    pub addresses: Vec<FrameAddress>,
    pub complete: bool,
    pub modules: BTreeMap<u64, Loaded>,
}

/// Unwinds from `regs` until the outermost frame, [`MAX_FRAMES`], a frame it cannot
/// unwind, or `until`. Each module is added once the walk reaches an address in it, and
/// the walk then starts over (a walk costs microseconds; a module's tables, a file read).
pub fn walk(
    root: &Path,
    pid: Pid,
    maps: &[Mapping],
    regs: Registers,
    stack: &StackCopy,
    until: Instant,
) -> Walk {
    let mut unwinder = UnwinderX86_64::<Data>::new();
    let mut cache = CacheX86_64::<_>::new();
    let mut modules = BTreeMap::new();
    let mut tried = Vec::new();
    let mut room = MAX_CAPTURE_UNWIND_BYTES;
    loop {
        let (addresses, complete, missing) = frames(&unwinder, &mut cache, regs, stack, |pc| {
            code_mapping(maps, pc).filter(|m| !tried.contains(&m.start))
        });
        match missing {
            Some(mapping) if Instant::now() < until => {
                tried.push(mapping.start);
                if let Some((module, loaded)) = load(root, pid, mapping, &mut room) {
                    unwinder.add_module(module);
                    modules.insert(mapping.start, loaded);
                }
            }
            _ => {
                return Walk {
                    addresses,
                    // A walk cut short to load a module it had no time for is not whole
                    // (`frames` says so already).
                    complete,
                    modules,
                };
            }
        }
    }
}

/// The executable file mapping holding `address`.
pub fn code_mapping(maps: &[Mapping], address: u64) -> Option<&Mapping> {
    maps.iter()
        .find(|m| m.contains(address) && m.perms[2] == b'x' && m.inode != 0)
}

/// One walk; stops early at the first frame in a mapping `unloaded` returns.
fn frames<'m>(
    unwinder: &UnwinderX86_64<Data>,
    cache: &mut CacheX86_64,
    regs: Registers,
    stack: &StackCopy,
    unloaded: impl Fn(u64) -> Option<&'m Mapping>,
) -> (Vec<FrameAddress>, bool, Option<&'m Mapping>) {
    let mut read = |address| stack.word(address).ok_or(());
    let start = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp);
    let mut iter = unwinder.iter_frames(regs.ip, start, cache, &mut read);
    let mut addresses = Vec::new();
    loop {
        match iter.next() {
            Ok(Some(frame)) => {
                if let Some(mapping) = unloaded(frame.address_for_lookup()) {
                    return (addresses, false, Some(mapping));
                }
                addresses.push(frame);
                if addresses.len() >= MAX_FRAMES {
                    return (addresses, false, None);
                }
            }
            Ok(None) => return (addresses, true, None),
            Err(_) => return (addresses, false, None),
        }
    }
}

/// The module behind `mapping`, with its unwind tables (taken out of `room`); `None` if
/// it cannot be opened or is no ELF file for this machine (then frame pointers carry the
/// walk through it). Tables that do not fit are left out, as if the file had none.
fn load(
    root: &Path,
    pid: Pid,
    mapping: &Mapping,
    room: &mut u64,
) -> Option<(Module<Data>, Loaded)> {
    let (file, meta) = open_mapping(root, pid, mapping).ok()?;
    let tables = tables::of(&file, &meta, mapping)?;
    let version = FileVersion::of(mapping, &meta);
    let bias = mapping.start.wrapping_sub(tables.stated);
    let info = match room.checked_sub(tables.bytes()) {
        Some(left) => {
            *room = left;
            tables.section_info()
        }
        None => ExplicitModuleSectionInfo::default(),
    };
    let name = super::module_name(mapping);
    let module = Module::new(name, mapping.start..mapping.end, bias, info);
    Some((
        module,
        Loaded {
            file,
            version,
            bias,
            symbols: tables.symbols,
            dwarf: tables.dwarf,
            symbol_bytes: tables.symbol_bytes,
            debug: tables.build_id.as_deref().and_then(debug_file::open),
        },
    ))
}
