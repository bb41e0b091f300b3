//! Exit-phase uprobes. A uprobe attaches to a file (inode), so one attach covers every
//! process that maps that interpreter, whichever mount namespace it runs in.
//!
//! Any user can exec a file named like an interpreter, so a file gets a probe only if an
//! unprivileged user cannot have written it: owned by root, not writable by group or
//! others, not on FUSE (whose owner and contents are whatever its server says). The
//! directories above it do not matter: the probe goes on the inode that was opened and
//! checked (through `/proc/self/fd/N`), and a rename cannot change that inode's contents.
//! Files are reached through `/proc/PID/map_files`, never by the name `maps` prints, and
//! only their headers and symbol tables are read ([`crate::elf`]).
//!
//! All of this (opening, parsing, attaching, detaching) runs on the discovery thread,
//! which owns the programs; the maps that scans and scrapes read are elsewhere
//! ([`super::Probes`]), so nothing slow here holds them up.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{File, OpenOptions},
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::Path,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{Receiver, RecvTimeoutError},
        Arc,
    },
    time::{Duration, Instant},
};

use aya::{
    programs::{
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
        UProbe,
    },
    Ebpf,
};
use exitwatch_common::names;

use super::{program, schedule::Schedule, ProbeError};
use crate::{
    elf::{Elf, ElfError},
    pid::Pid,
    procfs::{fs_type, open_mapping, Error as ProcError, FileId, Mapping, ProcFs, Refusal},
};

/// The interpreter's shutdown entry point, where the exit phase begins.
const SYMBOL: &str = "Py_FinalizeEx";

/// Whether a file of this name may define [`SYMBOL`]; others are not even opened. The
/// name only saves work: whether a file is trusted comes from the opened file.
fn may_be_interpreter(name: &[u8]) -> bool {
    name.windows(6).any(|w| w == b"python")
}

/// Where interpreters usually live, for discovery before any process uses them. Targets
/// found here stay attached for the agent's lifetime.
const INSTALL_DIRS: [&str; 6] = [
    "/usr/bin",
    "/usr/local/bin",
    "/usr/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/local/lib",
    "/lib/x86_64-linux-gnu",
];

/// How often targets are checked for processes still using them.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How much earlier than due a look may be taken.
const LOOK_SLACK: Duration = Duration::from_millis(5);
/// Users tracked per target; a target with more is kept attached for good.
const MAX_USERS: usize = 4096;
/// Files known not to qualify, remembered so that every exec does not reopen them.
const MAX_REFUSED: usize = 4096;
/// Executables whose interpreter-like mappings are remembered.
const MAX_PROGRAMS: usize = 4096;
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Reasons of `exitwatch_uprobe_refusals_total`.
pub const REFUSAL_REASONS: [&str; 10] = [
    "untrusted_owner",
    "writable",
    "untrusted_fs",
    "too_big",
    "not_elf",
    "no_symbol",
    "limit",
    "timeout",
    "attach_failed",
    "unreadable",
];

/// What discovery reports, read by `/metrics` without waiting for discovery.
#[derive(Default)]
pub struct UprobeStats {
    targets: AtomicUsize,
    refusals: [AtomicU64; REFUSAL_REASONS.len()],
    dropped: AtomicU64,
}

impl UprobeStats {
    pub fn targets(&self) -> usize {
        self.targets.load(Ordering::Relaxed)
    }

    /// Refusals so far, in the order of [`REFUSAL_REASONS`].
    pub fn refusals(&self) -> [u64; REFUSAL_REASONS.len()] {
        std::array::from_fn(|i| self.refusals[i].load(Ordering::Relaxed))
    }

