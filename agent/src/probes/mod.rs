//! Loading, attaching and reading the kernel programs.
mod batch;
mod changed;
mod error;
mod schedule;
mod tracefs;
mod uprobes;
mod waits;

use std::{path::Path, sync::Arc};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use exitwatch_common::{
    changed as changed_ids, counter, names,
    tracefs_format::{self, GlobalsError},
    wait_histogram, ExitState,
};

pub use error::ProbeError;
pub use uprobes::{UprobeStats, Uprobes, REFUSAL_REASONS};
pub use waits::{Waits, RESYNC_REASONS};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/exitwatch.bpf.o"));
const OBJECT_STATUS: &str = env!("EXITWATCH_EBPF_STATUS");

/// Classic tracepoints: (program, category, name).
const TRACEPOINTS: [(&str, &str, &str); 3] = [
    (names::PROG_TASK_NEWTASK, "task", "task_newtask"),
    (names::PROG_PROCESS_EXEC, "sched", "sched_process_exec"),
    (names::PROG_SIGNAL_DELIVER, "signal", "signal_deliver"),
];

/// `tp_btf` programs: (program, tracepoint).
const BTF_TRACEPOINTS: [(&str, &str); 2] = [
    (names::PROG_SCHED_SWITCH, "sched_switch"),
    (names::PROG_PROCESS_EXIT, "sched_process_exit"),
];

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub events_sent: u64,
    pub events_dropped: u64,
    pub blocked_full: u64,
    pub procs_full: u64,
    /// Changes to the waits map the probes could not mark for the agent.
    pub changes_lost: u64,
    /// Files refused a uprobe, in the order of [`REFUSAL_REASONS`].
    pub uprobe_refusals: [u64; REFUSAL_REASONS.len()],
    /// Exec events that uprobe discovery had no room for.
    pub discovery_dropped: u64,
}

/// Completed tracked waits of one class, summed over CPUs.
pub struct WaitHistogram {
    pub class: &'static str,
    /// Non-cumulative counts; bucket `b` holds waits shorter than `2^b` µs.
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

pub struct ProgramStats {
    pub name: &'static str,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// What scans and scrapes read: the maps and counters, nothing that can be slow. The
/// programs themselves (and their links) belong to [`Uprobes`], which attaches and
/// detaches on its own thread; the map of recorded waits to [`Waits`], which only scans
/// read.
pub struct Probes {
    procs: HashMap<MapData, u32, ExitState>,
    counters: PerCpuArray<MapData, u64>,
    wait_histogram: PerCpuArray<MapData, u64>,
    /// Kernel ids of the loaded programs, for their run-time statistics.
    program_ids: Vec<(u32, &'static str)>,
    uprobe_stats: Arc<UprobeStats>,
}

/// Parts that run on their own: lifecycle events, the probes' log records, and uprobe
/// discovery (which owns the programs: dropping it detaches every probe).
pub struct Streams {
    pub events: RingBuf<MapData>,
    pub logger: EbpfLogger<&'static dyn log::Log>,
    pub uprobes: Uprobes,
}

impl Probes {
    /// Loads and attaches every program; everything is detached when `Probes` drops.
    /// `wait_histogram` turns on the timing of completed waits in `sched_switch`.
    pub fn load(wait_histogram: bool) -> Result<(Self, Waits, Streams), ProbeError> {
        if OBJECT_STATUS != "fresh" {
            return Err(ProbeError::NoObject(OBJECT_STATUS));
        }
        error::check_privileges()?;
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(ProbeError::NoBtf);
        }
        raise_memlock_limit();
        let tracefs = tracefs::ensure_mounted()?;

