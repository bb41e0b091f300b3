//! Names for return addresses with blazesym: ELF symbols (of root's debug file for the
//! module when one is installed, which has the internal functions a distribution
//! strips), and file and line from DWARF for the program's own modules, where the module
//! carries it itself. blazesym gets each file as `/proc/self/fd/N` of a file already
//! opened safely (the module through its mapping), never a path a process named, and
//! never follows debug links (see [`super::unwind::Loaded::dwarf`]).
//!
//! What blazesym parses of a file (its symbol index, the DWARF units it read) is kept
//! across captures per file version ([`Source`]): the same libraries are on every stack,
//! and parsing their symbol tables again at each capture was most of a capture's time.
use std::{
    cell::RefCell,
    collections::BTreeMap,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Instant,
};

use blazesym::symbolize::{
    source::{self, Source as Described},
    Input, Symbolized, Symbolizer,
};
use framehop::FrameAddress;

use super::{
    model::{Frame, FrameKind},
    remembered::Remembered,
    unwind::{code_mapping, Loaded},
    FileVersion,
};
use crate::procfs::Mapping;

/// Names and paths come from files any user may have written: display them, cut.
const MAX_NAME_CHARS: usize = 256;
/// Files whose parsed symbols are kept, and the bytes of their symbol tables and DWARF
/// together (what blazesym maps and indexes); the oldest are dropped first. Each kept
/// file holds a descriptor and a mapping of the file: with the workers given up on (each
/// keeps its own until its thread ends), this stays well inside the descriptors the agent
/// keeps for itself (`http/fd_budget.rs`).
const MAX_SOURCES: usize = 16;
const MAX_SOURCE_BYTES: u64 = 128 << 20;

thread_local! {
    /// blazesym's parsed data may not leave its thread: captures symbolize on the bounded
    /// worker, whose thread keeps them (a worker given up on drops them when it ends).
    static SOURCES: RefCell<Remembered<Source>> =
        const { RefCell::new(Remembered::new(MAX_SOURCES, MAX_SOURCE_BYTES)) };
}

/// One frame per address, innermost first.
/// Names are looked up until `until`; later frames keep their module and offset (a
/// lookup in a big DWARF file is CPU time the bounded worker's deadline also counts).
pub fn frames(
    root: &Path,
    maps: &[Mapping],
    addresses: &[FrameAddress],
    modules: &BTreeMap<u64, Loaded>,
    until: Instant,
) -> Vec<Frame> {
    SOURCES.with_borrow_mut(|sources| {
        addresses
            .iter()
            .map(|address| frame(sources, root, maps, address, modules, until))
            .collect()
    })
}

fn frame(
    sources: &mut Remembered<Source>,
    root: &Path,
    maps: &[Mapping],
    address: &FrameAddress,
    modules: &BTreeMap<u64, Loaded>,
    until: Instant,
) -> Frame {
    let lookup = address.address_for_lookup();
    let mut frame = Frame {
        kind: FrameKind::Native,
        function: None,
        file: None,
        line: None,
        module: None,
        offset: address.address(),
    };
    let Some(mapping) = code_mapping(maps, lookup) else {
        return frame;
    };
    frame.module = Some(super::module_name(mapping));
    let Some(loaded) = modules.get(&mapping.start) else {
        // Not opened: the offset in the file is all there is.
        frame.offset = lookup - mapping.start + mapping.offset;
        return frame;
    };
    frame.offset = lookup.wrapping_sub(loaded.bias);
    if Instant::now() >= until {
        return frame;
    }
    let module = Opened {
        file: &loaded.file,
        version: loaded.version,
        bytes: loaded.symbol_bytes,
    };
    let symbols = match (&loaded.debug, loaded.symbols) {
        (Some((file, meta)), _) => Some(Opened {
            file,
            version: FileVersion::of_file(meta),
            bytes: meta.len(),
        }),
        (None, true) => Some(module),
        (None, false) => None,
    };
    let symbol = symbols.and_then(|file| named(sources, root, file, false, frame.offset));
    frame.function = symbol.map(|symbol| symbol.name);
    // Line tables only where the user's code is: a runtime library's DWARF is
    // large, and its lines are not what anyone fixes.
    if loaded.dwarf && !frame.is_runtime() {
        if let Some(code) = named(sources, root, module, true, frame.offset) {
            frame.function.get_or_insert(code.name);
            frame.file = code.file;
            frame.line = code.line;
        }
    }
    frame
}

