//! A host full of threads that sleep quietly: idle thread pools in untimed futex waits
//! and idle pipe readers whose writers are alive. None of them is a hang, and a real
//! deadlock among them is still found. Needs root (real probes); never skips. How much
//! the agent spends on such a host is `cargo xtask bench`'s to measure, not this test's.
mod common;

use std::{
    thread,
    time::{Duration, Instant},
};

use common::{Agent, Subject, HANG_AFTER, SCAN_INTERVAL};
use exitwatch_testkit::{Population, PopulationSize};

/// A tenth of the bench's full host (2,000 idle threads in 200 processes, 100 idle pipe
/// readers): large enough that every scan meets thousands of idle waits, small enough
/// for the test suite.
const DIVISOR: usize = 10;
/// Generous: the population's waits and the deadlock are detected at the threshold plus a
/// scan, but scans of this host are slower than on an empty one.
const DETECTED_WITHIN: Duration = Duration::from_secs(60);

#[test]
fn idle_waiters_are_no_incident_and_a_deadlock_among_them_is_found() {
    let work = tempfile::tempdir().expect("creating the population's build directory");
    let size = PopulationSize::FULL.divided(DIVISOR);
    let population = Population::start(size, work.path(), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("starting the idle population ({size:?}): {e}"));
    let agent = Agent::start();

    let subject = Subject::python("seed_pipe_deadlock.py", &[]);
    agent.wait_for_pipe_deadlock(DETECTED_WITHIN, &subject);

    // The population's waits began before the agent started, so they are past the
    // threshold by now, and judged a bounded share per scan: wait until the agent says
    // none is left, and a scan more.
    let scans = || agent.metric("exitwatch_scan_duration_seconds_count");
    let left = || agent.metric("exitwatch_scan_backlog{work=\"waits\"}");
    let mut judged = scans() + 1.0;
    let deadline = Instant::now() + DETECTED_WITHIN;
    while scans() < judged {
        if left() > 0.0 {
            judged = scans() + 1.0;
        }
        assert!(
            Instant::now() < deadline,
            "scans stalled among the idle population\n{}",
            agent.log()
        );
        thread::sleep(SCAN_INTERVAL);
    }
    let idle = population.pids();
    assert_eq!(
        idle.len(),
        1 + size.processes + 2 * size.pipe_readers,
        "the population lost processes"
    );
    let wrong = agent.incidents_involving(&idle);
    assert!(
        wrong.is_empty(),
        "incidents for idle waiters (threshold {HANG_AFTER:?}): {}\nagent log:\n{}",
        serde_json::to_string_pretty(&wrong).unwrap_or_default(),
        agent.log()
    );
    // Scans learn which waits changed from the probes' marks: the whole map of waits is
    // read once, at start-up, and no change went unmarked.
    let whole_reads = |reason: &str| {
        agent.metric(&format!(
            "exitwatch_waits_map_reads_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(whole_reads("start"), 1.0, "{}", agent.log());
    assert_eq!(whole_reads("lost_changes"), 0.0, "{}", agent.log());
    assert_eq!(
        agent.metric("exitwatch_waits_changes_lost_total"),
        0.0,
        "{}",
        agent.log()
    );
    agent.assert_peak_rss_bounded();
    assert!(
        agent.stop().success(),
        "the agent must exit cleanly on SIGTERM"
    );
}
