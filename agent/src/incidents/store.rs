use std::collections::{BTreeMap, VecDeque};

use exitwatch_common::exit_reason;

use super::model::{Ending, Incident, IncidentProcess, IncidentThread, State};
use crate::{
    clock::Clock,
    graph::{ChildTarget, Finding, Kind, Process, Snapshot, Thread, Wait},
    pid::Pid,
    workload::{Workload, Workloads},
};

/// How many resolved incidents the API keeps showing, and how much memory they may take
/// (as serialized JSON): each is bounded, but a host can resolve many big ones.
const RECENT: usize = 200;
const RECENT_BYTES: usize = 1024 * 1024;
/// Processes described in one incident (all of them stay in `pids`), and threads
/// described per process: knots of hundreds of processes and exits of processes with
/// thousands of threads happen, and each description is rebuilt every scan.
const MAX_PROCESSES: usize = 32;
/// Incidents open at once. Each is bounded, but a user can start any number of small
/// deadlocks; past this many, new findings are counted (`exitwatch_incidents_untracked`)
/// instead of tracked, so memory and the API's answer stay bounded.
pub const MAX_ACTIVE: usize = 64;
const MAX_THREADS: usize = 64;

/// An incident's identity across scans: its kind and its processes, with their start
/// times so a reused pid is a new incident.
type Key = (Kind, Vec<(Pid, u64)>);

pub struct Store {
    next_id: u64,
    active: BTreeMap<Key, Incident>,
    /// Newest first, with each one's serialized size.
    resolved: VecDeque<(Incident, usize)>,
    resolved_bytes: usize,
    /// Names the workloads of incidents' processes; without it they stay unknown.
    workloads: Option<Workloads>,
}

#[derive(Default)]
pub struct Changes {
    pub opened: Vec<Incident>,
    /// Open incidents whose processes, waits, pipes or workload changed in this scan.
    pub changed: Vec<Incident>,
    pub resolved: Vec<(Incident, f64)>,
    /// Findings not tracked because [`MAX_ACTIVE`] incidents are open.
    pub untracked: usize,
}

impl Store {
    /// Incident ids continue from `first_id`; the agent starts them at its start time in
    /// milliseconds, so ids stay unique across restarts (alerts and Prometheus history
    /// key on them) without any state on disk.
    pub fn starting_at(first_id: u64) -> Self {
        Self {
            next_id: first_id,
            active: BTreeMap::new(),
            resolved: VecDeque::new(),
            resolved_bytes: 0,
            workloads: None,
        }
    }

    pub fn with_workloads(self, workloads: Workloads) -> Self {
        Self {
            workloads: Some(workloads),
            ..self
        }
    }