    /// Exec events not looked at because discovery was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn refuse(&self, reason: &'static str) {
        if let Some(index) = REFUSAL_REASONS.iter().position(|r| *r == reason) {
            self.refusals[index].fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Target {
    link: UProbeLinkId,
    name: String,
    /// Processes (pid, start time) that mapped it when looked at; `None` for targets
    /// that stay (install directories, or too many users to track).
    users: Option<BTreeSet<(Pid, u64)>>,
}

pub struct Uprobes {
    /// Owns every program and link: dropping it detaches them all.
    ebpf: Ebpf,
    procfs: ProcFs,
    limit: usize,
    targets: BTreeMap<FileId, Target>,
    refused: BTreeSet<FileId>,
    /// Interpreter-like files each executable mapped once its loader was done: the
    /// next exec of the same program records its users without reading its maps
    /// (exec-heavy hosts run the same few programs).
    programs: BTreeMap<FileId, Vec<FileId>>,
    stats: Arc<UprobeStats>,
}

impl Uprobes {
    pub fn load(mut ebpf: Ebpf) -> Result<Self, ProbeError> {
        let uprobe: &mut UProbe = program(&mut ebpf, names::PROG_PY_FINALIZE)?;
        uprobe
            .load()
            .map_err(|e| ProbeError::program(names::PROG_PY_FINALIZE, e))?;
        Ok(Self {
            ebpf,
            // Its own reader: a slow process here must not delay the scanner's reads.
            procfs: ProcFs::default(),
            limit: usize::MAX,
            targets: BTreeMap::new(),
            refused: BTreeSet::new(),
            programs: BTreeMap::new(),
            stats: Arc::default(),
        })
    }

    /// Kernel ids of the exitwatch programs, by name.
    pub fn program_ids(&self) -> Vec<(u32, &'static str)> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let name = names::PROGRAMS.iter().find(|known| **known == name)?;
                Some((program.info().ok()?.id(), *name))
            })
            .collect()
    }

    pub fn stats(&self) -> Arc<UprobeStats> {
        self.stats.clone()
    }

