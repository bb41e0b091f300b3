//! What processes expose, used against the agent: megabytes of command line with a
//! password in it, a knot of hundreds of processes that all hold every pipe, control
//! characters in a process name. The agent's memory, its responses and its text output
//! must stay bounded and honest, and incidents must end and be numbered truthfully.
mod common;

use std::{os::unix::process::CommandExt, process::Command, time::Duration};

use common::{exitwatch, process_of, programs_dir, python, Agent, Subject, HANG_AFTER};
use exitwatch::pid::Pid;
use exitwatch::{
    graph::Kind,
    incidents::{Ending, Incident, State},
};
use exitwatch_testkit::signal;

const SLACK: Duration = Duration::from_secs(3);
/// Command lines are read up to 4 KiB; what is shown adds the cut marker.
const MAX_SHOWN_CMDLINE: usize = 4096 + 16;

/// The seed deadlock with `args` after the script name: a parent whose command line is
/// as big as the caller wants (the stack limit is raised so exec accepts it).
fn seed_deadlock_with_args(args: &[String]) -> Subject {
    let mut command = Command::new(python());
    command
        .arg(programs_dir().join("seed_pipe_deadlock.py"))
        .args(args);
    // SAFETY: setrlimit is async-signal-safe; the struct outlives the call.
    unsafe {
        command.pre_exec(|| {
            let stack = libc::rlimit {
                rlim_cur: 64 << 20,
                rlim_max: 64 << 20,
            };
            if libc::setrlimit(libc::RLIMIT_STACK, &stack) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Subject::spawn("seed_pipe_deadlock.py (2 MiB of arguments)", command)
}

#[test]
fn deadlocks_with_megabytes_of_command_line_stay_small_and_keep_secrets() {
    let agent = Agent::start();
    let mut args = vec!["--password=hunter2".to_string()];
    args.extend(std::iter::repeat_n("y".repeat(127 * 1024), 16));
    let subjects: Vec<Subject> = (0..4).map(|_| seed_deadlock_with_args(&args)).collect();
    for subject in &subjects {
        let parent = subject.pid("parent");
        let incident = agent.wait_for(HANG_AFTER + SLACK, "for a big-cmdline deadlock", |i| {
            i.kind == Kind::PipeDeadlock && i.pids.contains(&Pid::from_raw(parent))
        });
        let cmdline = &process_of(&incident, parent).cmdline;
        assert!(
            cmdline.len() <= MAX_SHOWN_CMDLINE,
            "{} bytes",
            cmdline.len()
        );
        assert!(cmdline.contains("--password=[redacted]"), "{cmdline:.200}");
        assert!(
            cmdline.ends_with("[…cut]"),
            "{}",
            &cmdline[cmdline.len() - 40..]
        );
    }
    let body = agent.get("/api/v1/incidents").expect("the incident API");
    assert!(
        body.len() < 128 * 1024,
        "API response of {} bytes",
        body.len()
    );
    assert!(!body.contains("hunter2"), "the password was served");
    let page = agent.get("/").expect("the status page");
    assert!(!page.contains("hunter2"), "the password was served");
    let table = exitwatch(&["incidents", "--agent", &agent.url]);
    assert!(table.status.success());
    assert!(!String::from_utf8_lossy(&table.stdout).contains("hunter2"));
    assert!(!agent.log().contains("hunter2"), "the password was logged");
    agent.assert_peak_rss_bounded();
    eprintln!("API response with 4 such deadlocks: {} bytes", body.len());
}

#[test]
fn a_knot_of_hundreds_of_processes_is_one_bounded_incident() {
    let agent = Agent::start();
    let subject = Subject::c("inherited_pipes_knot.c", &["500"]);
    let parent = subject.pid("parent");
    let incident = agent.wait_for(Duration::from_secs(60), "for the 501-process knot", |i| {
        i.kind == Kind::PipeDeadlock
            && i.pids.contains(&Pid::from_raw(parent))
            && i.pids.len() == 501
    });
    let summary = &incident.summary;
    assert!(summary.len() < 4096, "{} bytes: {summary}", summary.len());
    assert!(summary.contains("other processes"), "{summary}");
    assert_eq!(incident.processes.len(), 32);
    assert_eq!(incident.processes_omitted, 501 - 32);
    let body = agent.get("/api/v1/incidents").expect("the incident API");
    assert!(
        body.len() < 128 * 1024,
        "API response of {} bytes",
        body.len()
    );
    // Each scan walks every fd of the knot (250,000 of them): slow, but it must go on.
    let scans = || agent.metric("exitwatch_scan_duration_seconds_count");
    let (before, seconds_before) = (scans(), agent.metric("exitwatch_scan_duration_seconds_sum"));
    std::thread::sleep(Duration::from_secs(10));
    let (after, seconds_after) = (scans(), agent.metric("exitwatch_scan_duration_seconds_sum"));
    assert!(after >= before + 2.0, "scans stalled\n{}", agent.log());
    agent.assert_peak_rss_bounded();
    eprintln!(
        "501-process knot: summary {} bytes, API response {} bytes, {} scans in 10 s, \
         mean scan {:.0} ms",
        summary.len(),
        body.len(),
        after - before,
        1000.0 * (seconds_after - seconds_before) / (after - before)
    );
}

#[test]
fn control_characters_in_a_process_name_are_shown_not_obeyed() {
    let agent = Agent::start();
    let subject = Subject::python("control_chars_comm.py", &[]);
    let parent = subject.pid("parent");
    let incident = agent.wait_for(HANG_AFTER + SLACK, "for the deadlock", |i| {
        i.kind == Kind::PipeDeadlock && i.pids.contains(&Pid::from_raw(parent))
    });
    // JSON carries the real name; text outputs escape it.
    assert_eq!(process_of(&incident, parent).comm, "ev\nINFO x\u{1b}[2J");
    let forged = |text: &str| text.lines().any(|line| line.starts_with("INFO x"));
    let log = agent.log();
    assert!(log.contains("ev\\nINFO x\\x1b[2J"), "{log}");
    assert!(!forged(&log) && !log.contains('\u{1b}'), "{log}");

    let table = exitwatch(&["incidents", "--agent", &agent.url]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("ev\\nINFO x\\x1b[2J"), "{table}");
    assert!(!forged(&table) && !table.contains('\u{1b}'), "{table}");

    let explain = exitwatch(&["explain", &parent.to_string(), "--hang-after", "1s"]);
    let explain = String::from_utf8_lossy(&explain.stdout);
    assert!(explain.contains("ev\\nINFO x\\x1b[2J"), "{explain}");
    assert!(
        !forged(&explain) && !explain.contains('\u{1b}'),
        "{explain}"
    );

    let metrics = agent.metrics();
    assert!(!metrics.contains('\u{1b}'), "ESC in /metrics");
}

#[test]
fn a_killed_process_left_a_zombie_has_exited() {
    let agent = Agent::start();
    let subject = Subject::python("seed_timer_exit.py", &["0.3"]);
    let pid = subject.pid("pid");
    let incident = agent.wait_for(HANG_AFTER + SLACK, "exit_blocked_on_threads", |i| {
        i.kind == Kind::ExitBlockedOnThreads && i.pids.contains(&Pid::from_raw(pid))
    });
    // Not reaped: the subject stays a zombie until it drops.
    signal(pid, libc::SIGKILL);
    let resolved = agent.wait_for(Duration::from_secs(5), "resolved after kill", |i| {
        i.id == incident.id && i.state == State::Resolved
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.contains(") Z "),
        "pid {pid} should still be a zombie: {stat}"
    );
    assert_eq!(resolved.ended, Some(Ending::Exited), "{resolved:#?}");
}

#[test]
fn incident_ids_are_unique_across_restarts_and_cmdlines_can_be_left_out() {
    let first = Agent::start();
    let subject = Subject::python("seed_pipe_deadlock.py", &[]);
    let parent = subject.pid("parent");
    let deadlock =
        |i: &Incident| i.kind == Kind::PipeDeadlock && i.pids.contains(&Pid::from_raw(parent));
    let before = first.wait_for(HANG_AFTER + SLACK, "pipe_deadlock", deadlock);
    assert!(first.stop().success());

    let second = Agent::start_with(&["--no-cmdlines"]);
    let after = second.wait_for(HANG_AFTER + SLACK, "the same deadlock again", deadlock);
    let (before, after) = (before.id, after.id);
    assert!(after > before, "ids {before} then {after}");
    // The command line is left out (the script's name still shows where its Python
    // frames are: that is code, not arguments).
    let cmdline = std::fs::read(format!("/proc/{parent}/cmdline"))
        .expect("reading the parent's command line");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let body = second.get("/api/v1/incidents").expect("the incident API");
    assert!(!body.contains(cmdline.trim()), "{cmdline:?} in {body}");
    assert!(!body.contains("\"cmdline\":\"/"), "{body}");
}