    /// Folds one scan's findings in. `alive(pid, start_ticks)` tells whether a process of
    /// an incident that is no longer found still exists.
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        findings: &[Finding],
        clock: &Clock,
        alive: impl Fn(Pid, u64) -> bool,
    ) -> Changes {
        let mut changes = Changes::default();
        let mut current = BTreeMap::new();
        let mut new = Vec::new();
        for finding in findings {
            let key = key(snapshot, finding);
            match self.active.remove(&key) {
                Some(mut existing) => {
                    let before = shape(&existing);
                    let known = take_workloads(&mut existing);
                    let mut incident = refresh(existing, snapshot, finding);
                    self.identify(&mut incident, known);
                    if shape(&incident) != before {
                        changes.changed.push(incident.clone());
                    }
                    current.insert(key, incident);
                }
                None => new.push((key, finding)),
            }
        }
        // Open incidents go on being tracked; new ones only while there is room.
        for (key, finding) in new {
            if current.len() >= MAX_ACTIVE {
                changes.untracked += 1;
                continue;
            }
            let mut incident = open(self.next_id, snapshot, finding, clock);
            self.identify(&mut incident, BTreeMap::new());
            self.next_id += 1;
            changes.opened.push(incident.clone());
            current.insert(key, incident);
        }
        for ((_, members), mut incident) in std::mem::replace(&mut self.active, current) {
            // One participant gone breaks the wait; that is how most hangs end.
            let exited = members.iter().any(|&(pid, start)| !alive(pid, start));
            incident.state = State::Resolved;
            incident.ended = Some(if exited {
                Ending::Exited
            } else {
                Ending::Unblocked
            });
            incident.resolved_at = Some(clock.wall);
            let duration = clock.seconds_since(incident.started_at);
            changes.resolved.push((incident.clone(), duration));
            self.remember(incident);
        }
        changes
    }

    /// Names the workload of each described process (once: an incident's processes keep
    /// what was found when they were first described) and the one they share, which the
    /// summary then names.
    fn identify(&mut self, incident: &mut Incident, mut known: BTreeMap<Pid, Workload>) {
        let Some(workloads) = self.workloads.as_mut() else {
            return;
        };
        incident.node = workloads.node().to_string();
        for process in &mut incident.processes {
            process.workload = known
                .remove(&process.pid)
                .unwrap_or_else(|| workloads.of(process.pid));
        }
        let first = incident.processes.first().map(|p| &p.workload);
        incident.workload = first
            .filter(|first| first.is_known())
            .filter(|first| incident.processes.iter().all(|p| p.workload == **first))
            .cloned();
        if let Some(phrase) = incident.workload.as_ref().and_then(Workload::phrase) {
            incident.summary = with_workload(&incident.summary, &phrase);
        }
    }

    fn remember(&mut self, incident: Incident) {
        let bytes = serde_json::to_vec(&incident).map_or(0, |json| json.len());
        self.resolved_bytes += bytes;
        self.resolved.push_front((incident, bytes));
        while self.resolved.len() > RECENT || self.resolved_bytes > RECENT_BYTES {
            let Some((_, bytes)) = self.resolved.pop_back() else {
                break;
            };
            self.resolved_bytes -= bytes;
        }
    }

    /// Active incidents first, then resolved ones, newest first within each.
    pub fn list(&self) -> Vec<Incident> {
        let mut active: Vec<Incident> = self.active.values().cloned().collect();
        active.sort_by_key(|incident| std::cmp::Reverse(incident.id));
        active.extend(self.resolved.iter().map(|(incident, _)| incident.clone()));
        active
    }

    pub fn active(&self) -> impl Iterator<Item = &Incident> {
        self.active.values()
    }
}

/// The workloads found for an incident's processes, moved out: [`refresh`] describes the
/// processes anew, and [`Store::identify`] puts them back without reading them again.
fn take_workloads(incident: &mut Incident) -> BTreeMap<Pid, Workload> {
    incident
        .processes
        .iter_mut()
        .map(|p| (p.pid, std::mem::take(&mut p.workload)))
        .collect()
}

/// Every summary opens with its kind ("Pipe deadlock: …"); the workload goes right after
/// it, where a reader of a one-line alert sees it.
fn with_workload(summary: &str, phrase: &str) -> String {
    match summary.split_once(": ") {
        Some((kind, rest)) => format!("{kind} in {phrase}: {rest}"),
        None => format!("{summary} (in {phrase})"),
    }
}

/// What an incident's `changed` event is about: which threads are stuck in which waits,
/// the pipes, who waits behind, the workload; not the seconds that grow every scan.
type Shape = (
    Vec<Pid>,
    Vec<u64>,
    usize,
    Option<Workload>,
    Vec<(Pid, Vec<(Pid, String, bool)>)>,
);

fn shape(incident: &Incident) -> Shape {
    let processes = incident
        .processes
        .iter()
        .map(|p| {
            let threads = p
                .threads
                .iter()
                .map(|t| (t.tid, t.wait.clone(), t.stuck))
                .collect();
            (p.pid, threads)
        })
        .collect();
    (
        incident.blocked_behind.clone(),
        incident.pipes.clone(),
        incident.processes_omitted,
        incident.workload.clone(),
        processes,
    )
}

fn key(snapshot: &Snapshot, finding: &Finding) -> Key {
    let members = finding
        .pids
        .iter()
        .map(|pid| {
            (
                *pid,
                snapshot.processes.get(pid).map_or(0, |p| p.start_ticks),
            )
        })
        .collect();
    (finding.kind, members)
}

