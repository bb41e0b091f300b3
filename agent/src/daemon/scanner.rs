//! The scan loop: kernel maps → verified snapshot → findings → incidents and metrics.
use std::{collections::BTreeSet, sync::Arc, time::Instant};

use exitwatch_common::exit_reason;

use super::{zombies, Shared};
use crate::{
    clock::Clock,
    graph::{analysis, Finding},
    incidents::{Ending, MAX_ACTIVE},
    pid::Pid,
    scan::{collect, Fresh, Options},
};

pub async fn run(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(shared.config.scan_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let scanning = shared.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || scan_once(&scanning)).await {
            shared.metrics.scan_failed();
            log::error!("scan failed: {error}");
        }
    }
}

/// Passes over `/proc` per scan at most: the first trusts what earlier scans learnt,
/// the others read anew the processes of what the first found.
const MAX_PASSES: usize = 3;

fn scan_once(shared: &Shared) {
    let started = Instant::now();
    let clock = Clock::now();
    let options = Options {
        hang_after_ns: shared.config.hang_after.as_nanos() as u64,
        cmdlines: !shared.config.no_cmdlines,
    };
    let timeouts = shared.procfs.timeouts();
    let view = shared.probes().kernel_view();
    let exited = shared.zombies().pending();
    let (unreaping_parents, reaped) = zombies::parents(
        &shared.procfs,
        &exited,
        clock.monotonic_ns,
        options.hang_after_ns,
    );
    shared.zombies().forget(&reaped);
    let dropped = shared.probes().counters().events_dropped;
    let changed = {
        let mut lifecycle = shared.lifecycle();
        lifecycle.dropped(dropped);
        lifecycle.take()
    };
    let mut state = shared.scan_state();
    state.forget_processes(changed);

    // Open incidents are always read anew: that is how they end. A finding that rests on
    // anything earlier scans learnt is read again before it counts.
    let mut fresh: BTreeSet<Pid> = shared
        .store()
        .active()
        .flat_map(|incident| incident.pids.iter().chain(&incident.blocked_behind))
        .copied()
        .collect();
    let mut passes = 0;
    // A later pass remembers what an earlier one found on the stacks.
    let mut exits_found = Vec::new();
    let (mut scan, mut analysis) = loop {
        passes += 1;
        let scan = collect(
            &shared.procfs,
            &view,
            clock.monotonic_ns,
            options,
            &unreaping_parents,
            if passes == 1 {
                Fresh::Only(&fresh)
            } else {
                Fresh::Confirm(&fresh)
            },
            &mut state,
        );
        shared.metrics.scan_errors(&scan.errors);
        exits_found.extend_from_slice(&scan.exits_found);
        let analysis = analysis(&scan.snapshot);
        let unconfirmed: BTreeSet<Pid> = involved(&analysis.findings)
            .filter(|pid| !fresh.contains(pid))
            .collect();
        if unconfirmed.is_empty() || passes == MAX_PASSES {
            break (scan, analysis);
        }
        fresh.extend(unconfirmed);
    };
    // What is still unconfirmed after the last pass waits for the next scan.
    analysis
        .findings
        .retain(|finding| involved(std::slice::from_ref(finding)).all(|pid| fresh.contains(&pid)));
    let involved_pids: BTreeSet<Pid> = involved(&analysis.findings).collect();
    state.note_live(&scan, &analysis.live_by, &involved_pids, clock.monotonic_ns);
    drop(state);
    shared
        .probes()
        .forget(&scan.gone_tids, &scan.gone_pids, &view.blocked);
    // Slow reads (memory, files) are given up inside helpers that report no error.
    let timed_out = shared.procfs.timeouts() - timeouts;
    if timed_out > 0 {
        shared.metrics.scan_errors(&[("timeout", timed_out)].into());
    }
    for (pid, reason) in exits_found {
        for name in exit_reason::names(reason) {
            shared.metrics.exit_phase_entered(name);
            log::debug!("pid {pid} is in its exit phase ({name}, found on its stack)");
        }
    }
    let mut findings = analysis.findings;
    shared.stacks().attach(
        &shared.procfs,
        &view.blocked,
        &mut scan.snapshot,
        &mut findings,
        |result, took| shared.metrics.stack_captured(result, took),
    );

    // A zombie has exited: whatever waited on it is released, and it will not run again.
    let changes = shared
        .store()
        .update(&scan.snapshot, &findings, &clock, |pid, start| {
            shared
                .procfs
                .stat(pid, pid)
                .is_ok_and(|stat| stat.start_ticks == start && !matches!(stat.state, 'Z' | 'X'))
        });
    // Serializing events waits for nothing the HTTP handlers hold.
    shared.incident_events.publish(&changes);
    for incident in &changes.opened {
        shared.metrics.incident_opened(incident);
        log::warn!(
            "incident {} opened: {} pids {}: {}",
            incident.id,
            incident.kind.as_str(),
            incident.pids_brief(),
            incident.summary
        );
    }
    shared.metrics.incidents_untracked(changes.untracked);
    if changes.untracked > 0 {
        log::debug!(
            "{} hang(s) not tracked: {MAX_ACTIVE} incidents are open",
            changes.untracked
        );
    }
    for (incident, seconds) in &changes.resolved {
        shared.metrics.incident_resolved(incident, *seconds);
        log::info!(
            "incident {} resolved ({}) after {seconds:.0} s: {} pids {}",
            incident.id,
            incident.ended.map_or("unknown", Ending::as_str),
            incident.kind.as_str(),
            incident.pids_brief()
        );
    }
    let uprobe_targets = shared.probes().uprobe_targets();
    shared.health.scan_completed();
    shared.metrics.observe_scan(
        &scan.snapshot,
        view.exiting.len() + scan.stack_exits,
        shared.store().active(),
        started.elapsed().as_secs_f64(),
        uprobe_targets,
    );
}

/// Every process of `findings`: their members and those blocked behind them.
fn involved(findings: &[Finding]) -> impl Iterator<Item = Pid> + '_ {
    findings
        .iter()
        .flat_map(|finding| finding.pids.iter().chain(&finding.behind))
        .copied()
}
