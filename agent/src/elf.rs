//! Symbol lookup in ELF files that anyone may have written: only the header, the section
//! and program headers, and the first symbol table of each kind (dynamic, then full) with
//! its strings (and, for unwinding, named sections) are read, each with a size cap, by
//! `pread` on an already opened file; anything inconsistent is an error. Memory
//! stays bounded whatever the file claims (a general ELF library sizes its reads by what
//! the file says).
use std::{fs::File, io, ops::Range, os::unix::fs::FileExt};

/// Real files have a few dozen sections and a dozen segments.
const MAX_SECTIONS: usize = 1024;
const MAX_SEGMENTS: usize = 256;
/// A symbol table's strings are read whole: a few hundred KiB for the largest libraries.
const MAX_STRINGS: u64 = 4 << 20;
/// Section names: a few hundred bytes in real files.
const MAX_SECTION_NAMES: u64 = 64 << 10;
/// Symbols are streamed in chunks, so this bounds time, not memory.
const MAX_SYMBOL_BYTES: u64 = 64 << 20;
const CHUNK_SYMBOLS: usize = 2048;

const HEADER_BYTES: usize = 64;
const SECTION_BYTES: usize = 64;
const SEGMENT_BYTES: usize = 56;
const SYMBOL_BYTES: usize = 24;

const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHT_NOBITS: u32 = 8;
const SHT_DYNSYM: u32 = 11;
const PT_LOAD: u32 = 1;
const STT_OBJECT: u8 = 1;
const STT_FUNC: u8 = 2;
const SHN_UNDEF: u16 = 0;

#[cfg(target_arch = "x86_64")]
const MACHINE: u16 = 62;
#[cfg(target_arch = "aarch64")]
const MACHINE: u16 = 183;

#[derive(thiserror::Error, Debug)]
pub enum ElfError {
    #[error("cannot read the file: {0}")]
    Io(#[from] io::Error),
    #[error("not a 64-bit little-endian ELF file for this machine")]
    NotElf,
    #[error("malformed ELF file: {0}")]
    Malformed(&'static str),
    #[error("the ELF file's {0} is larger than exitwatch reads")]
    TooBig(&'static str),
}

/// A function symbol: its virtual address and size as the file states them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol {
    pub address: u64,
    pub size: u64,
}

#[derive(Debug)]
struct Section {
    name: u32,
    kind: u32,
    address: u64,
    offset: u64,
    size: u64,
    link: u32,
    entry_size: u64,
}

#[derive(Debug)]
struct Segment {
    kind: u32,
    offset: u64,
    address: u64,
    file_size: u64,
}

#[derive(Debug)]
pub struct Elf<'a> {
    file: &'a File,
    len: u64,
    sections: Vec<Section>,
    segments: Vec<Segment>,
    /// The section name table; empty when the file has none that fits the cap (then
    /// no section is found by name).
    names: Vec<u8>,
}

impl<'a> Elf<'a> {
    pub fn parse(file: &'a File) -> Result<Self, ElfError> {
        let len = file.metadata()?.len();
        let mut header = [0; HEADER_BYTES];
        if len < HEADER_BYTES as u64 {
            return Err(ElfError::NotElf);
        }
        file.read_exact_at(&mut header, 0)?;
        let identity_ok = header[..4] == *b"\x7fELF"
            && header[4] == 2 // 64-bit
            && header[5] == 1 // little-endian
            && header[6] == 1
            && u16_at(&header, 18) == MACHINE;
        if !identity_ok {
            return Err(ElfError::NotElf);
        }
        let elf = Self {
            file,
            len,
            sections: Vec::new(),
            segments: Vec::new(),
            names: Vec::new(),
        };
        let sections = elf.table(
            u64_at(&header, 40),
            u16_at(&header, 58),
            u16_at(&header, 60),
            SECTION_BYTES,
            MAX_SECTIONS,
            "section headers",
        )?;
        let segments = elf.table(
            u64_at(&header, 32),
            u16_at(&header, 54),
            u16_at(&header, 56),
            SEGMENT_BYTES,
            MAX_SEGMENTS,
            "program headers",
        )?;
        Ok(Self {
            sections: sections
                .chunks_exact(SECTION_BYTES)
                .map(|s| Section {
                    name: u32_at(s, 0),
                    kind: u32_at(s, 4),
                    address: u64_at(s, 16),
                    offset: u64_at(s, 24),
                    size: u64_at(s, 32),
                    link: u32_at(s, 40),
                    entry_size: u64_at(s, 56),
                })
                .collect(),
            segments: segments
                .chunks_exact(SEGMENT_BYTES)
                .map(|p| Segment {
                    kind: u32_at(p, 0),
                    offset: u64_at(p, 8),
                    address: u64_at(p, 16),
                    file_size: u64_at(p, 32),
                })
                .collect(),
            ..elf
        }
        .with_section_names(usize::from(u16_at(&header, 62))))
    }

