//! The two hangs from the seed text, end to end: real probes, real agent, real programs.
mod common;

use std::time::Duration;

use common::{pipe_inode, process_of, Agent, Subject, HANG_AFTER};
use exitwatch::pid::Pid;
use exitwatch::{
    graph::Kind,
    incidents::{Ending, Incident, State},
};
use serde_json::Value;

/// Detection must land within the threshold plus this (scan interval and start-up).
const SLACK: Duration = Duration::from_secs(3);

#[test]
fn popen_wait_pipe_deadlock_is_detected_explained_and_resolved() {
    let agent = Agent::start();
    let mut subject = Subject::python("seed_pipe_deadlock.py", &[]);
    let child = subject.pid("child");

    let incident = agent.wait_for_pipe_deadlock(HANG_AFTER + SLACK, &subject);
    assert_eq!(incident.state, State::Active);
    assert_api_shape(&agent, &incident);
    let inode = pipe_inode(child, 1);
    assert_eq!(incident.pipes, [inode], "{incident:#?}");
    assert!(
        incident.summary.contains(&inode.to_string()),
        "{}",
        incident.summary
    );
    assert!(
        incident.summary.contains("communicate()"),
        "{}",
        incident.summary
    );
    let threads: Vec<_> = incident.processes.iter().flat_map(|p| &p.threads).collect();
    assert!(
        threads
            .iter()
            .any(|t| t.wait == "pipe_write" && t.pipe == Some(inode)),
        "{incident:#?}"
    );
    assert!(
        threads
            .iter()
            .any(|t| t.wait == "wait_child" && t.target_pid == Some(Pid::from_raw(child))),
        "{incident:#?}"
    );
    // Other hangs on the host may count too; this one must.
    assert!(agent.metric(r#"exitwatch_incidents_total{kind="pipe_deadlock"}"#) >= 1.0);

    subject.kill();
    let resolved = agent.wait_for(Duration::from_secs(5), "resolved after kill", |i| {
        i.id == incident.id && i.state == State::Resolved
    });
    assert_eq!(resolved.ended, Some(Ending::Exited));
    assert!(resolved.resolved_at.is_some());
    assert_api_shape(&agent, &resolved);
    assert!(
        agent.stop().success(),
        "the agent must exit cleanly on SIGTERM"
    );
}

/// The API is a stable interface: the names and formats of `incident`'s fields as served
/// (the rest of the tests read them back typed).
fn assert_api_shape(agent: &Agent, incident: &Incident) {
    let body = agent
        .get("/api/v1/incidents")
        .unwrap_or_else(|| panic!("GET /api/v1/incidents failed:\n{}", agent.log()));
    let list: Value = serde_json::from_str(&body).expect("incidents JSON");
    let raw = list["incidents"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["id"] == incident.id))
        .unwrap_or_else(|| panic!("incident {} not served: {body}", incident.id));
    assert_eq!(raw["kind"], "pipe_deadlock", "{raw:#}");
    assert_eq!(raw["state"], incident.state.as_str(), "{raw:#}");
    assert_eq!(raw["pids"], serde_json::json!(incident.pids), "{raw:#}");
    assert!(
        raw["summary"].as_str().is_some_and(|s| !s.is_empty()),
        "{raw:#}"
    );
    for time in ["started_at", "detected_at"] {
        assert!(is_rfc3339_millis(&raw[time]), "{time}: {raw:#}");
    }
    match incident.state {
        State::Active => assert!(raw["resolved_at"].is_null(), "{raw:#}"),
        State::Resolved => assert!(is_rfc3339_millis(&raw["resolved_at"]), "{raw:#}"),
    }
}

/// `2026-11-26T14:30:59.394Z`: UTC, milliseconds.
fn is_rfc3339_millis(value: &Value) -> bool {
    let Some(text) = value.as_str() else {
        return false;
    };
    text.len() == 24
        && text.char_indices().all(|(at, c)| match at {
            4 | 7 => c == '-',
            10 => c == 'T',
            13 | 16 => c == ':',
            19 => c == '.',
            23 => c == 'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn rearming_timer_blocks_interpreter_exit() {
    let agent = Agent::start();
    let mut subject = Subject::python("seed_timer_exit.py", &[]);
    let pid = subject.pid("pid");

    let incident = agent.wait_for(HANG_AFTER + SLACK, "of kind exit_blocked_on_threads", |i| {
        i.kind == Kind::ExitBlockedOnThreads && i.pids.contains(&Pid::from_raw(pid))
    });
    assert_eq!(incident.pids, [pid]);
    let spawns = incident.thread_spawns.unwrap_or(0);
    assert!(
        spawns >= 2,
        "expected >= 2 thread spawns during exit: {incident:#?}"
    );
    assert!(
        process_of(&incident, pid)
            .exiting
            .iter()
            .any(|r| r == "py_finalize"),
        "{incident:#?}"
    );
    assert!(incident.summary.contains("Timer"));
    assert!(agent.metric(r#"exitwatch_incidents_total{kind="exit_blocked_on_threads"}"#) >= 1.0);

    subject.kill();
    agent.wait_for(Duration::from_secs(5), "resolved after kill", |i| {
        i.id == incident.id && i.state == State::Resolved && i.ended == Some(Ending::Exited)
    });
}

#[test]
fn healthy_pipeline_moving_hundreds_of_mib_raises_nothing() {
    let agent = Agent::start();
    // Emulated guests (the kernel matrix) move data tens of times slower: they pass a smaller
    // size, still seconds of writer waits past the threshold.
    let mib = std::env::var("EXITWATCH_TEST_PIPELINE_MIB").unwrap_or_else(|_| "1024".into());
    let mut pipeline = Subject::python("healthy_pipeline.py", &[&mib]);
    let pids = pipeline.pids();
    assert!(pipeline.wait(Duration::from_secs(60)).success());
    let mut slow = Subject::python("slow_consumer.py", &["6"]);
    let slow_pids = slow.pids();
    assert!(slow.wait(Duration::from_secs(30)).success());
    // One more threshold for anything that was about to be reported.
    std::thread::sleep(HANG_AFTER + common::SCAN_INTERVAL);
    let noisy = agent.incidents_involving(&[pids, slow_pids].concat());
    assert!(
        noisy.is_empty(),
        "healthy programs raised incidents: {noisy:#?}"
    );
}
