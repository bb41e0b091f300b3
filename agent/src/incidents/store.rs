use std::collections::{BTreeMap, VecDeque};

use exitwatch_common::exit_reason;

use super::model::{Ending, Incident, IncidentProcess, IncidentThread, State};
use crate::{
    clock::Clock,
    graph::{ChildTarget, Finding, Kind, Process, Snapshot, Thread, Wait},
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
type Key = (Kind, Vec<(i32, u64)>);

pub struct Store {
    next_id: u64,
    active: BTreeMap<Key, Incident>,
    /// Newest first, with each one's serialized size.
    resolved: VecDeque<(Incident, usize)>,
    resolved_bytes: usize,
}

#[derive(Default)]
pub struct Changes {
    pub opened: Vec<Incident>,
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
        }
    }

    /// Folds one scan's findings in. `alive(pid, start_ticks)` tells whether a process of
    /// an incident that is no longer found still exists.
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        findings: &[Finding],
        clock: &Clock,
        alive: impl Fn(i32, u64) -> bool,
    ) -> Changes {
        let mut changes = Changes::default();
        let mut current = BTreeMap::new();
        let mut new = Vec::new();
        for finding in findings {
            let key = key(snapshot, finding);
            match self.active.remove(&key) {
                Some(existing) => {
                    current.insert(key, refresh(existing, snapshot, finding));
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
            let incident = open(self.next_id, snapshot, finding, clock);
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
        blocked_behind: Vec::new(),
        processes: Vec::new(),
        processes_omitted: 0,
        pipes: Vec::new(),
        thread_spawns: None,
        thread_spawns_per_second: None,
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
        let pids: Vec<i32> = (first_pid..first_pid + size).collect();
        let processes = pids
            .iter()
            .map(|&pid| {
                let threads = (0..threads)
                    .map(|n| Thread {
                        tid: pid * 1000 + n,
                        wait: Some(Wait::PipeWrite {
                            fd: 1,
                            pipe: pid as u64,
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
                    ppid: 1,
                    pgrp: 1,
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
