//! The two hangs from the seed text, end to end: real probes, real agent, real programs.
mod common;

use std::time::Duration;

use common::{involves, pipe_inode, Agent, Subject, HANG_AFTER};

/// Detection must land within the threshold plus this (scan interval and start-up).
const SLACK: Duration = Duration::from_secs(3);

#[test]
fn popen_wait_pipe_deadlock_is_detected_explained_and_resolved() {
    let agent = Agent::start();
    let mut subject = Subject::python("seed_pipe_deadlock.py", &[]);
    let (parent, child) = (subject.pid("parent"), subject.pid("child"));

    let incident = agent.wait_for(HANG_AFTER + SLACK, "of kind pipe_deadlock", |i| {
        i["kind"] == "pipe_deadlock" && involves(i, parent) && involves(i, child)
    });
    assert_eq!(incident["state"], "active");
    let inode = pipe_inode(child, 1);
    assert_eq!(
        incident["pipes"],
        serde_json::json!([inode]),
        "{incident:#}"
    );
    let summary = incident["summary"].as_str().unwrap_or_default();
    assert!(summary.contains(&inode.to_string()), "{summary}");
    assert!(summary.contains("communicate()"), "{summary}");
    let threads: Vec<serde_json::Value> = incident["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .flat_map(|p| p["threads"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(
        threads
            .iter()
            .any(|t| t["wait"] == "pipe_write" && t["pipe"] == inode),
        "{incident:#}"
    );
    assert!(
        threads
            .iter()
            .any(|t| t["wait"] == "wait_child" && t["target_pid"] == child),
        "{incident:#}"
    );
    // Other hangs on the host may count too; this one must.
    assert!(agent.metric(r#"exitwatch_incidents_total{kind="pipe_deadlock"}"#) >= 1.0);

    subject.kill();
    let id = incident["id"].clone();
    let resolved = agent.wait_for(Duration::from_secs(5), "resolved after kill", |i| {
        i["id"] == id && i["state"] == "resolved"
    });
    assert_eq!(resolved["ended"], "exited");
    assert!(resolved["resolved_at"].is_string());
    assert!(
        agent.stop().success(),
        "the agent must exit cleanly on SIGTERM"
    );
}

#[test]
fn rearming_timer_blocks_interpreter_exit() {
    let agent = Agent::start();
    let mut subject = Subject::python("seed_timer_exit.py", &[]);
    let pid = subject.pid("pid");

    let incident = agent.wait_for(HANG_AFTER + SLACK, "of kind exit_blocked_on_threads", |i| {
        i["kind"] == "exit_blocked_on_threads" && involves(i, pid)
    });
    assert_eq!(incident["pids"], serde_json::json!([pid]));
    let spawns = incident["thread_spawns"].as_u64().unwrap_or(0);
    assert!(
        spawns >= 2,
        "expected >= 2 thread spawns during exit: {incident:#}"
    );
    let process = &incident["processes"][0];
    assert!(
        process["exiting"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r == "py_finalize")),
        "{incident:#}"
    );
    assert!(incident["summary"]
        .as_str()
        .unwrap_or_default()
        .contains("Timer"));
    assert!(agent.metric(r#"exitwatch_incidents_total{kind="exit_blocked_on_threads"}"#) >= 1.0);

    subject.kill();
    let id = incident["id"].clone();
    agent.wait_for(Duration::from_secs(5), "resolved after kill", |i| {
        i["id"] == id && i["state"] == "resolved" && i["ended"] == "exited"
    });
}

#[test]
fn healthy_pipeline_moving_hundreds_of_mib_raises_nothing() {
    let agent = Agent::start();
    let mut pipeline = Subject::python("healthy_pipeline.py", &["1024"]);
    let pids: Vec<i32> = pipeline.pids.values().copied().collect();
    assert!(pipeline.wait(Duration::from_secs(60)).success());
    let mut slow = Subject::python("slow_consumer.py", &["6"]);
    let slow_pids: Vec<i32> = slow.pids.values().copied().collect();
    assert!(slow.wait(Duration::from_secs(30)).success());
    // One more threshold for anything that was about to be reported.
    std::thread::sleep(HANG_AFTER + common::SCAN_INTERVAL);
    let noisy = agent.incidents_involving(&[pids, slow_pids].concat());
    assert!(
        noisy.is_empty(),
        "healthy programs raised incidents: {noisy:#?}"
    );
}
