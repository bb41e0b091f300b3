//! What a module file says for unwinding and naming (its unwind tables, which of its
//! symbol tables and DWARF may be read, its build id), read once per version of the file
//! and mapping offset, not at every capture: the tables are the largest read a capture
//! makes, and the same libraries are on every stack.
use std::{
    fs::{File, Metadata},
    ops::Range,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use framehop::ExplicitModuleSectionInfo;

use super::{debug_file, remembered::Remembered, FileVersion};
use crate::{
    elf::{Elf, ElfError},
    procfs::Mapping,
};

/// Unwind tables of the largest real libraries are a few MiB.
const MAX_UNWIND_BYTES: u64 = 16 << 20;
/// blazesym holds a module's symbols, and the DWARF units it reads, in memory: a file
/// whose tables are larger than this (any user can map one) gets no names, or no lines.
const MAX_SYMBOL_BYTES: u64 = 16 << 20;
const MAX_DWARF_BYTES: u64 = 32 << 20;
/// Files remembered, and their unwind tables' bytes together; the oldest are dropped
/// first (any process can map new files).
const MAX_FILES: usize = 256;
const MAX_BYTES: u64 = 64 << 20;

/// Section contents shared by the captures that use them.
pub type Data = Arc<[u8]>;

/// One module file's tables, as stated in the file.
#[derive(Debug, Default)]
pub struct Tables {
    /// The address the file states for the mapping's file offset.
    pub stated: u64,
    text: Option<Range<u64>>,
    got: Option<Range<u64>>,
    eh_frame_range: Option<Range<u64>>,
    eh_frame_hdr_range: Option<Range<u64>>,
    eh_frame: Option<Data>,
    eh_frame_hdr: Option<Data>,
    debug_frame: Option<Data>,
    /// The file's symbol tables are small enough to be read.
    pub symbols: bool,
    /// The file's DWARF may be read (see [`super::unwind::Loaded::dwarf`]).
    pub dwarf: bool,
    /// The bytes of the symbol tables, and of the DWARF if it may be read: what naming
    /// from this file holds in memory (see [`super::symbolize`]).
    pub symbol_bytes: u64,
    pub build_id: Option<Vec<u8>>,
}

impl Tables {
    /// The unwind tables' bytes.
    pub fn bytes(&self) -> u64 {
        [&self.eh_frame, &self.eh_frame_hdr, &self.debug_frame]
            .into_iter()
            .flatten()
            .map(|data| data.len() as u64)
            .sum()
    }

    /// The unwind tables as framehop takes them (the data is shared, not copied).
    pub fn section_info(&self) -> ExplicitModuleSectionInfo<Data> {
        ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: self.text.clone(),
            got_svma: self.got.clone(),
            eh_frame_svma: self.eh_frame_range.clone(),
            eh_frame_hdr_svma: self.eh_frame_hdr_range.clone(),
            eh_frame: self.eh_frame.clone(),
            eh_frame_hdr: self.eh_frame_hdr.clone(),
            debug_frame: self.debug_frame.clone(),
            ..ExplicitModuleSectionInfo::default()
        }
    }
}

/// The tables of `file` (opened through `mapping`, `meta` its metadata), remembered or
/// read; `None` when it is no ELF file for this machine, or could not be read (that is
/// not remembered: a later capture tries again).
pub fn of(file: &File, meta: &Metadata, mapping: &Mapping) -> Option<Arc<Tables>> {
    let version = FileVersion::of(mapping, meta);
    if let Some(known) = cache().get(&version) {
        return known.clone();
    }
    let tables = match read(file, mapping.offset) {
        Err(ElfError::Io(_)) => return None,
        Err(_) => None,
        Ok(tables) => tables.map(Arc::new),
    };
    let bytes = tables.as_deref().map_or(0, Tables::bytes);
    cache().insert(version, tables.clone(), bytes);
    tables
}