    fn with_section_names(mut self, index: usize) -> Self {
        let table = self
            .sections
            .get(index)
            .filter(|s| s.kind == SHT_STRTAB && s.size <= MAX_SECTION_NAMES);
        if let Some(names) = table.and_then(|s| self.read(s.offset, s.size as usize).ok()) {
            self.names = names;
        }
        self
    }

    fn section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| name_is(&self.names, s.name, name.as_bytes()))
    }

    /// The address range section `name` states (as linked, before relocation).
    pub fn section_range(&self, name: &str) -> Option<Range<u64>> {
        let section = self.section(name)?;
        Some(section.address..section.address.checked_add(section.size)?)
    }

    /// The contents of section `name`, if it has any in the file and they are at most
    /// `max` bytes.
    pub fn section_data(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, ElfError> {
        let Some(section) = self.section(name).filter(|s| s.kind != SHT_NOBITS) else {
            return Ok(None);
        };
        if section.size > max {
            return Err(ElfError::TooBig("section"));
        }
        self.read(section.offset, section.size as usize).map(Some)
    }

    /// The bytes the section headers state for every section whose name starts with
    /// `prefix` (`.debug_` for all of DWARF), whatever addresses they claim.
    pub fn sections_size(&self, prefix: &str) -> u64 {
        self.sections
            .iter()
            .filter(|s| name_starts(&self.names, s.name, prefix.as_bytes()))
            .map(|s| s.size)
            .fold(0, u64::saturating_add)
    }

    pub fn has_section(&self, name: &str) -> bool {
        self.section(name).is_some()
    }

    /// The defined function `name`, from the dynamic symbols, else the full symbol table.
    /// Only the first table of each kind is searched: the ELF format allows one, and each
    /// table costs up to the caps, so a file claiming a thousand would cost a thousand
    /// times that.
    pub fn function(&self, name: &str) -> Result<Option<Symbol>, ElfError> {
        self.symbol(name, STT_FUNC)
    }

    /// The defined data object `name` (a variable), looked up as [`Elf::function`] is.
    pub fn object(&self, name: &str) -> Result<Option<Symbol>, ElfError> {
        self.symbol(name, STT_OBJECT)
    }

    fn symbol(&self, name: &str, kind: u8) -> Result<Option<Symbol>, ElfError> {
        for table_kind in [SHT_DYNSYM, SHT_SYMTAB] {
            let Some(table) = self.sections.iter().find(|s| s.kind == table_kind) else {
                continue;
            };
            if let Some(symbol) = self.search(table, name.as_bytes(), kind)? {
                return Ok(Some(symbol));
            }
        }
        Ok(None)
    }

    /// Where the byte at virtual `address` is in the file (what uprobes are attached by).
    pub fn file_offset(&self, address: u64) -> Option<u64> {
        self.loads().find_map(|segment| {
            let within = address.checked_sub(segment.address)?;
            (within < segment.file_size).then(|| segment.offset.checked_add(within))?
        })
    }

    /// The virtual address the byte at file `offset` is loaded at (the inverse of
    /// [`Elf::file_offset`]).
    pub fn address_of(&self, offset: u64) -> Option<u64> {
        self.loads().find_map(|segment| {
            let within = offset.checked_sub(segment.offset)?;
            (within < segment.file_size).then(|| segment.address.checked_add(within))?
        })
    }

    /// The lowest loaded address, page aligned: where the mapping at file offset 0 starts.
    pub fn load_base(&self) -> Option<u64> {
        self.loads().map(|s| s.address).min().map(|a| a & !0xfff)
    }

    fn loads(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| s.kind == PT_LOAD)
    }

    fn table(
        &self,
        offset: u64,
        entry_size: u16,
        count: u16,
        expected_size: usize,
        max: usize,
        what: &'static str,
    ) -> Result<Vec<u8>, ElfError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        if usize::from(entry_size) != expected_size {
            return Err(ElfError::Malformed("unexpected header entry size"));
        }
        if usize::from(count) > max {
            return Err(ElfError::TooBig(what));
        }
        self.read(offset, usize::from(count) * expected_size)
    }

    fn search(&self, table: &Section, name: &[u8], kind: u8) -> Result<Option<Symbol>, ElfError> {
        if table.entry_size != SYMBOL_BYTES as u64 {
            return Err(ElfError::Malformed("unexpected symbol size"));
        }
        if table.size > MAX_SYMBOL_BYTES {
            return Err(ElfError::TooBig("symbol table"));
        }
        let strings = usize::try_from(table.link)
            .ok()
            .and_then(|link| self.sections.get(link))
            .filter(|s| s.kind == SHT_STRTAB)
            .ok_or(ElfError::Malformed("symbol table without string table"))?;
        if strings.size > MAX_STRINGS {
            return Err(ElfError::TooBig("string table"));
        }
        let strings = self.read(strings.offset, strings.size as usize)?;
        let count = table.size / SYMBOL_BYTES as u64;
        let mut index = 0;
        while index < count {
            let chunk = (count - index).min(CHUNK_SYMBOLS as u64);
            let offset = table.offset + index * SYMBOL_BYTES as u64;
            let symbols = self.read(offset, chunk as usize * SYMBOL_BYTES)?;
            for symbol in symbols.chunks_exact(SYMBOL_BYTES) {
                let is_kind = symbol[4] & 0xf == kind && u16_at(symbol, 6) != SHN_UNDEF;
                if is_kind && name_is(&strings, u32_at(symbol, 0), name) {
                    return Ok(Some(Symbol {
                        address: u64_at(symbol, 8),
                        size: u64_at(symbol, 16),
                    }));
                }
            }
            index += chunk;
        }
        Ok(None)
    }

    /// `len` bytes at `offset`, which must lie inside the file.
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, ElfError> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(ElfError::Malformed("a table lies outside the file"));
        }
        let mut buffer = vec![0; len];
        self.file
            .read_exact_at(&mut buffer, offset)
            .map_err(|error| match error.kind() {
                io::ErrorKind::UnexpectedEof => ElfError::Malformed("the file shrank"),
                _ => ElfError::Io(error),
            })?;
        Ok(buffer)
    }
}

