//! Prometheus metrics, in a private registry. Label values are pre-created so every
//! series exists at 0 from the first scrape.
mod process;
mod register;
mod wait_durations;

use std::{collections::BTreeMap, time::Duration};

use process::ProcessMetrics;
use prometheus::{
    core::{Atomic, GenericCounter},
    CounterVec, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use register::{register, with_series};
use wait_durations::WaitDurations;

use crate::{
    graph::{Kind, Snapshot},
    incidents::{EventCounters, Incident},
    probes::{Counters, ProgramStats, WaitHistogram},
    scan::Backlog,
    text::printable,
};

/// Waits that `exitwatch_blocked_threads` counts.
pub const WAIT_LABELS: [&str; 6] = [
    "pipe_write",
    "pipe_read",
    "poll",
    "wait_child",
    "futex",
    "other",
];

/// Reasons of `exitwatch_scan_errors_total`: those of `procfs::Error::reason`, and whole
/// scans that failed.
const SCAN_ERROR_REASONS: [&str; 6] = [
    "gone",
    "permission",
    "parse",
    "timeout",
    "io",
    "scan_failed",
];

/// Results of `exitwatch_stack_captures_total`.
const STACK_CAPTURE_RESULTS: [&str; 5] = ["ok", "partial", "gone", "timeout", "error"];

/// Labels of `exitwatch_scan_backlog`: the kinds of work per-scan budgets defer.
const BACKLOG_WORK: [&str; 2] = ["waits", "stack_searches"];

/// The active-incident info series carries pids, so its cardinality is capped.
const MAX_INFO_SERIES: usize = 50;

pub struct Metrics {
    registry: Registry,
    incidents_total: IntCounterVec,
    incidents_active: IntGaugeVec,
    incidents_untracked: IntGauge,
    incident_duration: HistogramVec,
    incident_info: IntGaugeVec,
    blocked_threads: IntGaugeVec,
    exit_phase_processes: IntGauge,
    exit_phase_entries: IntCounterVec,
    events: IntCounter,
    events_dropped: IntCounter,
    map_full: IntCounterVec,
    waits_reads: IntCounterVec,
    changes_lost: IntCounter,
    bpf_run_time: CounterVec,
    bpf_runs: IntCounterVec,
    scan_duration: Histogram,
    scan_backlog: IntGaugeVec,
    scan_errors: IntCounterVec,
    stack_captures: IntCounterVec,
    stack_capture_duration: Histogram,
    uprobe_targets: IntGauge,
    uprobe_refusals: IntCounterVec,
    discovery_dropped: IntCounter,
    last_scan: Gauge,
    http_rejected: IntCounter,
    http_evicted: IntCounter,
    incident_events: EventCounters,
    wait_durations: WaitDurations,
    process: ProcessMetrics,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let r = &registry;
        let kinds = || Kind::ALL.map(Kind::as_str);
        let build_info = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "exitwatch_build_info",
                    "Build information; the value is always 1.",
                ),
                &["version", "revision", "rustc"],
            )?,
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("EXITWATCH_REVISION"),
                env!("EXITWATCH_RUSTC"),
            ])
            .set(1);
        Ok(Self {
            incidents_total: register(
                r,
                with_series(
                    IntCounterVec::new(
                        Opts::new("exitwatch_incidents_total", "Incidents opened, by kind."),
                        &["kind"],
                    )?,
                    kinds(),
                ),
            )?,
            incidents_active: register(
                r,
                with_series(
                    IntGaugeVec::new(
                        Opts::new("exitwatch_incidents_active", "Incidents open now, by kind."),
                        &["kind"],
                    )?,
                    kinds(),
                ),
            )?,
            incidents_untracked: register(
                r,
                IntGauge::new(
                    "exitwatch_incidents_untracked",
                    "Hangs found but not tracked as incidents because the most that may be \
                     open at once (64) are.",
                )?,
            )?,
            incident_duration: register(
                r,
                with_series(
                    HistogramVec::new(
                        HistogramOpts::new(
                            "exitwatch_incident_duration_seconds",
                            "How long resolved incidents lasted, from the first wait to \
                             resolution.",
                        )
                        .buckets(vec![
                            5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
                        ]),
                        &["kind"],
                    )?,
                    kinds(),
                ),
            )?,
            incident_info: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "exitwatch_active_incident_info",
                        "One series per process in an active incident (capped at 50 series), \
                         with its workload (labels empty when unknown).",
                    ),
                    &[
                        "id",
                        "kind",
                        "pid",
                        "comm",
                        "namespace",
                        "pod",
                        "container",
                        "unit",
                    ],
                )?,
            )?,
            blocked_threads: register(
                r,
                with_series(
                    IntGaugeVec::new(
                        Opts::new(
                            "exitwatch_blocked_threads",
                            "Threads blocked past the hang threshold without progress, by wait.",
                        ),
                        &["wait"],
                    )?,
                    WAIT_LABELS,
                ),
            )?,
            exit_phase_processes: register(
                r,
                IntGauge::new(
                    "exitwatch_exit_phase_processes",
                    "Processes that are in their exit phase (exit marker seen, not yet gone).",
                )?,
            )?,
            exit_phase_entries: register(
                r,
                with_series(
                    IntCounterVec::new(
                        Opts::new(
                            "exitwatch_exit_phase_entries_total",
                            "Processes entering their exit phase, by marker.",
                        ),
                        &["reason"],
                    )?,
                    exitwatch_common::exit_reason::ALL.map(|(_, reason)| reason),
                ),
            )?,
            events: register(
                r,
                IntCounter::new(
                    "exitwatch_ringbuf_events_total",
                    "Lifecycle events the probes sent through the ring buffer.",
                )?,
            )?,
            events_dropped: register(
                r,
                IntCounter::new(
                    "exitwatch_ringbuf_dropped_events_total",
                    "Lifecycle events lost because the ring buffer was full.",
                )?,
            )?,
            waits_reads: register(
                r,
                with_series(
                    IntCounterVec::new(
                        Opts::new(
                            "exitwatch_waits_map_reads_total",
                            "Whole reads of the probes' map of recorded waits, by reason \
                             (start, lost_changes, scan_reset, periodic); otherwise scans look \
                             up only the entries the probes marked as changed.",
                        ),
                        &["reason"],
                    )?,
                    crate::probes::RESYNC_REASONS,
                ),
            )?,
            changes_lost: register(
                r,
                IntCounter::new(
                    "exitwatch_waits_changes_lost_total",
                    "Changes to the map of recorded waits the probes could not mark (a thread \
                     id beyond the marks: pid_max raised after the agent started); each makes \
                     the next scan read the whole map.",
                )?,
            )?,
            map_full: register(
                r,
                with_series(
                    IntCounterVec::new(
                        Opts::new(
                            "exitwatch_map_insert_failures_total",
                            "Probe updates lost because a kernel map was full, by map.",
                        ),
                        &["map"],
                    )?,
                    [
                        exitwatch_common::names::MAP_BLOCKED,
                        exitwatch_common::names::MAP_PROCS,
                    ],
                ),
            )?,
            bpf_run_time: register(
                r,
                CounterVec::new(
                    Opts::new(
                        "exitwatch_bpf_program_run_time_seconds_total",
                        "CPU time spent in each probe program (kernel BPF stats: run the agent \
                         with --bpf-stats, or enable kernel.bpf_stats_enabled).",
                    ),
                    &["program"],
                )?,
            )?,
            bpf_runs: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "exitwatch_bpf_program_runs_total",
                        "Runs of each probe program (kernel BPF stats, as above).",
                    ),
                    &["program"],
                )?,
            )?,
            scan_duration: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "exitwatch_scan_duration_seconds",
                        "Time one scan takes: reading the maps, verifying with /proc, analysing.",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    ]),
                )?,
            )?,
            scan_backlog: register(
                r,
                with_series(
                    IntGaugeVec::new(
                        Opts::new(
                            "exitwatch_scan_backlog",
                            "Work the last scan's budgets left for later scans, by kind \
                             (waits: recorded waits past the threshold not yet checked in \
                             /proc; stack_searches: stuck threads whose stacks are still to \
                             be searched for an exit phase); failed reads tried again are \
                             not counted. Non-zero for a while after start-up on a big host.",
                        ),
                        &["work"],
                    )?,
                    BACKLOG_WORK,
                ),
            )?,
            scan_errors: register(
                r,
                with_series(
                    IntCounterVec::new(
                        Opts::new(
                            "exitwatch_scan_errors_total",
                            "Reads of /proc that failed during scans, by reason (gone: the \
                             process exited while being read, which is normal), and whole \
                             scans that failed.",
                        ),
                        &["reason"],
                    )?,
                    SCAN_ERROR_REASONS,
                ),
            )?,
            stack_captures: register(
                r,
                with_series(
                    IntCounterVec::new(
                        Opts::new(
                            "exitwatch_stack_captures_total",
                            "Stacks of stuck threads captured, by result (partial: cut at \
                             a frame that could not be unwound, the frame cap or the time \
                             budget; gone: the thread exited while being read).",
                        ),
                        &["result"],
                    )?,
                    STACK_CAPTURE_RESULTS,
                ),
            )?,
            stack_capture_duration: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "exitwatch_stack_capture_duration_seconds",
                        "Time one stack capture takes (maps, stack memory, unwinding, \
                         naming and Python frames), whatever its result.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    ]),
                )?,
            )?,
            uprobe_targets: register(
                r,
                IntGauge::new(
                    "exitwatch_uprobe_targets",
                    "Interpreter files (python, libpython) the Py_FinalizeEx uprobe is \
                     attached to.",
                )?,
            )?,
            uprobe_refusals: register(
                r,
                with_series(
                    IntCounterVec::new(
                        Opts::new(
                            "exitwatch_uprobe_refusals_total",
                            "Interpreter-like files not given the Py_FinalizeEx uprobe, by \
                             reason.",
                        ),
                        &["reason"],
                    )?,
                    crate::probes::REFUSAL_REASONS,
                ),
            )?,
            discovery_dropped: register(
                r,
                IntCounter::new(
                    "exitwatch_uprobe_discovery_dropped_total",
                    "Exec events not looked at for uprobes because discovery was behind.",
                )?,
            )?,
            last_scan: register(
                r,
                Gauge::new(
                    "exitwatch_last_scan_timestamp_seconds",
                    "Unix time of the last completed scan.",
                )?,
            )?,
            http_rejected: register(
                r,
                IntCounter::new(
                    "exitwatch_http_connections_rejected_total",
                    "HTTP connections closed at once: all --web-max-connections were serving \
                     requests.",
                )?,
            )?,
            http_evicted: register(
                r,
                IntCounter::new(
                    "exitwatch_http_connections_evicted_total",
                    "Idle HTTP connections closed to make room for new ones (all slots taken).",
                )?,
            )?,
            incident_events: EventCounters {
                dropped: register(
                    r,
                    IntCounter::new(
                        "exitwatch_incident_events_dropped_total",
                        "Incident events (--events) dropped because the writer was too far \
                         behind.",
                    )?,
                )?,
                write_errors: register(
                    r,
                    IntCounter::new(
                        "exitwatch_incident_event_write_errors_total",
                        "Incident events (--events) that could not be written.",
                    )?,
                )?,
            },
            wait_durations: register(r, WaitDurations::new()?)?,
            process: ProcessMetrics::new(r)?,
            registry,
        })
    }

    pub fn incident_opened(&self, incident: &Incident) {
        self.incidents_total
            .with_label_values(&[incident.kind.as_str()])
            .inc();
    }

    pub fn incident_resolved(&self, incident: &Incident, seconds: f64) {
        self.incident_duration
            .with_label_values(&[incident.kind.as_str()])
            .observe(seconds);
    }

    /// The counters the incident event writer keeps.
    pub fn incident_events(&self) -> EventCounters {
        self.incident_events.clone()
    }

    pub fn incidents_untracked(&self, count: usize) {
        self.incidents_untracked.set(count as i64);
    }

    pub fn exit_phase_entered(&self, reason: &str) {
        self.exit_phase_entries.with_label_values(&[reason]).inc();
    }

    pub fn http_connection_rejected(&self) {
        self.http_rejected.inc();
    }

    pub fn http_connection_evicted(&self) {
        self.http_evicted.inc();
    }

    pub fn scan_failed(&self) {
        self.scan_errors.with_label_values(&["scan_failed"]).inc();
    }

    pub fn stack_captured(&self, result: &str, took: Duration) {
        self.stack_captures.with_label_values(&[result]).inc();
        self.stack_capture_duration.observe(took.as_secs_f64());
    }

    pub fn waits_map_read(&self, reason: &str) {
        self.waits_reads.with_label_values(&[reason]).inc();
    }

    pub fn scan_backlog(&self, backlog: Backlog) {
        for (work, left) in BACKLOG_WORK
            .into_iter()
            .zip([backlog.waits, backlog.stack_searches])
        {
            self.scan_backlog
                .with_label_values(&[work])
                .set(i64::try_from(left).unwrap_or(i64::MAX));
        }
    }

    pub fn scan_errors(&self, errors: &BTreeMap<&'static str, u64>) {
        for (reason, count) in errors {
            self.scan_errors.with_label_values(&[reason]).inc_by(*count);
        }
    }

    /// Gauges that describe the latest scan.
    pub fn observe_scan<'a>(
        &self,
        snapshot: &Snapshot,
        exiting: usize,
        active: impl Iterator<Item = &'a Incident>,
        seconds: f64,
        uprobe_targets: usize,
    ) {
        self.scan_duration.observe(seconds);
        self.exit_phase_processes.set(exiting as i64);
        self.uprobe_targets.set(uprobe_targets as i64);
        self.last_scan.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        for wait in WAIT_LABELS {
            let stuck = snapshot
                .processes
                .values()
                .flat_map(|p| &p.threads)
                .filter(|t| t.stuck && t.wait.as_ref().is_some_and(|w| w.label() == wait))
                .count();
            self.blocked_threads
                .with_label_values(&[wait])
                .set(stuck as i64);
        }
        for kind in Kind::ALL {
            self.incidents_active
                .with_label_values(&[kind.as_str()])
                .set(0);
        }
        self.incident_info.reset();
        let mut series = 0;
        for incident in active {
            self.incidents_active
                .with_label_values(&[incident.kind.as_str()])
                .inc();
            for process in &incident.processes {
                if series < MAX_INFO_SERIES {
                    let (id, pid) = (incident.id.to_string(), process.pid.to_string());
                    let comm = printable(&process.comm).into_owned();
                    let [namespace, pod, container, unit] = process.workload.labels();
                    self.incident_info
                        .with_label_values(&[
                            &id,
                            incident.kind.as_str(),
                            &pid,
                            &comm,
                            &namespace,
                            &pod,
                            &container,
                            &unit,
                        ])
                        .set(1);
                    series += 1;
                }
            }
        }
    }

    /// Kernel-side numbers, read when scraped.
    pub fn observe_kernel(
        &self,
        counters: Counters,
        programs: &[ProgramStats],
        waits: Vec<WaitHistogram>,
    ) {
        self.wait_durations.set(waits);
        self.process.refresh();
        raise_to(&self.events, counters.events_sent);
        raise_to(&self.events_dropped, counters.events_dropped);
        raise_to(&self.changes_lost, counters.changes_lost);
        raise_to(
            &self
                .map_full
                .with_label_values(&[exitwatch_common::names::MAP_BLOCKED]),
            counters.blocked_full,
        );
        raise_to(
            &self
                .map_full
                .with_label_values(&[exitwatch_common::names::MAP_PROCS]),
            counters.procs_full,
        );
        for (reason, count) in crate::probes::REFUSAL_REASONS
            .iter()
            .zip(counters.uprobe_refusals)
        {
            raise_to(&self.uprobe_refusals.with_label_values(&[reason]), count);
        }
        raise_to(&self.discovery_dropped, counters.discovery_dropped);
        for program in programs {
            raise_to(
                &self.bpf_run_time.with_label_values(&[program.name]),
                program.run_time_ns as f64 / 1e9,
            );
            raise_to(
                &self.bpf_runs.with_label_values(&[program.name]),
                program.run_count,
            );
        }
    }

    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Counters that mirror a cumulative count kept by the kernel.
pub(crate) fn raise_to<P: Atomic>(counter: &GenericCounter<P>, total: P::T) {
    let current = counter.get();
    if total > current {
        let mut delta = total;
        delta -= current;
        counter.inc_by(delta);
    }
}
