//! Separate debug files (Debian's `-dbg`/`-dbgsym` packages) name the internal functions
//! a distribution strips from its libraries (`__pthread_clockjoin_ex` under
//! `pthread_join`). Only root's build-id directory is looked in, by a path made of the
//! module's build id in hex: nothing a process or a file's author names is opened (a
//! debug link's file name is theirs, so links are never followed).
use std::{
    fs::{File, Metadata, OpenOptions},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::PathBuf,
};

use crate::{elf::Elf, procfs::MAX_FILE_BYTES};

const BUILD_ID_DIR: &str = "/usr/lib/debug/.build-id";
/// A GNU build-id note is 16 bytes of header and a 20-byte id in practice.
const MAX_NOTE_BYTES: u64 = 1024;
const NT_GNU_BUILD_ID: u32 = 3;

/// The debug file installed for build id `id`, and its metadata, if root installed one.
pub fn open(id: &[u8]) -> Option<(File, Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path(id))
        .ok()?;
    let meta = file.metadata().ok()?;
    let trusted = meta.file_type().is_file()
        && meta.uid() == 0
        && meta.mode() & 0o022 == 0
        && meta.len() <= MAX_FILE_BYTES;
    trusted.then_some((file, meta))
}

fn path(id: &[u8]) -> PathBuf {
    let hex: String = id.iter().map(|byte| format!("{byte:02x}")).collect();
    PathBuf::from(BUILD_ID_DIR)
        .join(&hex[..2])
        .join(format!("{}.debug", &hex[2..]))
}

/// The id in `.note.gnu.build-id`: 4-byte name size, id size and type, the name `GNU\0`,
/// then the id.
pub fn build_id(elf: &Elf) -> Option<Vec<u8>> {
    let note = elf
        .section_data(".note.gnu.build-id", MAX_NOTE_BYTES)
        .ok()??;
    let word = |at: usize| Some(u32::from_le_bytes(note.get(at..at + 4)?.try_into().ok()?));
    let (name_size, id_size, kind) = (word(0)?, word(4)?, word(8)?);
    if kind != NT_GNU_BUILD_ID || name_size != 4 || note.get(12..16)? != b"GNU\0" {
        return None;
    }
    let id = note.get(16..16 + usize::try_from(id_size).ok()?)?;
    (2..=64).contains(&id.len()).then(|| id.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_paths_are_hex_under_roots_directory() {
        assert_eq!(
            path(&[0x93, 0xac, 0x61, 0x0f]),
            PathBuf::from("/usr/lib/debug/.build-id/93/ac610f.debug")
        );
    }
}
