//! `exitwatch run`: probes, scanner, event loop and HTTP server in one process.
mod events;
mod scanner;
mod zombies;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Args;

use crate::{
    clock::monotonic_ns,
    http::{Health, Listener, WebConfig},
    incidents::{EventStream, Store},
    logging,
    metrics::Metrics,
    probes::{Probes, Waits},
    procfs::ProcFs,
    scan::{blocked_from_proc, Lifecycle, ScanState},
    workload::{self, Workloads},
};

/// Every flag can also be given as `EXITWATCH_<FLAG>` (`--hang-after` is
/// `EXITWATCH_HANG_AFTER`), as systemd's `EnvironmentFile=` and Kubernetes' `env:` set
/// them; a flag on the command line wins.
#[derive(Args, Clone, Debug)]
pub struct Config {
    /// Address for /metrics, /api/v1/incidents, /healthz and the status page.
    #[arg(long, env = "EXITWATCH_LISTEN", default_value = "127.0.0.1:9977", value_parser = crate::args::parse_listen)]
    pub listen: SocketAddr,
    /// A wait counts as hung once it lasts this long without progress.
    #[arg(long, env = "EXITWATCH_HANG_AFTER", default_value = "10s", value_parser = crate::args::parse_duration)]
    pub hang_after: Duration,
    /// How often blocked threads are verified and incidents updated (at least 100ms).
    #[arg(long, env = "EXITWATCH_SCAN_INTERVAL", default_value = "1s", value_parser = parse_scan_interval)]
    pub scan_interval: Duration,
    /// The agent's own log on stderr: text lines for people (with journald priority
    /// prefixes under systemd), or JSON objects for collectors.
    #[arg(long, env = "EXITWATCH_LOG_FORMAT", value_enum, default_value_t = logging::Format::Text)]
    pub log_format: logging::Format,
    /// Turn on the kernel's BPF run-time statistics while the agent runs, for the
    /// exitwatch_bpf_program_* metrics. Off by default: they are global, and make every
    /// BPF program on the host pay two clock reads per run.
    #[arg(long, env = "EXITWATCH_BPF_STATS")]
    pub bpf_stats: bool,
    /// Time every completed sleep in the tracked syscalls, for the
    /// exitwatch_blocked_wait_duration_seconds histogram (the dashboard's wait-duration
    /// panels). Off by default: it adds a task-local storage lookup to every context
    /// switch on the host.
    #[arg(long, env = "EXITWATCH_WAIT_HISTOGRAM")]
    pub wait_histogram: bool,
    /// Leave command lines out of incidents entirely (by default they are kept with
    /// secret-looking values redacted, cut at 4 KiB).
    #[arg(long, env = "EXITWATCH_NO_CMDLINES")]
    pub no_cmdlines: bool,
    /// Most interpreter files (python executables, libpython) given the exit-phase
    /// uprobe; each costs a probe in every process that maps it.
    #[arg(long, env = "EXITWATCH_MAX_UPROBE_TARGETS", default_value_t = 32)]
    pub max_uprobe_targets: usize,
    /// TLS and basic auth, in the Prometheus exporter-toolkit format (the file
    /// node_exporter's --web.config.file reads).
    #[arg(long, env = "EXITWATCH_WEB_CONFIG_FILE", value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,
    /// HTTP connections open at once; a new one replaces the oldest idle one, or is
    /// closed at once when all are serving requests. Lowered when the open-file limit
    /// cannot hold them next to the agent's own descriptors.
    #[arg(long, env = "EXITWATCH_WEB_MAX_CONNECTIONS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub web_max_connections: u32,
    /// Append one JSON line per incident opened, changed and resolved to this file (`-`:
    /// standard output), for log pipelines.
    #[arg(long, env = "EXITWATCH_EVENTS", value_name = "PATH")]
    pub events: Option<PathBuf>,
    /// containerd's state directory: names pods and containers from each container's
    /// config.json (io.containerd.runtime.v2.task/k8s.io/ID/config.json).
    #[arg(
        long,
        env = "EXITWATCH_CONTAINERD_STATE",
        value_name = "DIR",
        default_value = "/run/containerd"
    )]
    pub containerd_state: PathBuf,
    /// CRI-O's storage state directory (overlay-containers/ID/userdata/config.json).
    #[arg(
        long,
        env = "EXITWATCH_CRIO_STATE",
        value_name = "DIR",
        default_value = "/run/containers/storage"
    )]
    pub crio_state: PathBuf,
    /// docker's data directory: names containers and their images
    /// (containers/ID/config.v2.json).
    #[arg(
        long,
        env = "EXITWATCH_DOCKER_STATE",
        value_name = "DIR",
        default_value = "/var/lib/docker"
    )]
    pub docker_state: PathBuf,
}

/// Scans walk `/proc`; shorter intervals than this buy no earlier detection worth a core.
const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(100);

fn parse_scan_interval(text: &str) -> Result<Duration, String> {
    let interval = crate::args::parse_duration(text)?;
    if interval < MIN_SCAN_INTERVAL {
        return Err(format!(
            "must be at least {} (each scan reads /proc)",
            humantime::format_duration(MIN_SCAN_INTERVAL)
        ));
    }
    Ok(interval)
}

