//! The standard `process_*` metrics of the agent itself. The prometheus crate's collector
//! counts CPU in whole seconds, which shows an idle agent at 0 for minutes; these are
//! read from `/proc/self` at scrape time with full resolution.
use prometheus::{Counter, Gauge, Registry};

use super::{raise_to, register::register};

pub struct ProcessMetrics {
    cpu: Counter,
    resident: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge,
}

impl ProcessMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let r = registry;
        let metrics = Self {
            cpu: register(
                r,
                Counter::new(
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.",
                )?,
            )?,
            resident: register(
                r,
                Gauge::new(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                )?,
            )?,
            virtual_memory: register(
                r,
                Gauge::new(
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                )?,
            )?,
            open_fds: register(
                r,
                Gauge::new("process_open_fds", "Number of open file descriptors.")?,
            )?,
            max_fds: register(
                r,
                Gauge::new(
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                )?,
            )?,
            start_time: register(
                r,
                Gauge::new(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                )?,
            )?,
        };
        metrics.refresh();
        Ok(metrics)
    }

    /// Reads `/proc/self`; a read that fails leaves the previous values.
    pub fn refresh(&self) {
        // SAFETY: sysconf has no preconditions.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK) as f64,
                libc::sysconf(libc::_SC_PAGESIZE) as f64,
            )
        };
        if let Some(stat) = self_stat() {
            raise_to(&self.cpu, (stat.utime + stat.stime) as f64 / ticks);
            self.virtual_memory.set(stat.vsize as f64);
            self.resident.set(stat.rss_pages as f64 * page);
            if let Some(boot) = boot_time() {
                self.start_time.set(boot + stat.start_ticks as f64 / ticks);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as f64);
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid pointer to an rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            self.max_fds.set(limit.rlim_cur as f64);
        }
    }
}

struct SelfStat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

fn self_stat() -> Option<SelfStat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which ends at the last ')': state is field 3.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(SelfStat {
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}