fn open(id: u64, snapshot: &Snapshot, finding: &Finding, clock: &Clock) -> Incident {
    let mut incident = Incident {
        id,
        kind: finding.kind,
        state: State::Active,
        pids: finding.pids.clone(),
        node: String::new(),
        workload: None,
        blocked_behind: Vec::new(),
        processes: Vec::new(),
        processes_omitted: 0,
        pipes: Vec::new(),
        thread_spawns: None,
        thread_spawns_per_second: None,
        exit_phase: None,
        summary: String::new(),
        started_at: clock.monotonic_to_wall(finding.started_ns),
        detected_at: clock.wall,
        resolved_at: None,
        ended: None,
    };
    incident = refresh(incident, snapshot, finding);
    incident
}

/// Updates what changes while an incident lasts: durations, threads, the summary.
fn refresh(mut incident: Incident, snapshot: &Snapshot, finding: &Finding) -> Incident {
    incident.summary = finding.summary.clone();
    incident.exit_phase = finding.phase;
    incident.blocked_behind = finding.behind.clone();
    incident.processes = finding
        .pids
        .iter()
        .filter_map(|pid| snapshot.processes.get(pid))
        .take(MAX_PROCESSES)
        .map(|process| describe(snapshot, process))
        .collect();
    incident.processes_omitted = finding.pids.len() - incident.processes.len();
    let mut pipes: Vec<u64> = finding.chain.iter().flat_map(|l| l.wait.pipes()).collect();
    pipes.sort_unstable();
    pipes.dedup();
    incident.pipes = pipes;
    if matches!(
        finding.kind,
        Kind::ExitBlockedOnThreads | Kind::StuckAfterSignal
    ) {
        let exit = finding
            .pids
            .iter()
            .find_map(|pid| snapshot.processes.get(pid)?.exit);
        if let Some(exit) = exit {
            let seconds = snapshot.now_ns.saturating_sub(exit.since_ns) as f64 / 1e9;
            incident.thread_spawns = Some(exit.thread_spawns);
            incident.thread_spawns_per_second =
                (seconds > 0.0).then(|| exit.thread_spawns as f64 / seconds);
        }
    }
    incident
}

