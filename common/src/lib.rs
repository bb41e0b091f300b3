//! What the kernel programs (`ebpf/`), the agent (`agent/`) and the bench (`xtask/`)
//! share: names, map layouts, and how a kernel's tracepoint records are read.
//!
//! The structs here cross the kernel/user boundary byte for byte, so every one is
//! `#[repr(C)]`, padded explicitly, and free of pointers.
#![no_std]

/// Names of the maps and programs in the eBPF object, shared so a rename breaks the build
/// instead of the agent's start-up.
pub mod names {
    pub const MAP_BLOCKED: &str = "BLOCKED";
    pub const MAP_PROCS: &str = "PROCS";
    pub const MAP_EVENTS: &str = "EVENTS";
    pub const MAP_COUNTERS: &str = "COUNTERS";
    pub const MAP_WAIT_HISTOGRAM: &str = "WAIT_HISTOGRAM";
    pub const MAP_CHANGED: &str = "CHANGED";

    pub const PROG_SCHED_SWITCH: &str = "sched_switch";
    pub const PROG_TASK_NEWTASK: &str = "task_newtask";
    pub const PROG_PROCESS_EXEC: &str = "sched_process_exec";
    pub const PROG_PROCESS_EXIT: &str = "sched_process_exit";
    pub const PROG_SIGNAL_DELIVER: &str = "signal_deliver";
    pub const PROG_PY_FINALIZE: &str = "py_finalize";
    /// An empty `sched_switch` program the agent never loads: the floor that
    /// `cargo xtask bench` measures the real one against.
    pub const PROG_EMPTY_SCHED_SWITCH: &str = "empty_sched_switch";

    pub const PROGRAMS: [&str; 6] = [
        PROG_SCHED_SWITCH,
        PROG_TASK_NEWTASK,
        PROG_PROCESS_EXEC,
        PROG_PROCESS_EXIT,
        PROG_SIGNAL_DELIVER,
        PROG_PY_FINALIZE,
    ];

    /// Globals the agent overrides at load time with field offsets read from tracefs, so
    /// the programs do not depend on one kernel's tracepoint record layout.
    pub const GLOBAL_NEWTASK_PID_OFFSET: &str = "NEWTASK_PID_OFFSET";
    pub const GLOBAL_NEWTASK_FLAGS_OFFSET: &str = "NEWTASK_FLAGS_OFFSET";
    pub const GLOBAL_SIGNAL_SIG_OFFSET: &str = "SIGNAL_SIG_OFFSET";
    /// The globals above and where each comes from: (global, category, tracepoint, field).
    /// Every field is required.
    pub const RECORD_OFFSETS: [(&str, &str, &str, &str); 3] = [
        (GLOBAL_NEWTASK_PID_OFFSET, "task", "task_newtask", "pid"),
        (
            GLOBAL_NEWTASK_FLAGS_OFFSET,
            "task",
            "task_newtask",
            "clone_flags",
        ),
        (GLOBAL_SIGNAL_SIG_OFFSET, "signal", "signal_deliver", "sig"),
    ];
    /// Non-zero when this kernel's `sched_process_exit` passes `group_dead`: when its
    /// format file has the field [`EXIT_GROUP_DEAD_FIELD`].
    pub const GLOBAL_EXIT_HAS_GROUP_DEAD: &str = "EXIT_HAS_GROUP_DEAD";
    /// (category, tracepoint, field).
    pub const EXIT_GROUP_DEAD_FIELD: (&str, &str, &str) =
        ("sched", "sched_process_exit", "group_dead");
    /// Non-zero turns on the wake-up side of `sched_switch` (`--wait-histogram`).
    pub const GLOBAL_WAIT_HISTOGRAM_ON: &str = "WAIT_HISTOGRAM_ON";
}