/// State shared by the scanner, the event loop and the HTTP handlers.
pub(crate) struct Shared {
    pub config: Config,
    pub procfs: ProcFs,
    pub probes: Mutex<Probes>,
    /// The probes' map of recorded waits: only scans read it.
    pub waits: Mutex<Waits>,
    pub store: Mutex<crate::incidents::Store>,
    /// What scans learnt and later scans reuse.
    pub scan_state: Mutex<ScanState>,
    /// Processes that exec'd or exited since the last scan (from the event loop, which
    /// must not wait for a scan to finish).
    pub lifecycle: Mutex<Lifecycle>,
    /// Stacks of stuck threads, remembered while their waits last.
    pub stacks: Mutex<crate::stacks::Stacks>,
    /// Exited processes not reaped yet, whose parents scans look at.
    pub zombies: Mutex<zombies::Zombies>,
    pub metrics: Metrics,
    pub health: Health,
    /// `--events`: incidents opened, changed and resolved, as JSON lines.
    pub incident_events: EventStream,
}

impl Shared {
    pub fn probes(&self) -> MutexGuard<'_, Probes> {
        // A panic while holding the lock leaves the maps usable; keep going.
        self.probes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn waits(&self) -> MutexGuard<'_, Waits> {
        self.waits.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn scan_state(&self) -> MutexGuard<'_, ScanState> {
        self.scan_state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stacks(&self) -> MutexGuard<'_, crate::stacks::Stacks> {
        self.stacks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn zombies(&self) -> MutexGuard<'_, zombies::Zombies> {
        self.zombies.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Blocking work still running at exit (a scan stuck in a read) is abandoned after this:
/// the process exits anyway, and its exit closes every BPF link.
const ABANDON_BLOCKING_AFTER: Duration = Duration::from_millis(500);

pub fn run(config: Config) -> Result<()> {
    limit_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(serve(config));
    runtime.shutdown_timeout(ABANDON_BLOCKING_AFTER);
    served
}

async fn serve(config: Config) -> Result<()> {
    // Before the probes load: a bad event path stops start-up at once.
    let metrics = Metrics::new().context("registering metrics")?;
    let incident_events = EventStream::open(config.events.as_deref(), metrics.incident_events())
        .with_context(|| match &config.events {
            Some(path) => format!("opening the event file {}", path.display()),
            None => "starting the event writer".into(),
        })?;
    let web = match &config.web_config_file {
        Some(file) => WebConfig::load(file)?,
        None => WebConfig::plain(),
    };
    let listener = Listener::bind(config.listen, web, config.web_max_connections).await?;
    let (probes, mut waits, mut streams) =
        Probes::load(config.wait_histogram).context("cannot start the kernel probes")?;
    // Keeps the kernel counting run time per BPF program while the agent runs.
    let _bpf_stats = config
        .bpf_stats
        .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
        .and_then(|stats| {
            stats
                .inspect_err(|e| log::warn!("BPF run-time stats unavailable: {e}"))
                .ok()
        });

    let procfs = ProcFs::default();
    streams.uprobes.set_limit(config.max_uprobe_targets);
    streams.uprobes.discover_installed();
    streams.uprobes.discover_running();
    let seeded = waits.seed(&blocked_from_proc(&procfs, monotonic_ns()));
    log::info!(
        "exitwatch {} ({}) watching: hang-after {}, scan every {}, {} uprobe target(s), \
         {seeded} wait(s) already in progress; serving {}",
        env!("CARGO_PKG_VERSION"),
        env!("EXITWATCH_REVISION"),
        humantime::format_duration(config.hang_after),
        humantime::format_duration(config.scan_interval),
        streams.uprobes.attached(),
        listener.url(),
    );

    let workloads = Workloads::new(
        procfs.clone(),
        workload::Roots {
            containerd: config.containerd_state.clone(),
            crio: config.crio_state.clone(),
            docker: config.docker_state.clone(),
        },
        workload::node_name(),
    );
    let shared = Arc::new(Shared {
        config: config.clone(),
        procfs,
        probes: Mutex::new(probes),
        waits: Mutex::new(waits),
        store: Mutex::new(Store::starting_at(first_incident_id()).with_workloads(workloads)),
        scan_state: Mutex::default(),
        lifecycle: Mutex::default(),
        stacks: Mutex::default(),
        zombies: Mutex::default(),
        metrics,
        health: Health::new(config.scan_interval),
        incident_events,
    });
    let watched = shared.clone();
    let tasks = [
        tokio::spawn(async move {
            let _alive = watched.health.event_loop_alive();
            events::run(watched.clone(), streams).await;
        }),
        tokio::spawn(scanner::run(shared.clone())),
    ];
    listener.serve(shared.clone(), shutdown_signal()).await;
    for task in tasks {
        task.abort();
    }
    log::info!("shutting down: detaching probes");
    // Dropping the last reference detaches every program and frees the maps (a scan
    // still running holds one; then the process exit closes them).
    drop(shared);
    Ok(())
}

/// glibc gives each thread that allocates its own arena (up to 8 per core), and scans run
/// on whichever blocking-pool thread is free: every arena then keeps the high-water mark
/// of a big scan (a knot of 500 processes took the agent from 29 to 69 MiB). One arena
/// for the whole agent keeps peak memory at what one scan needs (its few threads
/// allocate little outside scans).
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; no allocation is in flight.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
        log::debug!("could not limit malloc arenas");
    }
}

/// The agent's start time in milliseconds: later starts number their incidents above
/// everything an earlier run could have opened.
fn first_incident_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |since| since.as_millis() as u64)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM received"),
        _ = int.recv() => log::info!("SIGINT received"),
    }
}