        let globals = tracefs_format::kernel_globals(|category, tracepoint, field| {
            tracefs::field_offset(&tracefs, category, tracepoint, field)
        })
        .map_err(|error| match error {
            GlobalsError::Read(error) => error,
            GlobalsError::MissingField {
                category,
                tracepoint,
                field,
            } => ProbeError::MissingField {
                tracepoint: format!("{category}/{tracepoint}"),
                field,
            },
        })?;
        let mut loader = EbpfLoader::new();
        // Task-local storage (TASK_WAIT) is used by the programs only; aya has no
        // user-space wrapper for it, which is fine.
        loader.allow_unsupported_maps();
        for (global, value) in &globals {
            loader.override_global(global, value, true);
        }
        // Marks of changed waits for every thread id the host can have.
        let ids = pid_max();
        loader.map_max_entries(names::MAP_CHANGED, changed_ids::words(ids));
        let wait_histogram_on = u32::from(wait_histogram);
        loader.override_global(names::GLOBAL_WAIT_HISTOGRAM_ON, &wait_histogram_on, true);
        let mut ebpf = loader.load(OBJECT).map_err(error::load_error)?;
        // The parsed kernel BTF is big (about 20 MB here) and the loader keeps a copy:
        // free it before parsing the BTF again for the tp_btf programs, which halves the
        // agent's peak memory at the price of a second parse (~15 ms).
        drop(loader);
        let btf = Btf::from_sys_fs().map_err(|_| ProbeError::NoBtf)?;
        let logger = EbpfLogger::init(&mut ebpf).map_err(ProbeError::Logger)?;

        for (name, tracepoint) in BTF_TRACEPOINTS {
            let tp: &mut BtfTracePoint = program(&mut ebpf, name)?;
            tp.load(tracepoint, &btf)
                .map_err(|e| ProbeError::program(name, e))?;
            tp.attach().map_err(|e| ProbeError::program(name, e))?;
        }
        drop(btf);
        for (name, category, tracepoint) in TRACEPOINTS {
            let tp: &mut TracePoint = program(&mut ebpf, name)?;
            tp.load().map_err(|e| ProbeError::program(name, e))?;
            tp.attach(category, tracepoint)
                .map_err(|e| ProbeError::program(name, e))?;
        }
        let events = RingBuf::try_from(take_map(&mut ebpf, names::MAP_EVENTS)?)
            .map_err(|e| ProbeError::map(names::MAP_EVENTS, e))?;
        let blocked = HashMap::try_from(take_map(&mut ebpf, names::MAP_BLOCKED)?)
            .map_err(|e| ProbeError::map(names::MAP_BLOCKED, e))?;
        let changed = aya::maps::Array::try_from(take_map(&mut ebpf, names::MAP_CHANGED)?)
            .map_err(|e| ProbeError::map(names::MAP_CHANGED, e))?;
        let changed = changed::ChangedIds::new(changed, ids)
            .map_err(|e| ProbeError::map(names::MAP_CHANGED, aya::maps::MapError::IoError(e)))?;
        let procs = HashMap::try_from(take_map(&mut ebpf, names::MAP_PROCS)?)
            .map_err(|e| ProbeError::map(names::MAP_PROCS, e))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, names::MAP_COUNTERS)?)
            .map_err(|e| ProbeError::map(names::MAP_COUNTERS, e))?;
        let wait_histogram = PerCpuArray::try_from(take_map(&mut ebpf, names::MAP_WAIT_HISTOGRAM)?)
            .map_err(|e| ProbeError::map(names::MAP_WAIT_HISTOGRAM, e))?;
        let uprobes = Uprobes::load(ebpf)?;
        let program_ids = uprobes.program_ids();
        let probes = Self {
            procs,
            counters,
            wait_histogram,
            program_ids,
            uprobe_stats: uprobes.stats(),
        };
        let streams = Streams {
            events,
            logger,
            uprobes,
        };
        Ok((probes, Waits::new(blocked, changed), streams))
    }

    pub fn uprobe_targets(&self) -> usize {
        self.uprobe_stats.targets()
    }

    /// Processes in their exit phase, as the probes marked them.
    pub fn exiting(&self) -> Vec<(u32, ExitState)> {
        self.procs.iter().filter_map(Result::ok).collect()
    }

    /// Drops the exit state of processes that are gone.
    pub fn forget_processes(&mut self, pids: &[u32]) {
        for pid in pids {
            let _ = self.procs.remove(pid);
        }
    }

