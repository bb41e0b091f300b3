//! Reader for the parts of `/proc` that explain why a task is stuck.
//!
//! Everything here races with the tasks being inspected, which may exit at any
//! moment; such races surface as [`Error::Gone`] so callers can treat them as normal.
//! What a process controls (its memory, its arguments, its mappings and the files behind
//! them) is read bounded in size and, through [`deadline`], in time.

mod deadline;
mod mapped;
mod parse;
mod sched_clock;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deadline::Deadline;
pub(crate) use deadline::DEADLINE;
pub use mapped::{fs_type, open_mapping, Refusal, MAX_FILE_BYTES};
pub use sched_clock::SchedClock;

use crate::pid::Pid;

/// std has no `ErrorKind` for ESRCH; its value is 3 on every Linux architecture.
const ESRCH: i32 = 3;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("process {pid} is gone")]
    Gone { pid: Pid },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot parse {path}: {what}")]
    Parse { path: PathBuf, what: String },
    #[error(
        "reading the memory or files of process {pid} took longer than {:?}",
        deadline::DEADLINE
    )]
    Timeout { pid: Pid },
    #[error("refusing {path}: {why}")]
    Refused { path: PathBuf, why: Refusal },
}

impl Error {
    pub fn is_gone(&self) -> bool {
        matches!(self, Error::Gone { .. })
    }

    /// A low-cardinality name for metrics: `gone`, `permission`, `parse`, `timeout` or
    /// `io`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Gone { .. } => "gone",
            Error::Io { source, .. } if is_permission(source) => "permission",
            Error::Io { .. } | Error::Refused { .. } => "io",
            Error::Parse { .. } => "parse",
            Error::Timeout { .. } => "timeout",
        }
    }

    pub fn is_permission(&self) -> bool {
        matches!(self, Error::Io { source, .. } if is_permission(source))
    }
}

fn is_permission(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::PermissionDenied || error.raw_os_error() == Some(libc::EPERM)
}

/// How much of a command line is read: enough to recognise a program, bounded whatever
/// the process put in its arguments (they can be megabytes).
pub const CMDLINE_MAX_BYTES: usize = 4096;

/// How much of `/proc/PID/cgroup` is read: a line per hierarchy (about a dozen on a
/// hybrid host), far more than real paths take.
pub const CGROUP_MAX_BYTES: usize = 16 << 10;

/// How much of `maps` is read: thousands of mappings, far more than real programs have,
/// bounded whatever names a process gives its files (each can be 4 KiB long).
pub const MAPS_MAX_BYTES: usize = 2 << 20;

/// What an epoll fd's fdinfo can have before its `tfd:` lines (`pos`, `flags`, `mnt_id`,
/// `ino`), and the most one `tfd:` line can take: with these, reading
/// `EPOLL_HEADER_BYTES + (n + 1) * EPOLL_LINE_BYTES` bytes either gets all of an
/// instance's lines or shows it watches more than `n` fds.
const EPOLL_HEADER_BYTES: usize = 256;
const EPOLL_LINE_BYTES: usize = 128;

/// A process's arguments, possibly cut at [`CMDLINE_MAX_BYTES`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    pub args: Vec<String>,
    /// More arguments (or more of the last one) followed.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStat {
    pub comm: String,
    pub state: char,
    pub ppid: Pid,
    pub pgrp: Pid,
    pub start_ticks: u64,
    pub num_threads: i64,
    /// The CPU it last ran on.
    pub cpu: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Syscall {
    Running,
    User,
    In {
        nr: i64,
        args: [u64; 6],
        sp: u64,
        pc: u64,
    },
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: [u8; 4],
    pub offset: u64,
    /// (major, minor) of the mapped file's device; with `inode`, the file's identity.
    pub dev: (u32, u32),
    /// 0 for anonymous memory, the stack, the heap.
    pub inode: u64,
    /// The file's name as printed (newlines escaped, " (deleted)" removed): for display
    /// and for recognising a library by name, never for opening.
    pub path: Option<PathBuf>,
}

/// A file's identity as `maps` gives it: ((major, minor) device, inode).
pub type FileId = ((u32, u32), u64);

impl Mapping {
    pub fn contains(&self, address: u64) -> bool {
        self.start <= address && address < self.end
    }