/// A process as incidents (and `exitwatch explain --json`) describe it.
pub(crate) fn describe(snapshot: &Snapshot, process: &Process) -> IncidentProcess {
    let exiting = process.exit.map_or_else(Vec::new, |exit| {
        exit_reason::names(exit.reasons).map(String::from).collect()
    });
    // The threads that explain the incident first: stuck, then in any wait.
    let mut threads: Vec<&Thread> = process.threads.iter().collect();
    threads.sort_by_key(|thread| (!thread.stuck, thread.wait.is_none(), thread.tid));
    IncidentProcess {
        pid: process.pid,
        ppid: process.ppid,
        comm: process.comm.clone(),
        cmdline: process.cmdline.clone(),
        workload: Workload::default(),
        exiting,
        threads_omitted: threads.len().saturating_sub(MAX_THREADS),
        threads: threads
            .into_iter()
            .take(MAX_THREADS)
            .map(|thread| {
                let wait = thread.wait.as_ref();
                IncidentThread {
                    tid: thread.tid,
                    wait: wait.map_or("running", Wait::label).to_string(),
                    state: thread.state.to_string(),
                    wchan: thread.wchan.clone(),
                    blocked_seconds: match wait {
                        Some(_) => snapshot.now_ns.saturating_sub(thread.since_ns) as f64 / 1e9,
                        None => 0.0,
                    },
                    pipe: wait.and_then(Wait::pipe),
                    fd: match wait {
                        Some(Wait::PipeWrite { fd, .. } | Wait::PipeRead { fd, .. }) => Some(*fd),
                        _ => None,
                    },
                    target_pid: match wait {
                        Some(Wait::Child {
                            target: ChildTarget::Pid(pid),
                        }) => Some(*pid),
                        _ => None,
                    },
                    timed: match wait {
                        Some(Wait::Futex { timed }) => Some(*timed),
                        _ => None,
                    },
                    stuck: thread.stuck,
                    python_thread: thread.python_name().map(str::to_string),
                    stack: thread.stack.as_deref().cloned(),
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::graph::{Snapshot, Thread};

    const SECOND: u64 = 1_000_000_000;

    /// A pipe deadlock of `size` processes, each with `threads` threads and a long
    /// command line.
    fn deadlock(first_pid: i32, size: i32, threads: i32) -> (Snapshot, Finding) {
        let pids: Vec<Pid> = (first_pid..first_pid + size).map(Pid::from_raw).collect();
        let processes = pids
            .iter()
            .map(|&pid| {
                let threads = (0..threads)
                    .map(|n| Thread {
                        tid: Pid::from_raw(pid.as_raw() * 1000 + n),
                        wait: Some(Wait::PipeWrite {
                            fd: 1,
                            pipe: pid.as_raw().unsigned_abs().into(),
                        }),
                        since_ns: 1,
                        stuck: n % 2 == 1,
                        state: 'S',
                        wchan: String::new(),
                        stack: None,
                    })
                    .collect();
                let process = Process {
                    pid,
                    ppid: Pid::from_raw(1),
                    pgrp: Pid::from_raw(1),
                    start_ticks: 1,
                    comm: "writer".into(),
                    cmdline: "x".repeat(4096),
                    threads,
                    exit: None,
                };
                (pid, process)
            })
            .collect();
        let snapshot = Snapshot {
            now_ns: 100 * SECOND,
            hang_after_ns: SECOND,
            processes,
            pipes: BTreeMap::new(),
        };
        let finding = Finding {
            kind: Kind::PipeDeadlock,
            pids,
            chain: Vec::new(),
            behind: Vec::new(),
            started_ns: 1,
            summary: "Pipe deadlock".into(),
            phase: None,
        };
        (snapshot, finding)
    }

    fn clock() -> Clock {
        Clock::now()
    }

    /// A clock whose wall time is `millis` after the epoch, 100 s after the findings of
    /// `deadlock` began.
    fn clock_at(millis: u64) -> Clock {
        Clock {
            monotonic_ns: 100 * SECOND + 1,
            wall: SystemTime::UNIX_EPOCH + Duration::from_millis(millis),
        }
    }

    #[test]
    fn json_keeps_the_api_shape_and_reads_back() -> Result<(), serde_json::Error> {
        let mut store = Store::starting_at(1);
        let (snapshot, finding) = deadlock(10, 2, 1);
        let opened = store.update(
            &snapshot,
            &[finding],
            &clock_at(1_764_489_405_123),
            |_, _| true,
        );
        let active = serde_json::to_value(&opened.opened[0])?;
        assert_eq!(active["kind"], "pipe_deadlock");
        assert_eq!(active["state"], "active");
        assert_eq!(active["started_at"], "2025-11-30T07:55:05.123Z");
        assert_eq!(active["detected_at"], "2025-11-30T07:56:45.123Z");
        assert_eq!(active["resolved_at"], serde_json::Value::Null);
        // Pids stay plain numbers, and the benchmark's view of an incident reads it.
        assert_eq!(active["pids"], serde_json::json!([10, 11]));
        let bench: exitwatch_testkit::incidents::Incident = serde_json::from_value(active.clone())?;
        assert!(bench.involves(10) && bench.involves(11));
        assert_eq!(bench.detected_at, "2025-11-30T07:56:45.123Z");
        assert_eq!(
            serde_json::from_value::<Incident>(active)?,
            opened.opened[0]
        );

        let changes = store.update(&snapshot, &[], &clock_at(1_764_489_465_623), |_, _| false);
        let (resolved, seconds) = &changes.resolved[0];
        assert_eq!(*seconds, 160.5);
        let json = serde_json::to_value(resolved)?;
        assert_eq!(json["state"], "resolved");
        assert_eq!(json["ended"], "exited");
        assert_eq!(json["resolved_at"], "2025-11-30T07:57:45.623Z");
        assert_eq!(&serde_json::from_value::<Incident>(json)?, resolved);
        Ok(())
    }

    #[test]
    fn ids_continue_from_the_first_and_never_repeat() {
        let mut store = Store::starting_at(1_700_000_000_000);
        let (snapshot, finding) = deadlock(10, 2, 1);
        let (other_snapshot, other) = deadlock(20, 2, 1);
        let opened = store.update(&snapshot, &[finding], &clock(), |_, _| true);
        assert_eq!(opened.opened[0].id, 1_700_000_000_000);
        let opened = store.update(&other_snapshot, &[other], &clock(), |_, _| true);
        assert_eq!(opened.opened[0].id, 1_700_000_000_001);
    }

    #[test]
    fn big_incidents_are_described_in_part() {
        let mut store = Store::starting_at(1);
        let (snapshot, finding) = deadlock(10, 100, 200);
        let changes = store.update(&snapshot, &[finding], &clock(), |_, _| true);
        let incident = &changes.opened[0];
        assert_eq!(incident.pids.len(), 100);
        assert_eq!(incident.processes.len(), MAX_PROCESSES);
        assert_eq!(incident.processes_omitted, 100 - MAX_PROCESSES);
        let process = &incident.processes[0];
        assert_eq!(process.threads.len(), MAX_THREADS);
        assert_eq!(process.threads_omitted, 200 - MAX_THREADS);
        assert!(
            process.threads.iter().all(|t| t.stuck),
            "stuck threads first"
        );
    }

    #[test]
    fn open_incidents_are_capped_and_keep_being_tracked() {
        let mut store = Store::starting_at(1);
        let deadlocks: Vec<(Snapshot, Finding)> = (0..MAX_ACTIVE as i32 + 3)
            .map(|n| deadlock(100 * (n + 1), 2, 1))
            .collect();
        let mut snapshot = Snapshot::default();
        for (one, _) in &deadlocks {
            snapshot.processes.extend(one.processes.clone());
        }
        let findings: Vec<Finding> = deadlocks.into_iter().map(|(_, f)| f).collect();
        let first = store.update(&snapshot, &findings[1..], &clock(), |_, _| true);
        assert_eq!((first.opened.len(), first.untracked), (MAX_ACTIVE, 2));
        // The same findings plus one: the open ones stay, still nothing new fits.
        let again = store.update(&snapshot, &findings, &clock(), |_, _| true);
        assert_eq!((again.opened.len(), again.untracked), (0, 3));
        assert_eq!(store.active().count(), MAX_ACTIVE);
    }

    #[test]
    fn changes_are_in_what_is_stuck_not_in_the_seconds() {
        let mut store = Store::starting_at(1);
        let (mut snapshot, finding) = deadlock(10, 2, 1);
        let findings = [finding];
        store.update(&snapshot, &findings, &clock(), |_, _| true);
        snapshot.now_ns += 5 * SECOND;
        let later = store.update(&snapshot, &findings, &clock(), |_, _| true);
        assert!(later.changed.is_empty(), "only durations grew");
        for process in snapshot.processes.values_mut() {
            process.threads[0].stuck = true;
        }
        let stuck = store.update(&snapshot, &findings, &clock(), |_, _| true);
        assert_eq!(stuck.changed.len(), 1);
        assert!(stuck.changed[0].processes[0].threads[0].stuck);
    }

    #[test]
    fn the_workload_follows_the_kind_in_the_summary() {
        assert_eq!(
            with_workload(
                "Pipe deadlock: a waits; none can proceed.",
                "unit x.service"
            ),
            "Pipe deadlock in unit x.service: a waits; none can proceed."
        );
        assert_eq!(
            with_workload("Odd", "unit x.service"),
            "Odd (in unit x.service)"
        );
    }

    #[test]
    fn resolved_history_is_bounded_in_bytes() {
        let mut store = Store::starting_at(1);
        for n in 0..100 {
            let (snapshot, finding) = deadlock(1000 * (n + 1), 32, 1);
            store.update(&snapshot, &[finding], &clock(), |_, _| true);
            store.update(&snapshot, &[], &clock(), |_, _| false);
        }
        let json = serde_json::to_vec(&store.list()).map_or(0, |json| json.len());
        assert!(json <= RECENT_BYTES, "{json} bytes");
        assert!(store.list().len() < 100, "oldest resolved ones dropped");
        assert_eq!(store.list()[0].ended, Some(Ending::Exited));
    }
}