/// A file opened for this capture, the version it is, and the bytes its source stands for.
#[derive(Clone, Copy)]
struct Opened<'f> {
    file: &'f File,
    version: FileVersion,
    bytes: u64,
}

/// A symbol's name, and its file and line when DWARF gave them.
struct Named {
    name: String,
    file: Option<String>,
    line: Option<u32>,
}

/// The symbol at `stated` (an address as the file states it) in `file`, with DWARF when
/// `dwarf`, from the file's kept source, or from one made now (and kept once it could
/// read the file).
fn named(
    sources: &mut Remembered<Source>,
    root: &Path,
    file: Opened,
    dwarf: bool,
    stated: u64,
) -> Option<Named> {
    if let Some(source) = sources.get(&file.version) {
        return source.named(dwarf, stated).ok().flatten();
    }
    let source = Source::new(root, file.file);
    let named = source.named(dwarf, stated).ok()?;
    sources.insert(file.version, source, file.bytes);
    named
}

/// A symbolizer of one file, made with `/proc/self/fd/N` of the file as opened for the
/// capture that made it, and always handed that same path. blazesym opens the path at its
/// first lookup and keeps that file (and its parsed data) for the path; with reloading
/// off it never looks at the path again, so it does not matter which file N names in
/// later captures. A source is kept only once a lookup succeeded, which means blazesym
/// has opened the file.
struct Source {
    symbolizer: Symbolizer,
    path: PathBuf,
}

impl Source {
    fn new(root: &Path, file: &File) -> Self {
        Self {
            symbolizer: Symbolizer::builder()
                .enable_auto_reload(false)
                .set_debug_dirs(Some::<[&Path; 0]>([]))
                .build(),
            path: root
                .join("self")
                .join("fd")
                .join(file.as_raw_fd().to_string()),
        }
    }

    /// The symbol at `stated`, if the file has one there; an error if the file could not
    /// be read.
    fn named(&self, dwarf: bool, stated: u64) -> Result<Option<Named>, blazesym::Error> {
        let mut elf = source::Elf::new(&self.path);
        elf.debug_syms = dwarf;
        let symbolized = self
            .symbolizer
            .symbolize_single(&Described::Elf(elf), Input::VirtOffset(stated))?;
        let Symbolized::Sym(symbol) = symbolized else {
            return Ok(None);
        };
        let code = symbol.code_info.as_deref();
        Ok(Some(Named {
            name: cut(&symbol.name),
            file: code.map(|code| cut(&code.file.to_string_lossy())),
            line: code.and_then(|code| code.line),
        }))
    }
}

fn cut(text: &str) -> String {
    text.chars().take(MAX_NAME_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::{elf::Elf, procfs::open_mapping};

    #[test]
    fn a_kept_source_names_its_own_file_whatever_its_fd_names_later() {
        let root = Path::new("/proc");
        let (pid, libc) = super::super::own_libc();
        let (file, meta) = open_mapping(root, pid, &libc).expect("opening libc");
        let getpid = Elf::parse(&file)
            .and_then(|elf| elf.function("getpid"))
            .expect("libc's symbols")
            .expect("libc defines getpid")
            .address;
        let version = FileVersion::of(&libc, &meta);
        let mut sources = Remembered::new(MAX_SOURCES, MAX_SOURCE_BYTES);
        fn opened(file: &File, version: FileVersion) -> Opened<'_> {
            Opened {
                file,
                version,
                bytes: 1,
            }
        }
        let first =
            named(&mut sources, root, opened(&file, version), false, getpid).expect("a name");
        assert!(first.name.contains("getpid"), "{}", first.name);
        assert_eq!(sources.len(), 1);
        // libc's descriptor number now names another file: the kept source reads libc.
        drop(file);
        let other = fs::File::open("/proc/self/exe").expect("opening this test binary");
        let again =
            named(&mut sources, root, opened(&other, version), false, getpid).expect("a name");
        assert_eq!(again.name, first.name);
        assert_eq!(sources.len(), 1, "parsed once");
    }
}