    /// At most `limit` files get the probe; more are refused (reason `limit`).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    pub fn attached(&self) -> usize {
        self.targets.len()
    }

    /// Attaches to interpreters in the install directories, so a short-lived program
    /// started later is covered before its first exec event.
    pub fn discover_installed(&mut self) {
        for dir in INSTALL_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path
                    .file_name()
                    .is_some_and(|n| may_be_interpreter(n.as_encoded_bytes()))
                {
                    self.consider_installed(&path);
                }
            }
        }
    }

    /// Looks at every running process, as exec events would have.
    pub fn discover_running(&mut self) {
        for pid in self.procfs.pids().unwrap_or_default() {
            self.discover(pid, true);
        }
    }

    /// Serves discovery requests (pids as they exec) until the sender goes away: each is
    /// looked at once soon and, if its program was new, again once its dynamic loader is
    /// surely done. Detaches targets that no process maps any more.
    pub fn run(mut self, execs: Receiver<Pid>) {
        let mut schedule = Schedule::default();
        let mut swept = Instant::now();
        loop {
            let sweep_at = swept + SWEEP_EVERY;
            let wake = schedule
                .next_due()
                .map_or(sweep_at, |due| due.min(sweep_at));
            match execs.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(pid) => {
                    if !schedule.exec(pid, Instant::now()) {
                        self.stats.drop_one();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Looks due a moment later are taken now: execs arrive in bursts (the ring is
            // drained on a timer), and this wakes the thread once per burst, not per exec.
            let now = Instant::now() + LOOK_SLACK;
            while let Some((pid, settled, exec_at)) = schedule.pop_due(now) {
                if self.discover(pid, settled) && !schedule.settle(pid, exec_at) {
                    self.stats.drop_one();
                }
            }
            if swept.elapsed() >= SWEEP_EVERY {
                self.sweep();
                swept = Instant::now();
            }
        }
    }

    /// Looks at the interpreter-like files `pid` maps: new trusted ones get the probe,
    /// attached ones record `pid` as a user. `settled`: its dynamic loader is done, so
    /// what it maps now can be remembered for its program. Returns whether `pid` wants
    /// a settled look later: its program was not known yet (a known program, or a
    /// process that is gone, needs none).
    pub fn discover(&mut self, pid: Pid, settled: bool) -> bool {
        // The executable first: most execs run a known program that maps no
        // interpreter, which then costs this one `statx` and nothing else.
        let program = exe_id(pid);
        let known = program.and_then(|p| self.programs.get(&p));
        if known.is_some_and(Vec::is_empty) {
            return false;
        }
        let Ok(start) = self.procfs.stat(pid, pid).map(|s| s.start_ticks) else {
            return false;
        };
        if let Some(files) = known {
            if files
                .iter()
                .all(|f| self.refused.contains(f) || self.targets.contains_key(f))
            {
                for file in files.clone() {
                    self.add_user(file, (pid, start));
                }
                return false;
            }
        }
        let maps = match self.procfs.mappings(pid) {
            Ok(maps) => maps,
            Err(ProcError::Timeout { .. }) => {
                self.stats.refuse("timeout");
                return !settled;
            }
            Err(_) => return false,
        };
        let mut looked_at = BTreeSet::new();
        for mapping in &maps {
            let Some(name) = mapping.path.as_deref() else {
                continue;
            };
            let key = mapping.file_id();
            if !may_be_interpreter(name.as_os_str().as_encoded_bytes())
                || !looked_at.insert(key)
                || self.refused.contains(&key)
            {
                continue;
            }
            if self.targets.contains_key(&key) {
                self.add_user(key, (pid, start));
                continue;
            }
            let name = format!("{} (via pid {pid})", name.display());
            self.consider_mapped(pid, mapping, key, name, (pid, start));
        }
        if let (Some(program), true) = (program, settled) {
            if self.programs.len() >= MAX_PROGRAMS {
                self.programs.clear();
            }
            self.programs
                .insert(program, looked_at.into_iter().collect());
        }
        !settled
    }

    fn add_user(&mut self, file: FileId, user: (Pid, u64)) {
        let procfs = &self.procfs;
        let Some(target) = self.targets.get_mut(&file) else {
            return;
        };
        if let Some(users) = &mut target.users {
            users.insert(user);
            if users.len() > MAX_USERS {
                // The sweep stops at the first live user; those behind it that exited are
                // only dropped here.
                users.retain(|&user| alive(procfs, user));
            }
            if users.len() > MAX_USERS {
                target.users = None;
            }
        }
    }

    fn consider_mapped(
        &mut self,
        pid: Pid,
        mapping: &Mapping,
        key: FileId,
        name: String,
        user: (Pid, u64),
    ) {
        if self.targets.len() >= self.limit {
            return self.stats.refuse("limit");
        }
        let mapping = mapping.clone();
        let checked = self.procfs.bounded(pid, move |root| {
            let (file, _) = open_mapping(root, pid, &mapping)?;
            Ok(inspect(file))
        });
        let inspected = match checked {
            Ok(inspected) => inspected,
            Err(ProcError::Timeout { .. }) => Err(Refused::Retry("timeout")),
            Err(ProcError::Refused { why, .. }) => Err(refused(why)),
            // Gone, or permission to map_files missing: nothing to remember.
            Err(error) => {
                log::debug!("cannot open {name}: {error}");
                return;
            }
        };
        let users = Some(BTreeSet::from([user]));
        self.settle(key, name, inspected, users);
    }

    fn consider_installed(&mut self, path: &Path) {
        // A fixed root-owned directory, not a name a process printed; symlinks are
        // followed (python3 -> python3.11) and the checks apply to the file reached.
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path);
        let Ok(file) = opened else {
            return;
        };
        let Ok(meta) = file.metadata() else {
            return;
        };
        let key = (
            (libc::major(meta.dev()), libc::minor(meta.dev())),
            meta.ino(),
        );
        if !meta.is_file() || self.targets.contains_key(&key) || self.refused.contains(&key) {
            return;
        }
        if self.targets.len() >= self.limit {
            return self.stats.refuse("limit");
        }
        let inspected = if meta.len() > crate::procfs::MAX_FILE_BYTES {
            Err(Refused::Never("too_big"))
        } else {
            inspect(file)
        };
        self.settle(key, path.display().to_string(), inspected, None);
    }

    fn settle(
        &mut self,
        key: FileId,
        name: String,
        inspected: Result<(File, u64), Refused>,
        users: Option<BTreeSet<(Pid, u64)>>,
    ) {
        let refusal = match inspected {
            Ok((file, offset)) => match self.attach(&file, offset) {
                Ok(link) => {
                    log::info!("attached {SYMBOL} probe to {}", printable(&name));
                    self.targets.insert(key, Target { link, name, users });
                    self.stats
                        .targets
                        .store(self.targets.len(), Ordering::Relaxed);
                    return;
                }
                Err(error) => {
                    // EACCES here is a missing CAP_SYS_ADMIN (kernels with the 2025
                    // uprobe fix): Python exits then lose their `py_finalize` marker.
                    log::warn!(
                        "cannot attach the {SYMBOL} probe to {}: {error}",
                        printable(&name)
                    );
                    Refused::Never("attach_failed")
                }
            },
            Err(refusal) => refusal,
        };
        let (reason, remember) = match refusal {
            Refused::Never(reason) => (reason, true),
            Refused::Retry(reason) => (reason, false),
        };
        log::debug!("no {SYMBOL} probe on {}: {reason}", printable(&name));
        self.stats.refuse(reason);
        if remember {
            if self.refused.len() >= MAX_REFUSED {
                self.refused.clear();
            }
            self.refused.insert(key);
        }
    }

    /// The kernel resolves `/proc/self/fd/N` to the very inode that was checked.
    fn attach(&mut self, file: &File, offset: u64) -> Result<UProbeLinkId, ProbeError> {
        let uprobe: &mut UProbe = program(&mut self.ebpf, names::PROG_PY_FINALIZE)?;
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        uprobe
            .attach(
                UProbeAttachLocation::AbsoluteOffset(offset),
                path,
                UProbeScope::AllProcesses,
            )
            .map_err(|e| ProbeError::program(names::PROG_PY_FINALIZE, e))
    }

    /// Detaches targets whose recorded users have all exited.
    fn sweep(&mut self) {
        let procfs = &self.procfs;
        let unused: Vec<FileId> = self
            .targets
            .iter_mut()
            .filter_map(|(key, target)| {
                let users = target.users.as_mut()?;
                drop_exited(users, |&user| alive(procfs, user)).then_some(*key)
            })
            .collect();
        for key in unused {
            let Some(target) = self.targets.remove(&key) else {
                continue;
            };
            let detached =
                program::<UProbe>(&mut self.ebpf, names::PROG_PY_FINALIZE).and_then(|uprobe| {
                    uprobe
                        .detach(target.link)
                        .map_err(|e| ProbeError::program(names::PROG_PY_FINALIZE, e))
                });
            match detached {
                Ok(()) => log::info!(
                    "detached {SYMBOL} probe from {}: no process maps it any more",
                    printable(&target.name)
                ),
                Err(error) => log::warn!("detaching from {}: {error}", printable(&target.name)),
            }
        }
        self.stats
            .targets
            .store(self.targets.len(), Ordering::Relaxed);
    }
}

fn alive(procfs: &ProcFs, (pid, start): (Pid, u64)) -> bool {
    procfs
        .stat(pid, pid)
        .is_ok_and(|s| s.start_ticks == start && s.state != 'Z')
}

/// Drops users that exited, in order, up to the first live one, which keeps the target
/// anyway: checking every user every second would cost a `stat` per idle interpreter.
/// Whether none is left.
fn drop_exited(users: &mut BTreeSet<(Pid, u64)>, alive: impl Fn(&(Pid, u64)) -> bool) -> bool {
    while let Some(user) = users.first() {
        if alive(user) {
            return false;
        }
        users.pop_first();
    }
    true
}

enum Refused {
    /// The file will not qualify later either: remembered.
    Never(&'static str),
    /// It may later (a slow read): not remembered.
    Retry(&'static str),
}

/// What a refusal to open a mapped file says about the file the mapping named.
fn refused(why: Refusal) -> Refused {
    match why {
        Refusal::TooBig => Refused::Never("too_big"),
        Refusal::NotRegular => Refused::Never("unreadable"),
        // The process remapped the range after its `maps` was read: nothing about the
        // named file, which a user could otherwise get refused for good.
        Refusal::Changed => Refused::Retry("unreadable"),
    }
}

/// Whether an opened file may get the probe, and where: the file offset of [`SYMBOL`].
fn inspect(file: File) -> Result<(File, u64), Refused> {
    let meta = file.metadata().map_err(|_| Refused::Retry("unreadable"))?;
    if meta.uid() != 0 {
        return Err(Refused::Never("untrusted_owner"));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Refused::Never("writable"));
    }
    if on_fuse(&file) {
        return Err(Refused::Never("untrusted_fs"));
    }
    let elf = Elf::parse(&file).map_err(|error| match error {
        ElfError::TooBig(_) => Refused::Never("too_big"),
        ElfError::Io(_) => Refused::Retry("unreadable"),
        ElfError::NotElf | ElfError::Malformed(_) => Refused::Never("not_elf"),
    })?;
    let symbol = match elf.function(SYMBOL) {
        Ok(Some(symbol)) => symbol,
        Ok(None) => return Err(Refused::Never("no_symbol")),
        Err(ElfError::TooBig(_)) => return Err(Refused::Never("too_big")),
        Err(_) => return Err(Refused::Never("not_elf")),
    };
    let offset = elf
        .file_offset(symbol.address)
        .ok_or(Refused::Never("not_elf"))?;
    drop(elf);
    Ok((file, offset))
}

/// The identity of `pid`'s executable, as `maps` would give it. `AT_STATX_DONT_SYNC`
/// keeps a network or FUSE file system out of it: device and inode are in memory.
fn exe_id(pid: Pid) -> Option<FileId> {
    let path = std::ffi::CString::new(format!("/proc/{pid}/exe")).ok()?;
    // SAFETY: a NUL-terminated path and a zeroed struct that statx fills.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_STATX_DONT_SYNC,
            libc::STATX_INO,
            &mut stx,
        )
    };
    (rc == 0).then_some(((stx.stx_dev_major, stx.stx_dev_minor), stx.stx_ino))
}