/// Capacities of the maps; the agent reports how full they are.
pub const BLOCKED_CAPACITY: u32 = 65_536;
pub const PROCS_CAPACITY: u32 = 16_384;
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// The `CHANGED` map: u64 words holding one byte per thread id (8 ids a word), after a
/// summary of one byte per [`changed::CHUNK`] ids, so that the agent reads only the chunks
/// with a change. Bytes, not bits: a byte store needs no atomic read-modify-write, which
/// the eBPF target's Rust does not offer.
pub mod changed {
    /// Thread ids per summary byte.
    pub const CHUNK: u32 = 4096;
    /// The largest `pid_max` (`PID_MAX_LIMIT` on 64-bit).
    pub const MAX_IDS: u32 = 1 << 22;
    /// Words of the summary, sized for `MAX_IDS` whatever the map's size.
    pub const SUMMARY_WORDS: u32 = MAX_IDS / CHUNK / 8;

    /// Words of the map for thread ids below `ids`; the object has room for `MAX_IDS`,
    /// the agent shrinks it at load time to the host's `pid_max`.
    pub const fn words(ids: u32) -> u32 {
        SUMMARY_WORDS + ids.div_ceil(8)
    }
}

/// x86_64 syscall numbers of the waits exitwatch tracks.
pub mod nr {
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const READV: u32 = 19;
    pub const WRITEV: u32 = 20;
    pub const WAIT4: u32 = 61;
    pub const FUTEX: u32 = 202;
    pub const WAITID: u32 = 247;
    pub const FUTEX_WAITV: u32 = 449;
    pub const FUTEX_WAIT: u32 = 455;
}

/// Whether a sleep in `syscall` is one exitwatch records (the kernel's cheap first test).
#[inline(always)]
pub const fn is_tracked_syscall(syscall: u32) -> bool {
    matches!(
        syscall,
        nr::READ
            | nr::WRITE
            | nr::READV
            | nr::WRITEV
            | nr::WAIT4
            | nr::WAITID
            | nr::FUTEX
            | nr::FUTEX_WAITV
            | nr::FUTEX_WAIT
    )
}

/// The second test, on the syscall's arguments (`rdi`, `rsi`, `rdx`, `r10`).
#[inline(always)]
pub const fn is_tracked_sleep(syscall: u32, args: &[u64; 4]) -> bool {
    match syscall {
        // Kernel threads have all-zero user registers, which reads as `read(0, NULL, 0)`;
        // a zero-length read never sleeps, so this drops them without touching the task.
        nr::READ | nr::READV => args[2] != 0,
        nr::FUTEX => futex_op::is_wait(args[1]),
        _ => is_tracked_syscall(syscall),
    }
}

/// Whether a sleep in `syscall` (the caller compared it) with `args` continues the wait
/// recorded with `recorded`: the same arguments, or a `futex` wait on the same word with
/// the same operation and timeout from the same stack depth (`sp() == recorded_sp`; the
/// stack pointer is asked for only then) whose expected value (`args[2]`) differs. That
/// value is a joined thread's id, or a counter, and changes each time a thread waits again
/// on the same word: a `pthread_join` loop, whose threads reuse one cached descriptor,
/// sleeps on one word in one wait, not in a new wait per thread. What shows progress is
/// that the thread sleeps again, not the value it expects. (`futex_wait(2)`, with its
/// value in `args[1]`, is not relaxed.)
#[inline(always)]
pub fn same_wait(
    syscall: u32,
    args: &[u64; 4],
    sp: impl FnOnce() -> u64,
    recorded: &[u64; 4],
    recorded_sp: u64,
) -> bool {
    // Differences folded into one word rather than `args == recorded`, which compiles
    // to a call of a byte-by-byte `memcmp` in BPF: 32 rounds of a loop on every repeated
    // sleep, the scheduler's hot path.
    let differs = |i: usize| args[i] ^ recorded[i];
    (differs(0) | differs(1) | differs(3)) == 0
        && (differs(2) == 0 || (syscall == nr::FUTEX && sp() == recorded_sp))
}

/// `futex(2)` operations that put the caller to sleep, after masking
/// `FUTEX_PRIVATE_FLAG` and `FUTEX_CLOCK_REALTIME`.
pub mod futex_op {
    pub const CMD_MASK: u64 = !(128 | 256);
    pub const WAIT: u64 = 0;
    pub const LOCK_PI: u64 = 6;
    pub const WAIT_BITSET: u64 = 9;
    pub const WAIT_REQUEUE_PI: u64 = 11;
    pub const LOCK_PI2: u64 = 13;

