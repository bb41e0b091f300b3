//! Python from any install: a shared libpython, and an interpreter that exists only in
//! another mount namespace (opened by the agent through /proc/PID/root).
mod common;

use std::{process::Command, time::Duration};

use common::{programs_dir, Agent, Subject, HANG_AFTER};
use exitwatch::graph::Kind;
use exitwatch::pid::Pid;

fn timer_hang_is_caught(agent: &Agent, subject: &Subject) {
    let pid = subject.pid("pid");
    let incident = agent.wait_for(HANG_AFTER + Duration::from_secs(3), "exit hang", |i| {
        i.kind == Kind::ExitBlockedOnThreads && i.pids.contains(&Pid::from_raw(pid))
    });
    assert!(incident.thread_spawns.unwrap_or(0) >= 2, "{incident:#?}");
}

#[test]
fn embedded_shared_libpython() {
    let agent = Agent::start();
    let subject = Subject::c("embedded_timer.c", &[]);
    timer_hang_is_caught(&agent, &subject);
}

#[test]
fn interpreter_in_another_mount_namespace() {
    let agent = Agent::start();
    // The interpreter is copied into a tmpfs that only the new mount namespace sees, so
    // it is a file the agent has never looked at and cannot reach by its path. Main runs
    // for a second, well past exec discovery (at most ~0.3 s), before it finalizes.
    let script = programs_dir().join("seed_timer_exit.py");
    let python = std::fs::canonicalize(common::python()).expect("resolving python3");
    let shell = format!(
        "mount -t tmpfs exitwatch-test /mnt && cp {} /mnt/python3 && exec /mnt/python3 {} 1",
        python.display(),
        script.display()
    );
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", &shell]);
    let subject = Subject::spawn("namespaced python", command);
    timer_hang_is_caught(&agent, &subject);
    assert!(
        agent.log().contains("(via pid"),
        "the probe should be attached through /proc/PID/root:\n{}",
        agent.log()
    );
}
