//! Opening the files a process maps without trusting any name it chose. A name in `maps`
//! is whatever the process gave its file (a newline in it is printed as `\012`, so it can
//! name a different file, a FIFO that blocks the opener forever). `map_files/START-END`
//! is a magic link to exactly the mapped file, whatever its name or mount
//! namespace; the checks on the opened file then make sure it is what `maps` described.
//! Open these only inside [`super::ProcFs::bounded`]: a file on FUSE can block the open.
use std::{
    fs::{File, Metadata, OpenOptions},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::Path,
};

use super::{gone_or_io, Error, Mapping};

/// Larger files are not opened: real libraries and interpreters are a few MiB, and
/// nothing here reads a file whole anyway.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Why an opened file was not used.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    #[error("not a regular file")]
    NotRegular,
    #[error("not the file the mapping named (device or inode differ)")]
    Changed,
    #[error("larger than {MAX_FILE_BYTES} bytes")]
    TooBig,
}

/// The file mapped at `mapping` in process `pid`, checked to be that mapping's regular
/// file (device and inode) of at most [`MAX_FILE_BYTES`]. `root` is the `/proc` mount. Needs CAP_SYS_ADMIN or
/// CAP_CHECKPOINT_RESTORE (the kernel's rule for `map_files`).
pub fn open_mapping(root: &Path, pid: i32, mapping: &Mapping) -> Result<(File, Metadata), Error> {
    let link = root
        .join(pid.to_string())
        .join("map_files")
        .join(format!("{:x}-{:x}", mapping.start, mapping.end));
    let (file, meta) = open_checked(pid, &link)?;
    let (major, minor) = mapping.dev;
    if meta.ino() != mapping.inode
        || libc::major(meta.dev()) != major
        || libc::minor(meta.dev()) != minor
    {
        return Err(Error::Refused {
            path: link,
            why: Refusal::Changed,
        });
    }
    Ok((file, meta))
}

fn open_checked(pid: i32, link: &Path) -> Result<(File, Metadata), Error> {
    // O_NOFOLLOW cannot be used: it refuses magic links (ELOOP), and these are what
    // makes the open safe. O_NONBLOCK keeps a FIFO or device from blocking the open.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(link)
        .map_err(|e| gone_or_io(pid, link, e))?;
    let meta = file.metadata().map_err(|e| gone_or_io(pid, link, e))?;
    let refused = |why| Error::Refused {
        path: link.to_owned(),
        why,
    };
    if !meta.file_type().is_file() {
        return Err(refused(Refusal::NotRegular));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(refused(Refusal::TooBig));
    }
    Ok((file, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::ProcFs;

    #[test]
    fn opens_own_libraries_by_mapping_and_checks_identity() {
        let proc = ProcFs::default();
        let pid = i32::try_from(std::process::id()).unwrap();
        let maps = proc.mappings(pid).unwrap();
        let library = maps
            .iter()
            .find(|m| m.path.is_some() && m.inode != 0)
            .expect("a file mapping in our own process");
        let (_, meta) = open_mapping(Path::new("/proc"), pid, library).unwrap();
        assert_eq!(meta.ino(), library.inode);
        let mut other = library.clone();
        other.inode += 1;
        assert!(matches!(
            open_mapping(Path::new("/proc"), pid, &other),
            Err(Error::Refused {
                why: Refusal::Changed,
                ..
            })
        ));
    }
}