fn read(file: &File, offset: u64) -> Result<Option<Tables>, ElfError> {
    let elf = Elf::parse(file)?;
    let Some(stated) = elf.address_of(offset) else {
        return Ok(None);
    };
    // A table too big is left out, as if the file had none.
    let section = |name| {
        Ok::<_, ElfError>(match elf.section_data(name, MAX_UNWIND_BYTES) {
            Err(ElfError::Io(error)) => return Err(ElfError::Io(error)),
            Err(_) => None,
            Ok(data) => data.map(Data::from),
        })
    };
    let eh_frame = section(".eh_frame")?;
    let debug_frame = match eh_frame {
        None => section(".debug_frame")?,
        Some(_) => None,
    };
    let (symbols, dwarf, symbol_bytes) = readable(&elf);
    Ok(Some(Tables {
        stated,
        text: elf.section_range(".text"),
        got: elf.section_range(".got"),
        eh_frame_range: elf.section_range(".eh_frame"),
        eh_frame_hdr_range: elf.section_range(".eh_frame_hdr"),
        eh_frame_hdr: section(".eh_frame_hdr")?,
        eh_frame,
        debug_frame,
        symbols,
        dwarf,
        symbol_bytes,
        build_id: debug_file::build_id(&elf),
    }))
}

/// Whether blazesym may read `elf`'s symbol tables, and its DWARF, and the bytes of
/// those it may. Sizes are those the section headers state, not the address ranges they
/// claim (a range that overflows would otherwise count as nothing).
fn readable(elf: &Elf) -> (bool, bool, u64) {
    let symbol_bytes = [".symtab", ".strtab", ".dynsym", ".dynstr"]
        .iter()
        .map(|name| elf.sections_size(name))
        .fold(0, u64::saturating_add);
    let dwarf_bytes = elf.sections_size(".debug_");
    let symbols = symbol_bytes <= MAX_SYMBOL_BYTES;
    let links = [".gnu_debuglink", ".gnu_debugaltlink", ".debug_sup"];
    let dwarf = symbols
        && !links.iter().any(|name| elf.has_section(name))
        && dwarf_bytes <= MAX_DWARF_BYTES;
    let bytes = match (symbols, dwarf) {
        (false, _) => 0,
        (true, false) => symbol_bytes,
        (true, true) => symbol_bytes + dwarf_bytes,
    };
    (symbols, dwarf, bytes)
}

/// The files read. The lock is held for lookups and insertions only, never over a read:
/// a file on a stalled file system must not hold up other captures.
static CACHE: Mutex<Remembered<Option<Arc<Tables>>>> =
    Mutex::new(Remembered::new(MAX_FILES, MAX_BYTES));

fn cache() -> MutexGuard<'static, Remembered<Option<Arc<Tables>>>> {
    CACHE.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::procfs::open_mapping;

    #[test]
    fn a_library_with_a_debug_link_gets_names_but_no_dwarf() {
        let (pid, libc) = super::super::own_libc();
        let (file, _) = open_mapping(Path::new("/proc"), pid, &libc).expect("opening libc");
        let elf = Elf::parse(&file).expect("libc is ELF");
        assert!(
            elf.has_section(".gnu_debuglink"),
            "Debian's libc links its debug file"
        );
        let (symbols, dwarf, _) = readable(&elf);
        assert_eq!((symbols, dwarf), (true, false));
    }

    #[test]
    fn a_file_is_read_once_per_version_and_the_oldest_make_room() {
        let (pid, libc) = super::super::own_libc();
        let (file, meta) = open_mapping(Path::new("/proc"), pid, &libc).expect("opening libc");
        let first = of(&file, &meta, &libc).expect("libc's tables");
        let again = of(&file, &meta, &libc).expect("libc's tables");
        assert!(Arc::ptr_eq(&first, &again), "read once");
        assert!(first.bytes() > 0, "libc has unwind tables");

        let mut cache = Remembered::<()>::new(MAX_FILES, MAX_BYTES);
        let version = |inode| FileVersion {
            file: (libc.dev, inode),
            ..FileVersion::of(&libc, &meta)
        };
        for inode in 0..MAX_FILES as u64 + 1 {
            cache.insert(version(inode), (), 0);
        }
        assert_eq!(cache.len(), MAX_FILES);
        assert!(cache.get(&version(0)).is_none(), "the oldest was dropped");
        cache.insert(version(1000), (), MAX_BYTES / 2);
        cache.insert(version(1001), (), MAX_BYTES / 2);
        cache.insert(version(1002), (), 1);
        assert!(cache.bytes() <= MAX_BYTES);
        assert!(cache.get(&version(1000)).is_none(), "dropped for room");
        assert!(cache.get(&version(1002)).is_some());
    }
}
