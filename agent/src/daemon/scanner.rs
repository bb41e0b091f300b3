//! The scan loop: kernel maps → verified snapshot → findings → incidents and metrics.
use std::{sync::Arc, time::Instant};

use super::{zombies, Shared};
use crate::{
    clock::Clock,
    graph::analyze,
    incidents::{Ending, MAX_ACTIVE},
    scan::{collect, Options},
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
    let mut scan = collect(
        &shared.procfs,
        &view,
        clock.monotonic_ns,
        options,
        &unreaping_parents,
        &mut shared.exit_stacks(),
    );
    shared.probes().forget(&scan.gone_tids, &scan.gone_pids);
    shared.metrics.scan_errors(&scan.errors);
    // Slow reads (memory, files) are given up inside helpers that report no error.
    let timed_out = shared.procfs.timeouts() - timeouts;
    if timed_out > 0 {
        shared.metrics.scan_errors(&[("timeout", timed_out)].into());
    }
    for pid in &scan.exits_found {
        shared.metrics.exit_phase_entered("libc_exit");
        log::debug!("pid {pid} is blocked inside exit() (found on its stack)");
    }
    let mut findings = analyze(&scan.snapshot);
    shared.stacks().attach(
        &shared.procfs,
        &view.blocked,
        &mut scan.snapshot,
        &mut findings,
        |result| shared.metrics.stack_captured(result),
    );

    let mut store = shared.store();
    // A zombie has exited: whatever waited on it is released, and it will not run again.
    let changes = store.update(&scan.snapshot, &findings, &clock, |pid, start| {
        shared
            .procfs
            .stat(pid, pid)
            .is_ok_and(|stat| stat.start_ticks == start && !matches!(stat.state, 'Z' | 'X'))
    });
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
        view.exiting.len() + scan.exits_found.len(),
        store.active(),
        started.elapsed().as_secs_f64(),
        uprobe_targets,
    );
}