    pub fn counters(&self) -> Counters {
        let sum = |index: u32| sum_cpus(&self.counters, index);
        Counters {
            events_sent: sum(counter::EVENTS_SENT),
            events_dropped: sum(counter::EVENTS_DROPPED),
            blocked_full: sum(counter::BLOCKED_FULL),
            procs_full: sum(counter::PROCS_FULL),
            changes_lost: sum(counter::CHANGES_LOST),
            uprobe_refusals: self.uprobe_stats.refusals(),
            discovery_dropped: self.uprobe_stats.dropped(),
        }
    }

    pub fn wait_histograms(&self) -> Vec<WaitHistogram> {
        (0..wait_histogram::CLASSES)
            .map(|class| {
                let base = class * wait_histogram::SLOTS;
                WaitHistogram {
                    class: wait_histogram::CLASS_NAMES[class as usize],
                    buckets: (0..wait_histogram::BUCKETS)
                        .map(|bucket| sum_cpus(&self.wait_histogram, base + bucket))
                        .collect(),
                    sum_ns: sum_cpus(&self.wait_histogram, base + wait_histogram::BUCKETS),
                }
            })
            .collect()
    }

    /// Run time and count per program, as kept by the kernel while BPF stats are enabled.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter_map(|info| {
                let &(_, name) = self.program_ids.iter().find(|(id, _)| *id == info.id())?;
                Some(ProgramStats {
                    name,
                    run_time_ns: info.run_time().as_nanos() as u64,
                    run_count: info.run_count(),
                })
            })
            .collect()
    }
}

fn sum_cpus(array: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    array
        .get(&index, 0)
        .map(|values| values.iter().sum())
        .unwrap_or(0)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?
        .try_into()
        .map_err(|e| ProbeError::program(name, e))
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

/// The host's `kernel.pid_max`: thread ids stay below it (until someone raises it; the
/// probes count the changes they then cannot mark, and scans read the whole map).
fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .map_or(changed_ids::MAX_IDS, |ids: u32| {
            ids.min(changed_ids::MAX_IDS)
        })
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection, ObjectSymbol};

    use super::{names, OBJECT, OBJECT_STATUS};

    /// A `call` (opcode 0x85) with source register (the high nibble of byte 1) 0 calls a
    /// kernel helper; with 1, another BPF function of the object.
    fn calls(instruction: &[u8], source: u8) -> bool {
        instruction[0] == 0x85 && instruction[1] >> 4 == source
    }

    #[test]
    fn sched_switch_calls_no_subprogram() {
        // On the scheduler's hottest path a subprogram call is nearly always the compiler
        // reaching for `memcmp` or `memcpy`, byte loops in BPF: an array comparison in
        // `same_wait` once cost 25 ns a sleep that way.
        assert_eq!(
            OBJECT_STATUS, "fresh",
            "the embedded eBPF object is not fresh: run `cargo xtask build-ebpf`"
        );
        let file = object::File::parse(OBJECT).expect("parsing the eBPF object");
        let symbol = file
            .symbols()
            .find(|s| s.name() == Ok(names::PROG_SCHED_SWITCH))
            .expect("the object has no sched_switch symbol");
        let section = symbol
            .section_index()
            .and_then(|index| file.section_by_index(index).ok())
            .expect("sched_switch is in no section");
        let data = section.data().expect("reading sched_switch's section");
        let start = usize::try_from(symbol.address() - section.address()).expect("offset");
        let end = start + usize::try_from(symbol.size()).expect("size");
        let code = &data[start..end];
        // Not vacuous: the program is found and decoded (it calls helpers).
        assert!(
            code.chunks_exact(8)
                .any(|instruction| calls(instruction, 0)),
            "no helper call found in sched_switch's {} bytes",
            code.len()
        );
        let subprograms: Vec<usize> = code
            .chunks_exact(8)
            .enumerate()
            .filter(|(_, instruction)| calls(instruction, 1))
            .map(|(index, _)| index)
            .collect();
        assert!(
            subprograms.is_empty(),
            "sched_switch calls BPF subprograms (memcmp, memcpy, …) at instructions \
             {subprograms:?}"
        );
    }
}