    pub const fn is_wait(op: u64) -> bool {
        matches!(
            op & CMD_MASK,
            WAIT | LOCK_PI | WAIT_BITSET | WAIT_REQUEUE_PI | LOCK_PI2
        )
    }
}

/// One thread's current (or latest) tracked sleep, keyed by tid in `BLOCKED`.
///
/// A thread that sleeps again in the same wait (see [`same_wait`]; its arguments are
/// those of the first sleep) keeps `first_ns` and bumps `sleeps`: a writer that a slow reader lets through bit by bit
/// shows a growing count, a deadlocked one does not.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockedWait {
    pub tgid: u32,
    pub syscall: u32,
    /// `rdi`, `rsi`, `rdx`, `r10` at syscall entry.
    pub args: [u64; 4],
    /// `bpf_ktime_get_ns()` of the first sleep in this wait.
    pub first_ns: u64,
    /// `bpf_ktime_get_ns()` of the latest sleep in this wait.
    pub last_ns: u64,
    pub sleeps: u64,
    /// User `rip`, `rsp` and `rbp` when the wait was published (not refreshed by later
    /// sleeps in it): where an unwinder starts. Waits the agent found in `/proc` at
    /// start-up have `rip` and `rsp` from there, and `rbp` 0 (not shown there).
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// Why a process is considered to be exiting (bit flags in [`ExitState::reasons`]).
pub mod exit_reason {
    pub const PY_FINALIZE: u32 = 1;
    /// Set by the agent, which finds `exit()` on the stack of a stuck thread.
    pub const LIBC_EXIT: u32 = 1 << 1;
    pub const MAIN_THREAD_EXIT: u32 = 1 << 2;
    pub const SIGNAL: u32 = 1 << 3;
    /// Set by the agent, which finds asyncio's default-executor shutdown
    /// (`BaseEventLoop._do_shutdown`) on the Python stack of a stuck thread: `asyncio.run()`
    /// tearing down, before the interpreter finalizes.
    pub const ASYNCIO_SHUTDOWN: u32 = 1 << 4;

    pub const ALL: [(u32, &str); 5] = [
        (PY_FINALIZE, "py_finalize"),
        (LIBC_EXIT, "libc_exit"),
        (MAIN_THREAD_EXIT, "main_thread_exit"),
        (SIGNAL, "signal"),
        (ASYNCIO_SHUTDOWN, "asyncio_shutdown"),
    ];

    /// The names of the reasons set in `bits`, in the order of [`ALL`].
    pub fn names(bits: u32) -> impl Iterator<Item = &'static str> {
        ALL.iter()
            .filter(move |(bit, _)| bits & bit != 0)
            .map(|(_, name)| *name)
    }
}

/// A process in its exit phase, keyed by tgid in `PROCS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitState {
    /// `bpf_ktime_get_ns()` when the first exit marker fired.
    pub since_ns: u64,
    /// Threads created (`CLONE_THREAD`) since then.
    pub thread_spawns: u64,
    pub last_spawn_ns: u64,
    /// Bit set of [`exit_reason`] values seen so far.
    pub reasons: u32,
    /// The thread that entered the exit phase first.
    pub exit_tid: u32,
    /// The last termination signal delivered, or 0.
    pub signal: u32,
    pub _pad: u32,
}

/// Lifecycle events streamed through the `EVENTS` ring buffer.
pub mod event_kind {
    /// A process replaced its image; `arg` is unused.
    pub const EXEC: u32 = 1;
    /// The last thread of a process exited.
    pub const EXIT: u32 = 2;
    /// A process entered its exit phase for a new reason; `arg` is the [`super::exit_reason`] bit.
    pub const EXIT_PHASE: u32 = 3;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub ts_ns: u64,
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub arg: u32,
    pub comm: [u8; 16],
}

/// Completed tracked waits, per class, in log2 buckets of microseconds (`WAIT_HISTOGRAM`,
/// a per-CPU array of `wait_histogram::CLASSES * wait_histogram::SLOTS` u64).
pub mod wait_histogram {
    use super::nr;

