//! Files an unprivileged user controls, aimed at the agent: names in `/proc/PID/maps`
//! that point it at a FIFO or a 1 GiB sparse "libc", and fake interpreters that would
//! each get (and keep) a uprobe. The attacker is `nobody` running the system's python.
mod common;

use std::{
    os::unix::fs::{chown, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{as_nobody, compile_c, programs_dir, Agent, Subject, HANG_AFTER, SCAN_INTERVAL};
use exitwatch::graph::Kind;
use exitwatch::pid::Pid;

const NOBODY: u32 = 65534;
const SLACK: Duration = Duration::from_secs(3);

/// A directory the attacker may write in (the test's own temporary directory is
/// root's and private).
fn attacker_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("opening the directory to nobody");
    dir
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("listing /proc/{pid}/fd: {e}"))
        .count()
}

fn scans(agent: &Agent) -> f64 {
    agent.metric("exitwatch_scan_duration_seconds_count")
}

/// Scans keep completing for `window` (not just one or two of them).
fn scans_keep_completing(agent: &Agent, window: Duration) -> (f64, f64) {
    let before = scans(agent);
    std::thread::sleep(window);
    let after = scans(agent);
    let expected = window.as_secs_f64() / SCAN_INTERVAL.as_secs_f64() / 2.0;
    assert!(
        after - before >= expected,
        "only {} scans completed in {window:?} (expected >= {expected}):\n{}",
        after - before,
        agent.log()
    );
    (before, after)
}

#[test]
fn disguised_fifo_and_sparse_libc_neither_stall_nor_inflate_the_agent() {
    let agent = Agent::start();
    let dir = attacker_dir();
    let script = programs_dir().join("hostile_maps.py");
    let python = common::python();
    let mut attackers = Vec::new();
    for mode in ["fifo", "sparse"] {
        let sub = dir.path().join(mode);
        std::fs::create_dir(&sub).expect("creating the attacker's directory");
        chown(&sub, Some(NOBODY), Some(NOBODY)).expect("giving the directory to nobody");
        let mut command = as_nobody(&python);
        command.arg(&script).arg(&sub).arg(mode);
        attackers.push(Subject::spawn(&format!("hostile_maps.py {mode}"), command));
    }
    // The printed name of the newline file is a FIFO: opening it would block forever.
    let fifo = dir.path().join("fifo").join("libc.so.6\\012X");
    let fifo_type = std::fs::symlink_metadata(&fifo)
        .unwrap_or_else(|e| panic!("the attacker made no FIFO at {}: {e}", fifo.display()));
    assert!(
        std::os::unix::fs::FileTypeExt::is_fifo(&fifo_type.file_type()),
        "{}",
        fifo.display()
    );

    // Each attacker is stuck in a pipe write that only it could drain: the agent must
    // see that (the process stays visible despite its odd mappings), which also means
    // its stack was searched through the hostile "libc".
    for attacker in &attackers {
        let pid = attacker.pid("pid");
        agent.wait_for(HANG_AFTER + SLACK, "for the attacker", |i| {
            i.pids.contains(&Pid::from_raw(pid))
        });
    }
    for attacker in &attackers {
        explain_finishes(attacker.pid("pid"));
    }
    let (before, after) = scans_keep_completing(&agent, Duration::from_secs(4));
    eprintln!("scans during the attack: {before} -> {after}");
    detection_still_works(&agent);

    agent.assert_peak_rss_bounded();
}

#[test]
fn a_mapping_named_in_non_utf8_does_not_hide_an_exit_hang() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let dir_name = dir.path().to_str().expect("a UTF-8 temporary directory");
    let subject = Subject::c("atexit_join.c", &[dir_name]);
    let pid = subject.pid("pid");
    let maps = std::fs::read(format!("/proc/{pid}/maps")).expect("reading the subject's maps");
    assert!(
        maps.split(|&b| b == b'\n')
            .any(|line| std::str::from_utf8(line).is_err()),
        "the subject should map a file whose name is not UTF-8"
    );
    // Only the stack search (through its maps) finds this C program's exit phase.
    agent.wait_for(
        HANG_AFTER + SLACK,
        "exit hang despite an odd mapping",
        |i| i.kind == Kind::ExitBlockedOnThreads && i.pids.contains(&Pid::from_raw(pid)),
    );
}

#[test]
fn a_file_system_that_stops_answering_does_not_stall_scans() {
    let agent = Agent::start();
    let mountpoint = tempfile::tempdir().expect("creating a mount point");
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private"])
        .arg(common::python())
        .arg(programs_dir().join("fuse_stall.py"))
        .arg(mountpoint.path());
    let attacker = Subject::spawn("fuse_stall.py", command);
    let pid = attacker.pid("pid");
    // Once its write is stuck, its stack search opens the file that its FUSE server no
    // longer answers for: that open is given up, and counted.
    let timeouts = poll_metric(&agent, SLOW_READS, HANG_AFTER + SLACK, |v| v >= 1.0);
    explain_finishes(pid);
    let (before, after) = scans_keep_completing(&agent, Duration::from_secs(4));
    eprintln!("FUSE stall: {timeouts} slow read(s) given up, scans {before} -> {after}");
    detection_still_works(&agent);
}

const SLOW_READS: &str = "exitwatch_scan_errors_total{reason=\"timeout\"}";

