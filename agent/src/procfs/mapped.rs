//! Opening the files a process maps without trusting any name it chose. A name in `maps`
//! is whatever the process gave its file (a newline in it is printed as `\012`, so it can
//! name a different file, a FIFO that blocks the opener forever). `map_files/START-END`
//! is a magic link to exactly the mapped file, whatever its name or mount
//! namespace; the file it reaches is checked to be what `maps` described, and a regular
//! file, before it is opened.
//! Open these only inside [`super::ProcFs::bounded`]: a file on FUSE can block the open.
use std::{
    fs::{File, Metadata, OpenOptions},
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::Path,
};

use super::{gone_or_io, Error, Mapping};
use crate::pid::Pid;

/// Larger files are not opened: real libraries and interpreters are a few MiB, and
/// nothing here reads a file whole anyway.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Why an opened file was not used.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    #[error("not a regular file")]
    NotRegular,
    /// The range was remapped after `maps` was read; not a property of either file.
    #[error("not the file the mapping named (device or inode differ)")]
    Changed,
    #[error("larger than {MAX_FILE_BYTES} bytes")]
    TooBig,
}

/// The file mapped at `mapping` in process `pid`, checked to be that mapping's regular
/// file (see [`same_file`]) of at most [`MAX_FILE_BYTES`]. `root` is the `/proc` mount.
/// Needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE (the kernel's rule for `map_files`).
pub fn open_mapping(root: &Path, pid: Pid, mapping: &Mapping) -> Result<(File, Metadata), Error> {
    let link = root
        .join(pid.to_string())
        .join("map_files")
        .join(format!("{:x}-{:x}", mapping.start, mapping.end));
    // O_PATH reaches the mapped file without opening it (a device's driver, a GPU's, is
    // not asked to open anything as root) and pins it: what is opened below, once it
    // passed the checks, is that very file. O_NOFOLLOW cannot be used: it refuses magic
    // links (ELOOP), and these are what makes the open safe.
    let pinned = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&link)
        .map_err(|e| gone_or_io(pid, &link, e))?;
    let meta = pinned.metadata().map_err(|e| gone_or_io(pid, &link, e))?;
    check(&link, mapping, &meta, fs_type(&pinned))?;
    let reopen = root
        .join("self")
        .join("fd")
        .join(pinned.as_raw_fd().to_string());
    // O_NONBLOCK: a lease on the file fails the open instead of making it wait for the
    // lease holder.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&reopen)
        .map_err(|e| gone_or_io(pid, &link, e))?;
    Ok((file, meta))
}

/// Identity first: a range remapped since `maps` was read is `Changed` whatever it holds
/// now, so the other refusals only ever describe the file the mapping named.
fn check(link: &Path, mapping: &Mapping, meta: &Metadata, fs: Option<i64>) -> Result<(), Error> {
    let why = if !same_file(mapping, meta.dev(), meta.ino(), fs) {
        Refusal::Changed
    } else if !meta.file_type().is_file() {
        Refusal::NotRegular
    } else if meta.len() > MAX_FILE_BYTES {
        Refusal::TooBig
    } else {
        return Ok(());
    };
    Err(Error::Refused {
        path: link.to_owned(),
        why,
    })
}

/// Whether a file with device `dev` and inode `ino`, on a file system of type `fs`, is
/// the one `mapping` names. `maps` prints the superblock's device, which `stat` gives too,
/// except on btrfs: there each subvolume has a device of its own, so only the inode can
/// be compared. Elsewhere the device matters: remapping the range to a file of the same
/// inode number on another file system must not pass.
fn same_file(mapping: &Mapping, dev: u64, ino: u64, fs: Option<i64>) -> bool {
    let device_differs = (libc::major(dev), libc::minor(dev)) != mapping.dev;
    ino == mapping.inode && (fs == Some(BTRFS_SUPER_MAGIC) || !device_differs)
}

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;