    pub const CLASSES: u32 = 4;
    pub const CLASS_NAMES: [&str; CLASSES as usize] = ["read", "write", "wait", "futex"];
    /// Bucket `b` counts waits shorter than `2^b` µs; the last one also takes longer waits.
    pub const BUCKETS: u32 = 32;
    /// Per class: the buckets, then the sum of the durations in ns.
    pub const SLOTS: u32 = BUCKETS + 1;
    pub const LEN: u32 = CLASSES * SLOTS;

    #[inline(always)]
    pub const fn class(syscall: u32) -> u32 {
        match syscall {
            nr::READ | nr::READV => 0,
            nr::WRITE | nr::WRITEV => 1,
            nr::WAIT4 | nr::WAITID => 2,
            _ => 3,
        }
    }

    #[inline(always)]
    pub const fn bucket(duration_ns: u64) -> u32 {
        let micros = duration_ns / 1000;
        let bucket = 64 - micros.leading_zeros();
        if bucket >= BUCKETS {
            BUCKETS - 1
        } else {
            bucket
        }
    }
}

/// Indices into the per-CPU `COUNTERS` array.
pub mod counter {
    pub const EVENTS_SENT: u32 = 0;
    pub const EVENTS_DROPPED: u32 = 1;
    pub const BLOCKED_FULL: u32 = 2;
    pub const PROCS_FULL: u32 = 3;
    /// Writes to `BLOCKED` by threads whose id lies beyond the `CHANGED` bitmap.
    pub const CHANGES_LOST: u32 = 4;
    pub const LEN: u32 = 5;
}

/// Classic tracepoints' record layouts, as tracefs prints them: the agent loads its
/// programs with this kernel's offsets, and so does `cargo xtask bench`.
pub mod tracefs_format {
    /// Where tracefs is mounted on most hosts, then where older ones have it.
    pub const MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

    /// The offset of `field` in a tracepoint's record, from the text of its `format` file;
    /// `None` when the record has no such field.
    pub fn field_offset(format: &str, field: &str) -> Option<u32> {
        format.lines().find_map(|line| {
            let mut parts = line.trim().split(';').map(str::trim);
            let declaration = parts.next()?.strip_prefix("field:")?;
            let declared = declaration.rsplit([' ', '*']).next()?;
            let declared = declared.split('[').next()?;
            if declared != field {
                return None;
            }
            parts.find_map(|part| part.strip_prefix("offset:")?.parse().ok())
        })
    }

    /// Why [`kernel_globals`] has no value for a global.
    #[derive(Debug)]
    pub enum GlobalsError<E> {
        /// Reading a format file failed.
        Read(E),
        /// The record of `category/tracepoint` has no `field`, which the programs need.
        MissingField {
            category: &'static str,
            tracepoint: &'static str,
            field: &'static str,
        },
    }