    pub fn file_id(&self) -> FileId {
        (self.dev, self.inode)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fd {
    pub fd: i32,
    pub target: FdTarget,
    pub access: Access,
}

/// An fd that is one end of a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeFd {
    pub fd: i32,
    pub pipe: u64,
    pub access: Access,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdTarget {
    Pipe(u64),
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

/// Clones share one reader thread for slow reads (see [`deadline`]); independent
/// users (the scanner, uprobe discovery) should each have their own `ProcFs`.
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
    deadline: Arc<Deadline>,
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            deadline: Arc::default(),
        }
    }

    pub fn pids(&self) -> Result<Vec<Pid>, Error> {
        numeric_entries(&self.root).map_err(|source| Error::Io {
            path: self.root.clone(),
            source,
        })
    }

    pub fn tids(&self, pid: Pid) -> Result<Vec<Pid>, Error> {
        let dir = self.pid_dir(pid).join("task");
        numeric_entries(&dir).map_err(|e| gone_or_io(pid, &dir, e))
    }

    pub fn stat(&self, pid: Pid, tid: Pid) -> Result<TaskStat, Error> {
        self.parse_file(pid, self.task_file(pid, tid, "stat"), parse::stat)
    }

    pub fn syscall(&self, pid: Pid, tid: Pid) -> Result<Syscall, Error> {
        self.parse_file(pid, self.task_file(pid, tid, "syscall"), parse::syscall)
    }

    /// The kernel function the task sleeps in, or "" when it is not sleeping.
    pub fn wchan(&self, pid: Pid, tid: Pid) -> Result<String, Error> {
        let text = self.read_text(pid, &self.task_file(pid, tid, "wchan"))?;
        let text = text.trim();
        Ok(if text == "0" { "" } else { text }.to_owned())
    }

    /// When the task last started running, on the scheduler clock in nanoseconds.
    pub fn sched_exec_start_ns(&self, pid: Pid, tid: Pid) -> Result<Option<u64>, Error> {
        let path = self.task_file(pid, tid, "sched");
        match fs::read(&path) {
            Ok(bytes) => parse::exec_start_ns(&String::from_utf8_lossy(&bytes))
                .map_err(|what| Error::Parse { path, what }),
            // The file exists only with CONFIG_SCHED_DEBUG, so its absence
            // means "gone" only if the task directory went with it.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && path.parent().is_some_and(Path::exists) =>
            {
                Ok(None)
            }
            Err(e) => Err(gone_or_io(pid, &path, e)),
        }
    }

    /// How far the scheduler's clock, which `se.exec_start` is on, lags behind the
    /// monotonic clock: it leaves out time spent in interrupts and stolen by a hypervisor,
    /// which adds up with uptime (2.4 s after an hour on a 2-CPU VM). Measured on the
    /// calling thread, which is running, so its `exec_start` is "now" on that clock (to
    /// within a tick), for the CPU it runs on: each CPU lags by its own amount (see
    /// [`SchedClock`]). 0 where `sched` is not exposed.
    pub fn sched_clock_lag_ns(&self) -> u64 {
        let path = self.root.join("thread-self").join("sched");
        let Ok(bytes) = fs::read(&path) else {
            return 0;
        };
        let now_ns = crate::clock::monotonic_ns();
        parse::exec_start_ns(&String::from_utf8_lossy(&bytes))
            .ok()
            .flatten()
            .map_or(0, |ran_ns| now_ns.saturating_sub(ran_ns))
    }