/// The file system type (`statfs`'s `f_type`) of an open file, if it can be told.
pub fn fs_type(file: &File) -> Option<i64> {
    // SAFETY: fstatfs fills the zeroed struct it is given, for a valid open fd.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) };
    (rc == 0).then_some(fs.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::ProcFs;

    #[test]
    fn opens_own_libraries_by_mapping_and_checks_identity() {
        let proc = ProcFs::default();
        let pid = Pid::try_from(std::process::id()).unwrap();
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

    #[test]
    fn a_remapped_range_is_changed_whatever_it_now_holds() {
        let root = std::fs::metadata("/").unwrap();
        let mapping = Mapping {
            start: 0x1000,
            end: 0x2000,
            perms: *b"r-xp",
            offset: 0,
            dev: (libc::major(root.dev()), libc::minor(root.dev())),
            inode: root.ino() + 1,
            path: None,
        };
        let why = |mapping: &Mapping| match check(Path::new("/"), mapping, &root, None) {
            Err(Error::Refused { why, .. }) => Some(why),
            _ => None,
        };
        assert_eq!(why(&mapping), Some(Refusal::Changed));
        let same = Mapping {
            inode: root.ino(),
            ..mapping
        };
        assert_eq!(why(&same), Some(Refusal::NotRegular));
    }

    #[test]
    fn a_mapped_device_is_refused_without_being_opened() {
        use std::os::unix::ffi::OsStrExt;
        // A node of its own for /dev/zero's device, so that only this test's opens count.
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("zero");
        let path = std::ffi::CString::new(node.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        let made =
            unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 5)) };
        assert_eq!(made, 0, "making a device node needs root");
        let zero = File::open(&node).unwrap();
        // SAFETY: a fresh private read-only mapping of an open fd, unmapped below, and an
        // inotify watch on a valid path, closed below.
        let (addr, watch) = unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                zero.as_raw_fd(),
                0,
            );
            let watch = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            libc::inotify_add_watch(watch, path.as_ptr(), libc::IN_OPEN);
            (addr, watch)
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let pid = Pid::try_from(std::process::id()).unwrap();
        let mapping = ProcFs::default()
            .mappings(pid)
            .unwrap()
            .into_iter()
            .find(|m| m.start == addr as u64);
        let opened = mapping
            .as_ref()
            .map(|mapping| open_mapping(Path::new("/proc"), pid, mapping));
        let mut events = [0u8; 256];
        // SAFETY: reads into a buffer of the length given; then frees what was made above.
        let read = unsafe {
            let read = libc::read(watch, events.as_mut_ptr().cast(), events.len());
            libc::close(watch);
            libc::munmap(addr, 4096);
            read
        };
        let mapping = mapping.expect("the device mapping is in maps");
        assert_eq!(mapping.path.as_deref(), Some(node.as_path()));
        assert!(
            matches!(
                opened,
                Some(Err(Error::Refused {
                    why: Refusal::NotRegular,
                    ..
                }))
            ),
            "{opened:?}"
        );
        assert!(read <= 0, "the device was opened");
    }

    #[test]
    fn btrfs_subvolume_devices_do_not_count_as_a_change() {
        let mapping = Mapping {
            start: 0x1000,
            end: 0x2000,
            perms: *b"r-xp",
            offset: 0,
            dev: (0, 0x2a),
            inode: 256,
            path: None,
        };
        // What stat gives for a file in a btrfs subvolume: another anonymous device.
        let subvolume = libc::makedev(0, 0x31);
        let ext4 = Some(0xef53);
        assert!(same_file(
            &mapping,
            subvolume,
            mapping.inode,
            Some(BTRFS_SUPER_MAGIC)
        ));
        assert!(same_file(
            &mapping,
            libc::makedev(0, 0x2a),
            mapping.inode,
            ext4
        ));
        assert!(!same_file(&mapping, subvolume, mapping.inode, ext4));
        assert!(!same_file(&mapping, subvolume, mapping.inode, None));
        let other_inode = mapping.inode + 1;
        assert!(!same_file(
            &mapping,
            subvolume,
            other_inode,
            Some(BTRFS_SUPER_MAGIC)
        ));
    }
}