    /// The globals the programs take from this kernel's tracepoint records, as (global,
    /// value) to override at load time: the offsets of [`crate::names::RECORD_OFFSETS`],
    /// then whether `sched_process_exit` passes `group_dead`. `offset(category,
    /// tracepoint, field)` reads a field's offset from this kernel's format file.
    pub fn kernel_globals<E>(
        mut offset: impl FnMut(&'static str, &'static str, &'static str) -> Result<Option<u32>, E>,
    ) -> Result<[(&'static str, u32); 4], GlobalsError<E>> {
        use crate::names;
        let mut globals = [("", 0); 4];
        for (slot, (global, category, tracepoint, field)) in
            globals.iter_mut().zip(names::RECORD_OFFSETS)
        {
            let value = offset(category, tracepoint, field)
                .map_err(GlobalsError::Read)?
                .ok_or(GlobalsError::MissingField {
                    category,
                    tracepoint,
                    field,
                })?;
            *slot = (global, value);
        }
        let (category, tracepoint, field) = names::EXIT_GROUP_DEAD_FIELD;
        let has_group_dead = offset(category, tracepoint, field)
            .map_err(GlobalsError::Read)?
            .is_some();
        globals[names::RECORD_OFFSETS.len()] =
            (names::GLOBAL_EXIT_HAS_GROUP_DEAD, u32::from(has_group_dead));
        Ok(globals)
    }

    #[cfg(test)]
    mod tests {
        use super::field_offset;

        const EXIT: &str = "name: sched_process_exit\nID: 369\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
            \tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\
            \tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";

        #[test]
        fn kernel_globals_require_every_offset_but_not_group_dead() {
            use super::{kernel_globals, GlobalsError};
            use crate::names;
            let all = kernel_globals(|_, _, field| Ok::<_, ()>(Some(field.len() as u32)));
            let globals = all.expect("every field present");
            assert_eq!(globals[0], (names::GLOBAL_NEWTASK_PID_OFFSET, 3));
            assert_eq!(globals[3], (names::GLOBAL_EXIT_HAS_GROUP_DEAD, 1));
            let old_kernel =
                kernel_globals(|_, _, field| Ok::<_, ()>((field != "group_dead").then_some(8)));
            let globals = old_kernel.expect("group_dead is optional");
            assert_eq!(globals[3], (names::GLOBAL_EXIT_HAS_GROUP_DEAD, 0));
            let missing = kernel_globals(|_, _, field| Ok::<_, ()>((field != "sig").then_some(8)));
            assert!(matches!(
                missing,
                Err(GlobalsError::MissingField {
                    tracepoint: "signal_deliver",
                    field: "sig",
                    ..
                })
            ));
            let unreadable = kernel_globals(|_, _, _| Err::<Option<u32>, _>("no tracefs"));
            assert!(matches!(unreadable, Err(GlobalsError::Read("no tracefs"))));
        }

        #[test]
        fn finds_fields_by_name_not_prefix() {
            assert_eq!(field_offset(EXIT, "pid"), Some(24));
            assert_eq!(field_offset(EXIT, "comm"), Some(8));
            assert_eq!(field_offset(EXIT, "group_dead"), Some(32));
            assert_eq!(field_offset(EXIT, "group"), None);
            assert_eq!(field_offset(EXIT, "prio"), None);
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::BlockedWait {}
    unsafe impl aya::Pod for super::ExitState {}
    unsafe impl aya::Pod for super::Event {}
}

#[cfg(test)]
mod tests {
    use super::{
        nr, same_wait,
        wait_histogram::{bucket, BUCKETS},
    };

    #[test]
    fn a_futex_wait_is_its_word_op_timeout_and_depth_not_its_expected_value() {
        let futex = [0x7f00_1000, 128, 41, 0];
        let same =
            |args: [u64; 4], sp: u64| same_wait(nr::FUTEX, &args, || sp, &futex, 0x7ffe_1000);
        assert!(same([0x7f00_1000, 128, 42, 0], 0x7ffe_1000));
        assert!(!same([0x7f00_1000, 128, 42, 0], 0x7ffe_2000));
        assert!(!same([0x7f00_1008, 128, 41, 0], 0x7ffe_1000));
        assert!(!same([0x7f00_1000, 137, 41, 0], 0x7ffe_1000));
        assert!(!same([0x7f00_1000, 128, 42, 0x7ffe_0000], 0x7ffe_1000));
        // The same arguments are the same wait at any depth, as before the relaxation.
        assert!(same(futex, 0x7ffe_2000));
        let read = [3, 0x5000, 4096, 0];
        assert!(same_wait(nr::READ, &read, || 1, &read, 2));
        assert!(!same_wait(nr::READ, &[3, 0x5000, 4095, 0], || 2, &read, 2));
        assert!(!same_wait(nr::READ, &[4, 0x5000, 4096, 0], || 2, &read, 2));
        assert!(!same_wait(nr::READ, &[3, 0x5000, 4096, 1], || 2, &read, 2));
        // The stack pointer is read only when the word, op and timeout match.
        let unread = || -> u64 { panic!("the stack pointer was read") };
        assert!(same_wait(nr::FUTEX, &futex, unread, &futex, 0));
        assert!(!same_wait(
            nr::FUTEX,
            &[0x7f00_1008, 128, 42, 0],
            unread,
            &futex,
            0
        ));
    }

    #[test]
    fn buckets_are_log2_microseconds() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(999), 0);
        assert_eq!(bucket(1_000), 1);
        assert_eq!(bucket(1_999), 1);
        assert_eq!(bucket(2_000), 2);
        assert_eq!(bucket(1_000_000), 10);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }
}
