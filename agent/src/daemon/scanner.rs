//! The scan loop: kernel maps → verified snapshot → findings → incidents and metrics.
use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use exitwatch_common::exit_reason;

use super::{zombies, Shared};
use crate::{
    clock::{monotonic_ns, Clock},
    graph::{analysis, Finding},
    incidents::{Ending, MAX_ACTIVE},
    pid::Pid,
    scan::{collect, Changed, Fresh, KernelView, Options},
};

/// Scans run every interval, and in between when a wait that can make a finding turns
/// the threshold old (its time is known from the scan before): a hang is then reported
/// the threshold plus one scan after it began, not up to an interval later. Waits that
/// turn old within a quarter interval after it are waited for (a hang is then reported
/// up to that much later): the waits of one hang begin close together, and one scan
/// then sees them all. One wake-up at most comes
/// between two ticks, so a host where many waits turn old scans at most twice an
/// interval; a wait that turns old after it is found by the next tick.
pub async fn run(shared: Arc<Shared>) {
    let interval = shared.config.scan_interval;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wake: Option<tokio::time::Instant> = None;
    loop {
        let ticked = tokio::select! {
            _ = ticks.tick() => true,
            () = sleep_until(wake), if wake.is_some() => false,
        };
        let scanning = shared.clone();
        wake = match tokio::task::spawn_blocking(move || scan_once(&scanning)).await {
            Ok(due) => due.filter(|_| ticked),
            Err(error) => {
                shared.metrics.scan_failed();
                log::error!("scan failed: {error}");
                None
            }
        };
    }
}

async fn sleep_until(wake: Option<tokio::time::Instant>) {
    if let Some(wake) = wake {
        tokio::time::sleep_until(wake).await;
    }
}

/// Passes over `/proc` per scan at most: the first trusts what earlier scans learnt,
/// the others read anew the processes of what the first found.
const MAX_PASSES: usize = 3;

/// One scan; returns when the next wait that wakes the scanner turns old, if one does.
fn scan_once(shared: &Shared) -> Option<tokio::time::Instant> {
    let started = Instant::now();
    let clock = Clock::now();
    let options = Options {
        hang_after_ns: shared.config.hang_after.as_nanos() as u64,
        lookahead_ns: shared.config.scan_interval.as_nanos() as u64,
        cmdlines: !shared.config.no_cmdlines,
    };
    let timeouts = shared.procfs.timeouts();
    let exiting = shared.probes().exiting();
    let exited = shared.zombies().pending();
    let (unreaping_parents, reaped) = zombies::parents(
        &shared.procfs,
        &exited,
        clock.monotonic_ns,
        options.hang_after_ns,
    );
    shared.zombies().forget(&reaped);
    let counters = shared.probes().counters();
    let changed = {
        let mut lifecycle = shared.lifecycle();
        lifecycle.dropped(counters.events_dropped);
        lifecycle.take()
    };
    let mut state = shared.scan_state();
    let reset = matches!(changed, Changed::All);
    state.forget_processes(changed);
    // Only scans use the waits map, one at a time.
    let mut waits = shared.waits();
    let (changes, read_whole) = waits.changes(clock.monotonic_ns, counters.changes_lost, reset);
    let stale = state.waits_changed(changes);
    if let Some(reason) = read_whole {
        shared.metrics.waits_map_read(reason);
        let (judged, pending) = state.sizes();
        log::debug!(
            "read the whole waits map ({reason}): {judged} judged, {pending} pending, \
             {stale} verdict(s) on changed records dropped"
        );
    }
    let exiting_count = exiting.len();
    let exit_due = exiting
        .iter()
        .map(|(_, exit)| exit.since_ns.saturating_add(options.hang_after_ns))
        .filter(|&due| due > clock.monotonic_ns)
        .min();
    let lookup = |tid| waits.get(tid);
    let view = KernelView {
        waits: &lookup,
        exiting,
    };

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
    let records = state.records(&involved_pids);
    let due = state
        .next_wake(
            options.hang_after_ns,
            clock.monotonic_ns,
            options.lookahead_ns / 4,
        )
        .into_iter()
        .chain(exit_due)
        .min();
    shared.metrics.scan_backlog(state.backlog());
    drop(state);
    waits.forget(&scan.gone_tids);
    drop(waits);
    shared.probes().forget_processes(&scan.gone_pids);
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
        &records,
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
        exiting_count + scan.stack_exits,
        shared.store().active(),
        started.elapsed().as_secs_f64(),
        uprobe_targets,
    );
    let after = Duration::from_nanos(due?.saturating_sub(monotonic_ns()));
    Some(tokio::time::Instant::now() + after)
}

/// Every process of `findings`: their members and those blocked behind them.
fn involved(findings: &[Finding]) -> impl Iterator<Item = Pid> + '_ {
    findings
        .iter()
        .flat_map(|finding| finding.pids.iter().chain(&finding.behind))
        .copied()
}