fn name_is(strings: &[u8], at: u32, name: &[u8]) -> bool {
    name_rest(strings, at, name).is_some_and(|tail| tail.first() == Some(&0))
}

fn name_starts(strings: &[u8], at: u32, prefix: &[u8]) -> bool {
    name_rest(strings, at, prefix).is_some()
}

/// What follows `prefix` in the name at `at`, if the name starts with it.
fn name_rest<'a>(strings: &'a [u8], at: u32, prefix: &[u8]) -> Option<&'a [u8]> {
    usize::try_from(at)
        .ok()
        .and_then(|at| strings.get(at..))?
        .strip_prefix(prefix)
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use object::{Object, ObjectSection, ObjectSymbol};

    use crate::procfs::{open_mapping, ProcFs};

    /// The libc this test binary runs on, opened through its mapping.
    fn own_libc() -> File {
        let proc = ProcFs::default();
        let pid = crate::pid::Pid::try_from(std::process::id()).unwrap();
        let maps = proc.mappings(pid).unwrap();
        let libc = maps
            .iter()
            .find(|m| {
                m.path
                    .as_deref()
                    .and_then(|p| p.file_name())
                    .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))
            })
            .expect("this test binary maps libc");
        open_mapping(std::path::Path::new("/proc"), pid, libc)
            .unwrap()
            .0
    }

    #[test]
    fn finds_exit_in_the_real_libc_like_a_full_parser() {
        let file = own_libc();
        let elf = Elf::parse(&file).unwrap();
        let exit = elf.function("exit").unwrap().expect("libc defines exit");
        assert!(exit.size > 0);
        let data = whole(&file);
        let reference = object::File::parse(&*data).unwrap();
        let expected = reference
            .dynamic_symbols()
            .find(|s| s.name() == Ok("exit") && s.size() > 0)
            .unwrap();
        assert_eq!(
            (exit.address, exit.size),
            (expected.address(), expected.size())
        );
        let offset = elf
            .file_offset(exit.address)
            .expect("exit is in a loaded segment");
        assert!(offset < data.len() as u64);
        assert_eq!(elf.load_base(), Some(0));
        assert_eq!(elf.address_of(offset), Some(exit.address));
        assert_eq!(elf.function("no_such_function_exitwatch").unwrap(), None);
        let eh_frame = reference
            .section_by_name(".eh_frame")
            .expect("libc has unwind tables");
        assert_eq!(
            elf.section_range(".eh_frame"),
            Some(eh_frame.address()..eh_frame.address() + eh_frame.size())
        );
        assert_eq!(
            elf.section_data(".eh_frame", 64 << 20).unwrap().as_deref(),
            Some(eh_frame.data().unwrap())
        );
        assert!(matches!(
            elf.section_data(".eh_frame", 16),
            Err(ElfError::TooBig(_))
        ));
        assert!(!elf.has_section(".no_such_section"));
    }

    #[test]
    fn truncated_and_garbage_files_are_errors() {
        let data = whole(&own_libc());
        let truncated = file_with(&data[..4096]);
        let lookup = Elf::parse(&truncated).and_then(|elf| elf.function("exit"));
        assert!(matches!(lookup, Err(ElfError::Malformed(_))), "{lookup:?}");
        let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7919 % 251) as u8).collect();
        assert!(matches!(
            Elf::parse(&file_with(&garbage)),
            Err(ElfError::NotElf)
        ));
        assert!(matches!(
            Elf::parse(&file_with(b"\x7fELF")),
            Err(ElfError::NotElf)
        ));
    }

    #[test]
    fn huge_claimed_sizes_are_refused_without_reading() {
        let elf = tiny_elf(48, 6);
        let file = file_with(&elf);
        let found = Elf::parse(&file).unwrap().function("exit").unwrap();
        let exit = found.expect("the tiny file defines exit");
        assert_eq!(
            exit,
            Symbol {
                address: 0x1050,
                size: 0x10
            }
        );
        assert_eq!(Elf::parse(&file).unwrap().file_offset(0x1050), Some(0x50));
        for (symbols, strings) in [(1 << 40, 6), (48, 1 << 40), (48 + (1 << 20), 6)] {
            let file = file_with(&tiny_elf(symbols, strings));
            let lookup = Elf::parse(&file).unwrap().function("exit");
            assert!(
                matches!(lookup, Err(ElfError::TooBig(_) | ElfError::Malformed(_))),
                "{symbols} {strings}: {lookup:?}"
            );
        }
    }

    #[test]
    fn only_the_first_table_of_each_kind_is_searched() {
        let mut elf = tiny_elf(48, 6);
        elf.resize(0x300, 0);
        // Section 3: the table that defines `exit`; section 2: another dynamic symbol
        // table, with only the null symbol.
        elf.copy_within(0x200 + 2 * 64..0x200 + 3 * 64, 0x200 + 3 * 64);
        elf[0x200 + 2 * 64 + 32..][..8].copy_from_slice(&24u64.to_le_bytes());
        elf[60..62].copy_from_slice(&4u16.to_le_bytes());
        let file = file_with(&elf);
        assert_eq!(Elf::parse(&file).unwrap().function("exit").unwrap(), None);
    }

    fn whole(file: &File) -> Vec<u8> {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut &*file, &mut data).unwrap();
        data
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    /// One loaded segment, a string table and a dynamic symbol table defining `exit`,
    /// with the tables' sizes as given.
    fn tiny_elf(symbols_size: u64, strings_size: u64) -> Vec<u8> {
        let mut elf = vec![0u8; 0x2c0];
        let put = |elf: &mut Vec<u8>, at: usize, bytes: &[u8]| {
            elf[at..at + bytes.len()].copy_from_slice(bytes)
        };
        put(&mut elf, 0, b"\x7fELF\x02\x01\x01");
        put(&mut elf, 18, &MACHINE.to_le_bytes());
        put(&mut elf, 32, &64u64.to_le_bytes()); // program headers
        put(&mut elf, 40, &0x200u64.to_le_bytes()); // section headers
        put(&mut elf, 54, &56u16.to_le_bytes());
        put(&mut elf, 56, &1u16.to_le_bytes());
        put(&mut elf, 58, &64u16.to_le_bytes());
        put(&mut elf, 60, &3u16.to_le_bytes());
        // PT_LOAD: offset 0 at 0x1000, the whole file.
        put(&mut elf, 64, &PT_LOAD.to_le_bytes());
        put(&mut elf, 64 + 16, &0x1000u64.to_le_bytes());
        put(&mut elf, 64 + 32, &0x2c0u64.to_le_bytes());
        put(&mut elf, 0x100, b"\0exit\0");
        // Symbol 1: `exit`, global function in section 1.
        put(&mut elf, 0x120 + 24, &1u32.to_le_bytes());
        put(&mut elf, 0x120 + 24 + 4, &[0x12, 0]);
        put(&mut elf, 0x120 + 24 + 6, &1u16.to_le_bytes());
        put(&mut elf, 0x120 + 24 + 8, &0x1050u64.to_le_bytes());
        put(&mut elf, 0x120 + 24 + 16, &0x10u64.to_le_bytes());
        let section = |elf: &mut Vec<u8>,
                       index: usize,
                       kind: u32,
                       offset: u64,
                       size: u64,
                       link: u32,
                       entry: u64| {
            let at = 0x200 + index * 64;
            put(elf, at + 4, &kind.to_le_bytes());
            put(elf, at + 24, &offset.to_le_bytes());
            put(elf, at + 32, &size.to_le_bytes());
            put(elf, at + 40, &link.to_le_bytes());
            put(elf, at + 56, &entry.to_le_bytes());
        };
        section(&mut elf, 1, SHT_STRTAB, 0x100, strings_size, 0, 0);
        section(&mut elf, 2, SHT_DYNSYM, 0x120, symbols_size, 1, 24);
        elf
    }
}
