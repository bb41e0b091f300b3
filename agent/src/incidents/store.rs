use std::collections::{BTreeMap, VecDeque};

use exitwatch_common::exit_reason;

use super::model::{Ending, Incident, IncidentProcess, IncidentThread, State};
use crate::{
    clock::Clock,
    graph::{ChildTarget, Finding, Kind, Process, Snapshot, Wait},
};

/// How many resolved incidents the API keeps showing.
const RECENT: usize = 200;

/// An incident's identity across scans: its kind and its processes, with their start
/// times so a reused pid is a new incident.
type Key = (Kind, Vec<(i32, u64)>);

#[derive(Default)]
pub struct Store {
    next_id: u64,
    active: BTreeMap<Key, Incident>,
    resolved: VecDeque<Incident>,
}

#[derive(Default)]
pub struct Changes {
    pub opened: Vec<Incident>,
    pub resolved: Vec<(Incident, f64)>,
}

impl Store {
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
        for finding in findings {
            let key = key(snapshot, finding);
            let incident = match self.active.remove(&key) {
                Some(existing) => refresh(existing, snapshot, finding),
                None => {
                    self.next_id += 1;
                    let incident = open(self.next_id, snapshot, finding, clock);
                    changes.opened.push(incident.clone());
                    incident
                }
            };
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
            incident.resolved_at = Some(clock.now_rfc3339());
            let duration = clock.seconds_since_rfc3339(&incident.started_at);
            changes.resolved.push((incident.clone(), duration));
            self.resolved.push_front(incident);
        }
        self.resolved.truncate(RECENT);
        changes
    }

    /// Active incidents first, then resolved ones, newest first within each.
    pub fn list(&self) -> Vec<Incident> {
        let mut active: Vec<Incident> = self.active.values().cloned().collect();
        active.sort_by_key(|incident| std::cmp::Reverse(incident.id));
        active.extend(self.resolved.iter().cloned());
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
        kind: finding.kind.as_str().to_string(),
        state: State::Active,
        pids: finding.pids.clone(),
        blocked_behind: Vec::new(),
        processes: Vec::new(),
        pipes: Vec::new(),
        thread_spawns: None,
        thread_spawns_per_second: None,
        summary: String::new(),
        started_at: clock.monotonic_to_rfc3339(finding.started_ns),
        detected_at: clock.now_rfc3339(),
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
        .map(|process| describe(snapshot, process))
        .collect();
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

fn describe(snapshot: &Snapshot, process: &Process) -> IncidentProcess {
    let exiting = process.exit.map_or_else(Vec::new, |exit| {
        exit_reason::names(exit.reasons).map(String::from).collect()
    });
    IncidentProcess {
        pid: process.pid,
        ppid: process.ppid,
        comm: process.comm.clone(),
        cmdline: process.cmdline.join(" "),
        exiting,
        threads: process
            .threads
            .iter()
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
                }
            })
            .collect(),
    }
}