fn on_fuse(file: &File) -> bool {
    // Unknown is not trusted.
    fs_type(file).is_none_or(|fs| fs == FUSE_SUPER_MAGIC)
}

/// Names come from `maps` and file names: whatever a process chose.
fn printable(name: &str) -> String {
    name.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_stops_at_the_first_live_user() {
        let user = |pid, start| (Pid::from_raw(pid), start);
        let mut users = BTreeSet::from([user(1, 10), user(2, 20), user(3, 30)]);
        let checked = std::cell::Cell::new(0);
        let alive = |&(pid, _): &(Pid, u64)| {
            checked.set(checked.get() + 1);
            pid == 2
        };
        assert!(!drop_exited(&mut users, alive));
        assert_eq!(checked.get(), 2);
        assert_eq!(users, BTreeSet::from([user(2, 20), user(3, 30)]));
        assert!(drop_exited(&mut users, |_| false));
        assert!(users.is_empty());
    }

    #[test]
    fn only_refusals_about_the_named_file_are_remembered() {
        assert!(matches!(refused(Refusal::Changed), Refused::Retry(_)));
        assert!(matches!(
            refused(Refusal::TooBig),
            Refused::Never("too_big")
        ));
        assert!(matches!(
            refused(Refusal::NotRegular),
            Refused::Never("unreadable")
        ));
    }
}