    /// At most [`CMDLINE_MAX_BYTES`] of the arguments. Empty for kernel threads and
    /// zombies, which have no user memory to read it from.
    pub fn cmdline(&self, pid: Pid) -> Result<Cmdline, Error> {
        let path = self.pid_dir(pid).join("cmdline");
        let mut bytes = self.bounded(pid, move |_| {
            read_at_most(pid, &path, CMDLINE_MAX_BYTES + 1)
        })?;
        let truncated = bytes.len() > CMDLINE_MAX_BYTES;
        bytes.truncate(CMDLINE_MAX_BYTES);
        let bytes = bytes.strip_suffix(b"\0").unwrap_or(&bytes);
        if bytes.is_empty() {
            return Ok(Cmdline::default());
        }
        Ok(Cmdline {
            args: bytes
                .split(|&b| b == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect(),
            truncated,
        })
    }

    /// `/proc/PID/cgroup`, at most [`CGROUP_MAX_BYTES`], whole lines only. A process
    /// with delegated cgroups chooses their names and depth, but not how long the kernel
    /// takes to print them: no deadline is needed.
    pub fn cgroup(&self, pid: Pid) -> Result<String, Error> {
        let path = self.pid_dir(pid).join("cgroup");
        let mut bytes = read_at_most(pid, &path, CGROUP_MAX_BYTES + 1)?;
        if bytes.len() > CGROUP_MAX_BYTES {
            let whole = bytes[..CGROUP_MAX_BYTES]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |newline| newline + 1);
            bytes.truncate(whole);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The process's pipe fds, sorted; fds closed while we look are left out. This walks
    /// every fd of every process that may hold a pipe, so it costs one `readlink` per fd
    /// and one `lstat` per pipe (see [`link_access`]).
    pub fn pipe_fds(&self, pid: Pid) -> Result<Vec<PipeFd>, Error> {
        let dir = self.pid_dir(pid).join("fd");
        let mut pipes = Vec::new();
        for fd in numeric_entries::<i32>(&dir).map_err(|e| gone_or_io(pid, &dir, e))? {
            let link = dir.join(fd.to_string());
            let closed = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
            let target = match fs::read_link(&link) {
                Ok(target) => target,
                Err(e) if closed(&e) && self.pid_dir(pid).exists() => continue,
                Err(e) => return Err(gone_or_io(pid, &link, e)),
            };
            let FdTarget::Pipe(pipe) = parse::fd_target(&target) else {
                continue;
            };
            let access = match link_access(&link) {
                Ok(access) => access,
                Err(e) if closed(&e) && self.pid_dir(pid).exists() => continue,
                Err(e) => return Err(gone_or_io(pid, &link, e)),
            };
            pipes.push(PipeFd { fd, pipe, access });
        }
        Ok(pipes)
    }

    /// One fd; a closed fd of a live process is `Error::Io` with `NotFound`. Its `fdinfo`
    /// is not read: for some files that takes locks a process can hold for ever (an epoll
    /// instance's, held by an `epoll_ctl` on a FUSE file that never answers).
    pub fn fd(&self, pid: Pid, fd: i32) -> Result<Fd, Error> {
        let link = self.pid_dir(pid).join("fd").join(fd.to_string());
        let target = fs::read_link(&link).map_err(|e| self.fd_error(pid, &link, e))?;
        let access = link_access(&link).map_err(|e| self.fd_error(pid, &link, e))?;
        Ok(Fd {
            fd,
            target: parse::fd_target(&target),
            access,
        })
    }

    /// The stack from `sp` up: at most `max` bytes, and no further than the end of the
    /// mapping (of `maps`) that holds `sp`; `None` when no mapping does.
    pub fn stack_above(
        &self,
        pid: Pid,
        maps: &[Mapping],
        sp: u64,
        max: u64,
    ) -> Result<Option<Vec<u8>>, Error> {
        let Some(stack) = maps.iter().find(|m| m.contains(sp)) else {
            return Ok(None);
        };
        let length = (stack.end - sp).min(max) as usize;
        self.memory(pid, sp, length).map(Some)
    }

    /// `len` bytes of the process's memory at `addr` (needs ptrace access: root or
    /// CAP_SYS_PTRACE).
    pub fn memory(&self, pid: Pid, addr: u64, len: usize) -> Result<Vec<u8>, Error> {
        use std::os::unix::fs::FileExt;
        let path = self.pid_dir(pid).join("mem");
        self.bounded(pid, move |_| {
            let file = fs::File::open(&path).map_err(|e| gone_or_io(pid, &path, e))?;
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, addr)
                .map_err(|e| gone_or_io(pid, &path, e))?;
            Ok(buf)
        })
    }

    /// The fds an epoll instance watches, with their event masks; `None` if it watches
    /// more than `max`. Bounded in time (reading it takes the instance's lock, which a
    /// process can keep held) and in size (an instance can watch millions of fds).
    pub fn epoll_targets(
        &self,
        pid: Pid,
        epfd: i32,
        max: usize,
    ) -> Result<Option<Vec<(i32, u32)>>, Error> {
        let path = self.pid_dir(pid).join("fdinfo").join(epfd.to_string());
        let limit = max
            .saturating_add(1)
            .saturating_mul(EPOLL_LINE_BYTES)
            .saturating_add(EPOLL_HEADER_BYTES);
        let read = path.clone();
        let text = self.bounded(pid, move |_| read_at_most(pid, &read, limit))?;
        if text.len() >= limit {
            return Ok(None);
        }
        let targets = parse::epoll_targets(&String::from_utf8_lossy(&text))
            .map_err(|what| Error::Parse { path, what })?;
        Ok((targets.len() <= max).then_some(targets))
    }

    /// The process's mappings in address order, at most [`MAPS_MAX_BYTES`] of them;
    /// lines that do not parse are left out.
    pub fn mappings(&self, pid: Pid) -> Result<Vec<Mapping>, Error> {
        let path = self.pid_dir(pid).join("maps");
        let mut maps = self.bounded(pid, move |_| read_at_most(pid, &path, MAPS_MAX_BYTES))?;
        if maps.len() == MAPS_MAX_BYTES {
            // Cut: the last line may be partial.
            let whole = maps.iter().rposition(|&b| b == b'\n').unwrap_or(0);
            maps.truncate(whole);
        }
        Ok(parse::mappings(&maps))
    }

    /// Runs `read` (given the `/proc` root) on a worker thread, and gives up on it after a
    /// short deadline: for reads that take another process's locks or touch files it
    /// chose. A process that was slow once has such reads refused for a while.
    pub fn bounded<T: Send + 'static>(
        &self,
        pid: Pid,
        read: impl FnOnce(&Path) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let root = self.root.clone();
        let start = || self.stat(pid, pid).ok().map(|stat| stat.start_ticks);
        self.deadline
            .run(pid.as_raw(), start, move || read(&root))
            .map_err(|_| Error::Timeout { pid })?
    }