/// `exitwatch explain` searches the same stacks as the agent, without one.
fn explain_finishes(pid: i32) {
    let pid = pid.to_string();
    let explain = Command::new(env!("CARGO_BIN_EXE_exitwatch"))
        .args(["explain", &pid, "--hang-after", "1s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting exitwatch explain");
    let output = finish(explain, &format!("exitwatch explain {pid}"));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains(&pid), "explain {pid} said:\n{text}");
}

/// A new seed deadlock is found, and `/healthz` answers, while the attack goes on.
fn detection_still_works(agent: &Agent) {
    assert_eq!(
        agent.get("/healthz").as_deref().map(str::trim),
        Some("ok"),
        "/healthz during the attack"
    );
    let seed = Subject::python("seed_pipe_deadlock.py", &[]);
    let (parent, child) = (seed.pid("parent"), seed.pid("child"));
    agent.wait_for(HANG_AFTER + SLACK, "pipe deadlock during the attack", |i| {
        i.kind == Kind::PipeDeadlock
            && i.pids.contains(&Pid::from_raw(parent))
            && i.pids.contains(&Pid::from_raw(child))
    });
}

/// A copy of the fake interpreter in `dir`.
fn fake_interpreter(dir: &Path) -> PathBuf {
    let binary = dir.join("fake_interpreter");
    std::fs::copy(compile_c("fake_interpreter.c"), &binary)
        .unwrap_or_else(|e| panic!("copying the fake interpreter to {}: {e}", binary.display()));
    binary
}

/// The child's output once it has ended by itself, within 30 s.
fn finish(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("polling a child").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
        .wait_with_output()
        .expect("collecting a child's output")
}

fn run_to_end(child: Child, what: &str) {
    let status = finish(child, what).status;
    assert!(status.success(), "{what} failed: {status}");
}

fn poll_metric(agent: &Agent, series: &str, within: Duration, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let value = agent.metric(series);
        if done(value) {
            return value;
        }
        if Instant::now() > deadline {
            panic!("{series} is {value} after {within:?}:\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_log(agent: &Agent, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(6);
    while !agent.log().contains(line) {
        assert!(
            Instant::now() < deadline,
            "no log line {line:?} within 6 s:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const TARGETS: &str = "exitwatch_uprobe_targets";
const UNTRUSTED: &str = "exitwatch_uprobe_refusals_total{reason=\"untrusted_owner\"}";

#[test]
fn interpreters_a_user_could_have_written_get_no_uprobe() {
    let agent = Agent::start();
    let dir = attacker_dir();
    let build = tempfile::tempdir().expect("creating a build directory");
    let fake = fake_interpreter(build.path());
    let mut fakes = Vec::new();
    for n in 0..40 {
        let copy = dir.path().join(format!("python-fake-{n}"));
        std::fs::copy(&fake, &copy).expect("copying the fake interpreter");
        chown(&copy, Some(NOBODY), Some(NOBODY)).expect("giving the copy to nobody");
        fakes.push(copy);
    }
    let targets_before = agent.metric(TARGETS);
    let refused_before = agent.metric(UNTRUSTED);
    let fds_before = open_fds(agent.pid());

    // Each runs 600 ms, past both discovery passes (20 ms and 300 ms after exec).
    let running: Vec<Child> = fakes
        .iter()
        .map(|fake| {
            as_nobody(fake)
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .expect("starting a fake interpreter as nobody")
        })
        .collect();
    for (n, child) in running.into_iter().enumerate() {
        run_to_end(child, &format!("python-fake-{n}"));
    }
    let refused = poll_metric(&agent, UNTRUSTED, Duration::from_secs(10), |v| {
        v >= refused_before + 40.0
    });
    let targets = agent.metric(TARGETS);
    let fds = open_fds(agent.pid());
    eprintln!(
        "40 fake interpreters as nobody: targets {targets_before} -> {targets}, \
         untrusted_owner refusals {refused_before} -> {refused}, fds {fds_before} -> {fds}"
    );
    let log = agent.log();
    assert!(
        !log.contains("probe to /tmp"),
        "a user's file got a probe:\n{log}"
    );
    // Other programs on the host may come and go meanwhile; 40 targets (and their fds)
    // would not.
    assert!(
        targets < targets_before + 5.0,
        "{targets_before} -> {targets}:\n{log}"
    );
    assert!(fds < fds_before + 5, "fds {fds_before} -> {fds}");
}

#[test]
fn a_trusted_interpreter_is_attached_then_detached_when_unused() {
    let agent = Agent::start();
    let root_dir = tempfile::tempdir().expect("creating a root-owned directory");
    let fake = fake_interpreter(root_dir.path());
    let trusted = root_dir.path().join("python-trusted");
    std::fs::rename(&fake, &trusted).expect("naming the fake like an interpreter");
    std::fs::set_permissions(&trusted, std::fs::Permissions::from_mode(0o755))
        .expect("making the interpreter non-writable by others");
    let before = agent.metric(TARGETS);

    let child = Command::new(&trusted)
        .arg("3000")
        .stdin(Stdio::null())
        .spawn()
        .expect("starting the trusted fake interpreter");
    let name = trusted.display().to_string();
    wait_for_log(&agent, &format!("attached Py_FinalizeEx probe to {name}"));
    let attached = poll_metric(&agent, TARGETS, SLACK, |v| v > before);
    run_to_end(child, "python-trusted");
    wait_for_log(&agent, &format!("detached Py_FinalizeEx probe from {name}"));
    let detached = poll_metric(&agent, TARGETS, SLACK, |v| v < attached);
    eprintln!("uprobe targets: {before} -> {attached} -> {detached}");
}
