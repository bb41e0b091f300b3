//! Decoding a syscall and its arguments into a [`Wait`].
use exitwatch_common::{futex_op, nr};

use crate::{
    graph::{ChildTarget, Wait},
    pid::Pid,
    procfs::{FdTarget, ProcFs},
};

/// Waits that are not tracked by the probes; read from `/proc` for processes in a scan.
mod untracked {
    pub const POLL: u32 = 7;
    pub const SELECT: u32 = 23;
    pub const EPOLL_WAIT: u32 = 232;
    pub const PSELECT6: u32 = 270;
    pub const PPOLL: u32 = 271;
    pub const EPOLL_PWAIT: u32 = 281;
    pub const EPOLL_PWAIT2: u32 = 441;
}

/// Input and output bits; poll(2) and epoll(7) share their values. Error and hang-up bits
/// (which epoll always adds) do not matter.
const INPUT_EVENTS: u32 = 0x1 | 0x2 | 0x40 | 0x80;
const OUTPUT_EVENTS: u32 = 0x4 | 0x100 | 0x200;
/// Bigger poll sets are servers' business, not a parent waiting on a child's output.
const MAX_POLL_FDS: usize = 64;
/// `FD_SETSIZE`: glibc's `fd_set` holds this many bits, so no honest `select` asks for more.
const MAX_SELECT_FDS: u64 = 1024;

const P_PID: u64 = 1;
const P_PGID: u64 = 2;

/// `args` are the syscall's arguments as `/proc/PID/task/TID/syscall` shows them; `pgrp`
/// is the caller's process group.
pub fn decode(procfs: &ProcFs, pid: Pid, pgrp: Pid, syscall: u32, args: [u64; 6]) -> Option<Wait> {
    let wait = match syscall {
        nr::READ | nr::READV | nr::WRITE | nr::WRITEV => {
            let fd = args[0] as i32;
            let writing = matches!(syscall, nr::WRITE | nr::WRITEV);
            match procfs.fd(pid, fd).ok()?.target {
                FdTarget::Pipe(pipe) if writing => Wait::PipeWrite { fd, pipe },
                FdTarget::Pipe(pipe) => Wait::PipeRead { fd, pipe },
                FdTarget::Other(_) => Wait::Other {
                    syscall: syscall_name(syscall).to_string(),
                },
            }
        }
        nr::WAIT4 => Wait::Child {
            // The argument is a `pid_t`: the register's low 32 bits.
            target: match args[0] as i32 {
                -1 => ChildTarget::AnyChild,
                0 => ChildTarget::Group(pgrp),
                id if id < 0 => ChildTarget::Group(Pid::from_raw(-id)),
                id => ChildTarget::Pid(Pid::from_raw(id)),
            },
        },
        nr::WAITID => Wait::Child {
            target: match args[0] {
                P_PID => ChildTarget::Pid(Pid::from_raw(args[1] as i32)),
                P_PGID if args[1] == 0 => ChildTarget::Group(pgrp),
                P_PGID => ChildTarget::Group(Pid::from_raw(args[1] as i32)),
                // P_ALL, and P_PIDFD, whose target would need the pidfd's fdinfo.
                _ => ChildTarget::AnyChild,
            },
        },
        nr::FUTEX if futex_op::is_wait(args[1]) => Wait::Futex {
            timed: args[3] != 0,
        },
        nr::FUTEX_WAITV => Wait::Futex {
            timed: args[3] != 0,
        },
        // futex_wait(2) passes its timeout in the fifth argument (the probes record four).
        nr::FUTEX_WAIT => Wait::Futex {
            timed: args[4] != 0,
        },
        _ => return None,
    };
    Some(wait)
}

/// A `poll`/`epoll_wait` with no timeout whose every watched fd is the read end of a
/// pipe, waiting for input: the other way a parent waits on a child's output. `None` for
/// anything else, including timeouts (they wake by themselves).
pub fn decode_poll(procfs: &ProcFs, pid: Pid, syscall: u32, args: [u64; 6]) -> Option<Wait> {
    let watched: Vec<(i32, u32)> = match syscall {
        untracked::POLL | untracked::PPOLL => {
            let forever = if syscall == untracked::POLL {
                args[2] as i32 == -1
            } else {
                args[2] == 0
            };
            let count = usize::try_from(args[1]).ok()?;
            if !forever || count == 0 || count > MAX_POLL_FDS {
                return None;
            }
            // struct pollfd { int fd; short events; short revents; }
            let raw = procfs.memory(pid, args[0], count * 8).ok()?;
            raw.chunks_exact(8)
                .map(|p| {
                    let fd = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
                    (fd, u32::from(u16::from_ne_bytes([p[4], p[5]])))
                })
                .filter(|(fd, _)| *fd >= 0)
                .collect()
        }
        untracked::EPOLL_WAIT | untracked::EPOLL_PWAIT | untracked::EPOLL_PWAIT2 => {
            let forever = if syscall == untracked::EPOLL_PWAIT2 {
                args[3] == 0
            } else {
                args[3] as i32 == -1
            };
            if !forever {
                return None;
            }
            procfs
                .epoll_targets(pid, args[0] as i32, MAX_POLL_FDS)
                .ok()??
        }
        // select(nfds, readfds, writefds, exceptfds, timeout); pselect6 adds a signal mask.
        untracked::SELECT | untracked::PSELECT6 => {
            if args[4] != 0 {
                return None;
            }
            let set = |addr| fd_set(procfs, pid, args[0], addr);
            // Callers (CPython among them) pass empty sets rather than NULL.
            if [args[2], args[3]]
                .into_iter()
                .any(|addr| set(addr).is_none_or(|s| !s.is_empty()))
            {
                return None;
            }
            set(args[1])?
                .into_iter()
                .map(|fd| (fd, INPUT_EVENTS))
                .collect()
        }
        _ => return None,
    };
    if watched.is_empty() || watched.len() > MAX_POLL_FDS {
        return None;
    }
    let mut pipes = Vec::new();
    for (fd, events) in watched {
        if events & OUTPUT_EVENTS != 0 || events & INPUT_EVENTS == 0 {
            return None;
        }
        match procfs.fd(pid, fd).ok()?.target {
            FdTarget::Pipe(pipe) => pipes.push(pipe),
            FdTarget::Other(_) => return None,
        }
    }
    Some(Wait::PollRead { pipes })
}

