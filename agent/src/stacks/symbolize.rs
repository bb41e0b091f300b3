//! Names for return addresses with blazesym: ELF symbols (of root's debug file for the
//! module when one is installed, which has the internal functions a distribution
//! strips), and file and line from DWARF for the program's own modules, where the module
//! carries it itself. blazesym gets each file as `/proc/self/fd/N` of a file already
//! opened safely (the module through its mapping), never a path a process named, and
//! never follows debug links (see [`super::unwind::Loaded::dwarf`]).
use std::{collections::BTreeMap, fs::File, os::fd::AsRawFd, path::Path, time::Instant};

use blazesym::symbolize::{
    source::{self, Source},
    Input, Sym, Symbolized, Symbolizer,
};
use framehop::FrameAddress;

use super::{
    model::{Frame, FrameKind},
    unwind::{code_mapping, Loaded},
};
use crate::procfs::Mapping;

/// Names and paths come from files any user may have written: display them, cut.
const MAX_NAME_CHARS: usize = 256;

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
    // A symbolizer per capture: it caches by path, and `/proc/self/fd/N` names another
    // file once N is closed and reused.
    let symbolizer = Symbolizer::builder()
        .enable_auto_reload(false)
        .set_debug_dirs(Some::<[&Path; 0]>([]))
        .build();
    addresses
        .iter()
        .map(|address| {
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
            let symbols = match (&loaded.debug, loaded.symbols) {
                (Some(debug), _) => Some(debug),
                (None, true) => Some(&loaded.file),
                (None, false) => None,
            };
            let symbol =
                symbols.and_then(|file| lookup_in(&symbolizer, root, file, false, frame.offset));
            frame.function = symbol.map(|symbol| cut(&symbol.name));
            // Line tables only where the user's code is: a runtime library's DWARF is
            // large, and its lines are not what anyone fixes.
            if loaded.dwarf && !frame.is_runtime() {
                let code = lookup_in(&symbolizer, root, &loaded.file, true, frame.offset);
                if let Some(symbol) = code {
                    frame.function.get_or_insert_with(|| cut(&symbol.name));
                    if let Some(code) = symbol.code_info {
                        frame.file = Some(cut(&code.file.to_string_lossy()));
                        frame.line = code.line;
                    }
                }
            }
            frame
        })
        .collect()
}

/// The symbol at `stated` (an address as the file states it) in `file`, with DWARF when
/// `dwarf`.
fn lookup_in<'s>(
    symbolizer: &'s Symbolizer,
    root: &Path,
    file: &File,
    dwarf: bool,
    stated: u64,
) -> Option<Sym<'s>> {
    let path = root
        .join("self")
        .join("fd")
        .join(file.as_raw_fd().to_string());
    let mut elf = source::Elf::new(path);
    elf.debug_syms = dwarf;
    match symbolizer.symbolize_single(&Source::Elf(elf), Input::VirtOffset(stated)) {
        Ok(Symbolized::Sym(symbol)) => Some(symbol),
        _ => None,
    }
}

fn cut(text: &str) -> String {
    text.chars().take(MAX_NAME_CHARS).collect()
}
