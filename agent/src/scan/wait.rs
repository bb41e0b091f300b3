//! Decoding a syscall and its arguments into a [`Wait`].
use exitwatch_common::{futex_op, nr};

use crate::{
    graph::{ChildTarget, Wait},
    procfs::{FdTarget, ProcFs},
};

const P_PID: u64 = 1;
const P_PGID: u64 = 2;

/// `args` are the first four syscall arguments; `pgrp` is the caller's process group.
pub fn decode(procfs: &ProcFs, pid: i32, pgrp: i32, syscall: u32, args: [u64; 4]) -> Option<Wait> {
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
            target: match args[0] as i32 {
                -1 => ChildTarget::AnyChild,
                0 => ChildTarget::Group(pgrp),
                id if id < 0 => ChildTarget::Group(-id),
                id => ChildTarget::Pid(id),
            },
        },
        nr::WAITID => Wait::Child {
            target: match args[0] {
                P_PID => ChildTarget::Pid(args[1] as i32),
                P_PGID if args[1] == 0 => ChildTarget::Group(pgrp),
                P_PGID => ChildTarget::Group(args[1] as i32),
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
        // futex_wait(2) passes its timeout in the fifth argument, which is not recorded.
        nr::FUTEX_WAIT => Wait::Futex { timed: false },
        _ => return None,
    };
    Some(wait)
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