    /// Bounded reads given up so far (see [`ProcFs::bounded`]).
    pub fn timeouts(&self) -> u64 {
        self.deadline.timeouts()
    }

    fn pid_dir(&self, pid: Pid) -> PathBuf {
        self.root.join(pid.to_string())
    }

    fn task_file(&self, pid: Pid, tid: Pid, name: &str) -> PathBuf {
        let task = self.pid_dir(pid).join("task").join(tid.to_string());
        task.join(name)
    }

    fn read(&self, pid: Pid, path: &Path) -> Result<Vec<u8>, Error> {
        fs::read(path).map_err(|e| gone_or_io(pid, path, e))
    }

    fn read_text(&self, pid: Pid, path: &Path) -> Result<String, Error> {
        Ok(String::from_utf8_lossy(&self.read(pid, path)?).into_owned())
    }

    fn parse_file<T>(
        &self,
        pid: Pid,
        path: PathBuf,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<T, Error> {
        let text = self.read_text(pid, &path)?;
        parse(&text).map_err(|what| Error::Parse { path, what })
    }

    /// An fd can be closed while its process lives on; only a missing process is "gone".
    fn fd_error(&self, pid: Pid, path: &Path, source: io::Error) -> Error {
        if source.kind() == io::ErrorKind::NotFound && self.pid_dir(pid).exists() {
            Error::Io {
                path: path.to_owned(),
                source,
            }
        } else {
            gone_or_io(pid, path, source)
        }
    }
}

/// The open mode of the fd behind `link` (`/proc/PID/fd/N`): `/proc` gives an fd link
/// `S_IRUSR` if it is open for reading and `S_IWUSR` if for writing, so neither the file
/// nor its `fdinfo` is touched.
fn link_access(link: &Path) -> io::Result<Access> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::symlink_metadata(link)?.permissions().mode();
    Ok(match (mode & 0o400 != 0, mode & 0o200 != 0) {
        (true, true) => Access::ReadWrite,
        (false, true) => Access::Write,
        _ => Access::Read,
    })
}

fn gone_or_io(pid: Pid, path: &Path, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(ESRCH) {
        Error::Gone { pid }
    } else {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}

fn read_at_most(pid: Pid, path: &Path, limit: usize) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let file = fs::File::open(path).map_err(|e| gone_or_io(pid, path, e))?;
    let mut bytes = Vec::new();
    file.take(limit as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| gone_or_io(pid, path, e))?;
    Ok(bytes)
}