/// The fds in a `select` set of `nfds` bits at `addr` (none for a NULL set); `None` when
/// it cannot be read or is bigger than a pipe reader's.
fn fd_set(procfs: &ProcFs, pid: Pid, nfds: u64, addr: u64) -> Option<Vec<i32>> {
    if addr == 0 {
        return Some(Vec::new());
    }
    if nfds == 0 || nfds > MAX_SELECT_FDS {
        return None;
    }
    // The kernel reads whole longs of the set: nfds bits rounded up to 8 bytes.
    let bytes = nfds.div_ceil(64) as usize * 8;
    let set = procfs.memory(pid, addr, bytes).ok()?;
    let fds: Vec<i32> = (0..nfds as usize)
        .filter(|fd| set[fd / 8] & (1 << (fd % 8)) != 0)
        .map(|fd| fd as i32)
        .take(MAX_POLL_FDS + 1)
        .collect();
    (fds.len() <= MAX_POLL_FDS).then_some(fds)
}

pub fn syscall_name(syscall: u32) -> &'static str {
    match syscall {
        nr::READ => "read",
        nr::WRITE => "write",
        nr::READV => "readv",
        nr::WRITEV => "writev",
        nr::WAIT4 => "wait4",
        nr::WAITID => "waitid",
        nr::FUTEX => "futex",
        nr::FUTEX_WAITV => "futex_waitv",
        nr::FUTEX_WAIT => "futex_wait",
        _ => "syscall",
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, FileExt};

    use super::*;

    const PID: Pid = Pid::from_raw(300);
    const READ_PIPE: u64 = 0x100;
    const EMPTY: u64 = 0x200;
    const PIPE_AND_FILE: u64 = 0x300;

    /// A process whose fd 5 is a pipe's read end and fd 6 a file, with three `fd_set`s
    /// in its memory: {5}, {} and {5, 6}.
    fn selecting_process() -> (tempfile::TempDir, ProcFs) {
        let root = tempfile::tempdir().expect("a temporary /proc");
        let dir = root.path().join(PID.to_string());
        for sub in ["fd", "fdinfo"] {
            std::fs::create_dir_all(dir.join(sub)).expect("creating the fixture");
        }
        symlink("pipe:[42]", dir.join("fd/5")).expect("fd 5");
        symlink("/var/log/x", dir.join("fd/6")).expect("fd 6");
        for fd in ["5", "6"] {
            std::fs::write(dir.join("fdinfo").join(fd), "pos:\t0\nflags:\t00\n").expect("fdinfo");
        }
        let mem = std::fs::File::create(dir.join("mem")).expect("mem");
        mem.write_all_at(&[0; 0x400], 0).expect("mem");
        mem.write_all_at(&[0x20], READ_PIPE).expect("mem");
        mem.write_all_at(&[0x60], PIPE_AND_FILE).expect("mem");
        let procfs = ProcFs::new(root.path());
        (root, procfs)
    }

    #[test]
    fn select_without_timeout_on_pipes_only_is_a_poll_read() {
        let (_root, procfs) = selecting_process();
        let reading = Some(Wait::PollRead { pipes: vec![42] });
        for nr in [untracked::SELECT, untracked::PSELECT6] {
            let select = |args| decode_poll(&procfs, PID, nr, args);
            assert_eq!(select([6, READ_PIPE, 0, 0, 0, 0]), reading);
            assert_eq!(select([6, READ_PIPE, EMPTY, EMPTY, 0, 0]), reading);
            // A timeout, a write or exception set, a file, an oversized or empty set.
            assert_eq!(select([6, READ_PIPE, 0, 0, 0x380, 0]), None);
            assert_eq!(select([6, READ_PIPE, READ_PIPE, 0, 0, 0]), None);
            assert_eq!(select([6, READ_PIPE, 0, READ_PIPE, 0, 0]), None);
            assert_eq!(select([7, PIPE_AND_FILE, 0, 0, 0, 0]), None);
            assert_eq!(select([2048, READ_PIPE, 0, 0, 0, 0]), None);
            assert_eq!(select([6, EMPTY, 0, 0, 0, 0]), None);
            assert_eq!(select([0, 0, 0, 0, 0, 0]), None);
        }
    }

    #[test]
    fn futex_wait_is_timed_by_its_fifth_argument() {
        let (_root, procfs) = selecting_process();
        let futex_wait = |timeout| {
            decode(
                &procfs,
                PID,
                PID,
                nr::FUTEX_WAIT,
                [1, 0, 0, 0x82, timeout, 1],
            )
        };
        assert_eq!(futex_wait(0), Some(Wait::Futex { timed: false }));
        assert_eq!(futex_wait(0x7ffd0000), Some(Wait::Futex { timed: true }));
        let waitv = |timeout| decode(&procfs, PID, PID, nr::FUTEX_WAITV, [1, 1, 0, timeout, 1, 0]);
        assert_eq!(waitv(0), Some(Wait::Futex { timed: false }));
        assert_eq!(waitv(0x7ffd0000), Some(Wait::Futex { timed: true }));
    }
}