fn numeric_entries<T: std::str::FromStr + Ord>(dir: &Path) -> io::Result<Vec<T>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        if let Some(id) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::thread::sleep;
    use std::time::{Duration, Instant};

    /// A pid of the fixture: 100 (threads 100 to 102) and the zombie 200.
    fn id(raw: i32) -> Pid {
        Pid::from_raw(raw)
    }

    fn fixture() -> ProcFs {
        ProcFs::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/proc"))
    }

    #[test]
    fn lists_only_numeric_entries_sorted() {
        let proc = fixture();
        assert_eq!(proc.pids().unwrap(), [100, 200]);
        assert_eq!(proc.tids(id(100)).unwrap(), [100, 101, 102]);
        assert!(ProcFs::new("/nonexistent").pids().is_err());
    }

    #[test]
    fn stat_takes_comm_up_to_the_last_paren() {
        let proc = fixture();
        let stat = proc.stat(id(100), id(100)).unwrap();
        assert_eq!((stat.comm.as_str(), stat.state), ("x) y (z", 'R'));
        assert_eq!((stat.ppid.as_raw(), stat.pgrp.as_raw()), (1, 100));
        assert_eq!((stat.start_ticks, stat.num_threads), (17236, 3));
        assert_eq!(proc.stat(id(100), id(101)).unwrap().comm, "worker (1)");
        assert_eq!(proc.stat(id(200), id(200)).unwrap().state, 'Z');
    }

    #[test]
    fn syscall_distinguishes_running_user_and_blocked() {
        let proc = fixture();
        assert_eq!(proc.syscall(id(100), id(100)).unwrap(), Syscall::Running);
        assert_eq!(proc.syscall(id(100), id(101)).unwrap(), Syscall::User);
        assert_eq!(proc.syscall(id(200), id(200)).unwrap(), Syscall::User);
        let args = [0, 0, 0x7fff1a0497e0, 0x7fff1a049820, 0, u64::MAX];
        assert_eq!(
            proc.syscall(id(100), id(102)).unwrap(),
            Syscall::In {
                nr: 230,
                args,
                sp: 0x7fff1a0497c8,
                pc: 0x7fbab0c98503
            }
        );
    }

    #[test]
    fn per_task_scheduler_details() {
        let proc = fixture();
        assert_eq!(proc.wchan(id(100), id(100)).unwrap(), "");
        assert_eq!(proc.wchan(id(100), id(102)).unwrap(), "hrtimer_nanosleep");
        assert_eq!(
            proc.sched_exec_start_ns(id(100), id(100)).unwrap(),
            Some(121_289_597_187)
        );
        assert_eq!(
            proc.sched_exec_start_ns(id(100), id(102)).unwrap(),
            Some(7_000_042)
        );
        assert_eq!(proc.sched_exec_start_ns(id(100), id(101)).unwrap(), None);
        assert!(proc
            .sched_exec_start_ns(id(100), id(103))
            .unwrap_err()
            .is_gone());
    }

    #[test]
    fn cmdline_keeps_empty_args() {
        let proc = fixture();
        let cmdline = proc.cmdline(id(100)).unwrap();
        assert_eq!(cmdline.args, ["app", "", "--flag=", "value with space"]);
        assert!(!cmdline.truncated);
        assert!(proc.cmdline(id(200)).unwrap().args.is_empty());
    }

    #[test]
    fn fds_decode_targets_without_fdinfo_and_closed_ones_are_errors() {
        let proc = fixture();
        let other = |s: &str| FdTarget::Other(s.into());
        let expected = [
            (0, other("/dev/null")),
            (1, FdTarget::Pipe(4242)),
            (3, FdTarget::Pipe(4242)),
            (4, other("socket:[9001]")),
            (5, FdTarget::Pipe(777)),
            (10, other("/var/log/app.log")),
        ];
        for (fd, target) in expected {
            assert_eq!(proc.fd(id(100), fd).unwrap().target, target, "fd {fd}");
        }
        // No fd 6, as if closed between readdir and reading it.
        let closed = proc.fd(id(100), 6).unwrap_err();
        assert!(
            matches!(&closed, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        assert!(proc.fd(id(300), 0).unwrap_err().is_gone());
    }

    #[test]
    fn fd_access_is_the_open_mode_of_real_fds() {
        use std::os::fd::AsRawFd;
        let proc = ProcFs::default();
        let pid = Pid::try_from(std::process::id()).unwrap();
        let read_only = fs::File::open("/dev/null").unwrap();
        let write_only = fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        let read_write = tempfile::tempfile().unwrap();
        let access = |fd: i32| proc.fd(pid, fd).unwrap().access;
        assert_eq!(access(read_only.as_raw_fd()), Access::Read);
        assert_eq!(access(write_only.as_raw_fd()), Access::Write);
        assert_eq!(access(read_write.as_raw_fd()), Access::ReadWrite);
        let (read, write) = nix_pipe();
        let ends = (proc.fd(pid, read), proc.fd(pid, write));
        // SAFETY: both fds were opened above and are not used again.
        unsafe {
            libc::close(read);
            libc::close(write);
        }
        let (read, write) = (ends.0.unwrap(), ends.1.unwrap());
        assert_eq!(read.access, Access::Read);
        assert_eq!(write.access, Access::Write);
        assert!(matches!(read.target, FdTarget::Pipe(_)));
        assert_eq!(read.target, write.target);
    }

    #[test]
    fn epoll_targets_are_read_up_to_a_limit() {
        let proc = ProcFs::default();
        let pid = Pid::try_from(std::process::id()).unwrap();
        let (read, write) = nix_pipe();
        // SAFETY: plain syscalls on fds this test owns; each is closed below.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epfd >= 0);
        let mut watched = Vec::new();
        for _ in 0..70 {
            // SAFETY: as above.
            let fd = unsafe { libc::dup(read) };
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 0,
            };
            // SAFETY: as above; `event` outlives the call.
            let added = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut event) };
            watched.push(fd);
            if fd < 0 || added != 0 {
                break;
            }
        }
        let all = proc.epoll_targets(pid, epfd, 100);
        let one_too_many = proc.epoll_targets(pid, epfd, 69);
        let cut = proc.epoll_targets(pid, epfd, 2);
        for fd in watched.iter().chain([&read, &write, &epfd]) {
            // SAFETY: as above.
            unsafe { libc::close(*fd) };
        }
        let all = all.unwrap().expect("70 targets are at most 100");
        assert_eq!(all.len(), 70);
        for (fd, events) in all {
            assert!(watched.contains(&fd) && events & libc::EPOLLIN as u32 != 0);
        }
        assert_eq!(one_too_many.unwrap(), None);
        assert_eq!(cut.unwrap(), None);
    }

    #[test]
    fn cgroup_files_are_read_in_whole_lines_up_to_the_limit() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        fs::create_dir(root.path().join("7"))?;
        let line = format!("0::/{}\n", "deep/".repeat(100));
        let lines = 2 * CGROUP_MAX_BYTES / line.len();
        fs::write(root.path().join("7/cgroup"), line.repeat(lines))?;
        let text = ProcFs::new(root.path())
            .cgroup(id(7))
            .map_err(io::Error::other)?;
        assert!(text.len() <= CGROUP_MAX_BYTES && !text.is_empty());
        assert!(text.lines().all(|l| format!("{l}\n") == line));
        let own = ProcFs::default().cgroup(Pid::try_from(std::process::id()).unwrap());
        assert!(own.map_err(io::Error::other)?.contains("::"));
        Ok(())
    }

    #[test]
    fn long_cmdlines_are_cut() {
        let long = "x".repeat(2 * CMDLINE_MAX_BYTES);
        // `; :` keeps sh from exec'ing sleep, which would replace the command line.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 100; :", "name", &long])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = Pid::try_from(child.id()).unwrap();
        let proc = ProcFs::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        let cmdline = loop {
            let cmdline = proc.cmdline(pid);
            let exec_done = cmdline
                .as_ref()
                .is_ok_and(|c| c.args.first().is_some_and(|a| a == "sh"));
            if exec_done || Instant::now() > deadline {
                break cmdline;
            }
            sleep(Duration::from_millis(10));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        let cmdline = cmdline.unwrap();
        assert!(cmdline.truncated);
        assert_eq!(cmdline.args[..3], ["sh", "-c", "sleep 100; :"]);
        let kept: usize = cmdline.args.iter().map(|a| a.len() + 1).sum();
        assert!(kept <= CMDLINE_MAX_BYTES + 1, "{kept}");
    }

    #[test]
    fn mappings_name_files_by_device_and_inode() {
        let maps = fixture().mappings(id(100)).unwrap();
        assert_eq!(maps.len(), 11);
        let files: Vec<(u64, &str)> = maps
            .iter()
            .filter_map(|m| Some((m.inode, m.path.as_deref()?.to_str()?)))
            .collect();
        let expected = [
            (247030, "/usr/bin/app"),
            (247030, "/usr/bin/app"),
            (326279, "/usr/lib/libc.so.6"),
            (326279, "/usr/lib/libc.so.6"),
            (1234, "/memfd:shm"),
            (555, "/opt/my app/plugin.so"),
            (247030, "/usr/bin/app"),
        ];
        assert_eq!(files, expected);
        assert_eq!(maps[0].dev, (0xfe, 0));
    }

    #[test]
    fn missing_process_is_gone_everywhere() {
        let proc = fixture();
        let (gone, live) = (id(300), id(100));
        assert!(proc.tids(gone).unwrap_err().is_gone());
        assert!(proc.stat(gone, gone).unwrap_err().is_gone());
        assert!(proc.stat(live, id(103)).unwrap_err().is_gone());
        assert!(proc.syscall(gone, gone).unwrap_err().is_gone());
        assert!(proc.wchan(gone, gone).unwrap_err().is_gone());
        assert!(proc.cmdline(gone).unwrap_err().is_gone());
        assert!(proc.pipe_fds(gone).unwrap_err().is_gone());
        assert!(proc.mappings(gone).unwrap_err().is_gone());
    }

    fn nix_pipe() -> (i32, i32) {
        let mut fds = [0; 2];
        // SAFETY: a valid two-int array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    }

    #[test]
    fn reads_own_process() {
        let proc = ProcFs::default();
        let pid = Pid::try_from(std::process::id()).unwrap();
        assert!(proc.pids().unwrap().contains(&pid));
        assert!(proc.tids(pid).unwrap().contains(&pid));
        let stat = proc.stat(pid, pid).unwrap();
        assert!(!stat.comm.is_empty());
        assert!(stat.num_threads >= 1 && stat.ppid.as_raw() > 0);
        assert!(!proc.cmdline(pid).unwrap().args.is_empty());
        let (read, write) = nix_pipe();
        let pipes = proc.pipe_fds(pid).unwrap();
        let inode = |fd: i32| match proc.fd(pid, fd).unwrap().target {
            FdTarget::Pipe(inode) => inode,
            other => panic!("fd {fd} is {other:?}"),
        };
        let end = |fd, access| PipeFd {
            fd,
            pipe: inode(fd),
            access,
        };
        assert!(pipes.contains(&end(read, Access::Read)), "{pipes:?}");
        assert!(pipes.contains(&end(write, Access::Write)), "{pipes:?}");
        // SAFETY: both fds were opened above and are not used again.
        unsafe {
            libc::close(read);
            libc::close(write);
        }
        assert!(proc.mappings(pid).unwrap().iter().any(|m| m.path.is_some()));
    }

    #[cfg(target_arch = "x86_64")]
    const SLEEP_SYSCALLS: [i64; 2] = [230, 35];
    #[cfg(target_arch = "aarch64")]
    const SLEEP_SYSCALLS: [i64; 2] = [115, 101];

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn sleeping_child_is_in_syscall_then_gone() {
        let proc = ProcFs::default();
        let mut child = Command::new("sleep")
            .arg("100")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = Pid::try_from(child.id()).unwrap();
        // Right after spawn the child may still be in execve or the dynamic
        // loader. Nothing below may panic before the kill, or `sleep` outlives us.
        let in_sleep =
            |s: &Syscall| matches!(s, Syscall::In { nr, .. } if SLEEP_SYSCALLS.contains(nr));
        let deadline = Instant::now() + Duration::from_secs(10);
        let syscall = loop {
            let syscall = proc.syscall(pid, pid);
            if syscall.as_ref().map_or(true, in_sleep) || Instant::now() > deadline {
                break syscall;
            }
            sleep(Duration::from_millis(10));
        };
        let cmdline = proc.cmdline(pid);
        let wchan = proc.wchan(pid, pid);
        child.kill().unwrap();
        child.wait().unwrap();
        let syscall = syscall.unwrap();
        assert!(in_sleep(&syscall), "{syscall:?}");
        assert_eq!(cmdline.unwrap().args, ["sleep", "100"]);
        assert!(!wchan.unwrap().is_empty());
        assert!(proc.stat(pid, pid).unwrap_err().is_gone());
        assert!(proc.pipe_fds(pid).unwrap_err().is_gone());
        assert!(proc.sched_exec_start_ns(pid, pid).unwrap_err().is_gone());
    }
}
