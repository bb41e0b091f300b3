//! The command line as a user meets it: bad input, missing privileges, a hang that began
//! before the agent, `explain` without an agent, and `incidents` against a live one.
mod common;

use std::{path::Path, process::Output, time::Duration};

use common::{as_nobody, compile, exitwatch, pipe_inode, require_root, Agent, Subject, HANG_AFTER};
use exitwatch::incidents::IncidentList;
use exitwatch::pid::Pid;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_flags_are_named() {
    let cases: [(&[&str], &str); 5] = [
        (&["run", "--hang-after", "soon"], "--hang-after"),
        (&["run", "--hang-after", "0s"], "greater than zero"),
        (&["run", "--scan-interval", "1ns"], "at least 100ms"),
        (&["run", "--listen", "localhost"], "ADDRESS:PORT"),
        (&["run", "--log-format", "xml"], "--log-format"),
    ];
    for (args, expected) in cases {
        let output = exitwatch(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn a_bad_value_from_the_environment_names_its_variable() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_exitwatch"))
        .arg("run")
        .env("EXITWATCH_HANG_AFTER", "bogus")
        .output()
        .expect("running exitwatch");
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(message.contains("'bogus' for '--hang-after"), "{message}");
    assert!(message.contains("EXITWATCH_HANG_AFTER"), "{message}");
}

#[test]
fn an_event_file_that_cannot_be_opened_stops_start_up() {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let path = dir.path().join("missing/events.jsonl");
    let path = path.display().to_string();
    let output = exitwatch(&["run", "--listen", "127.0.0.1:0", "--events", &path]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains(&format!("opening the event file {path}")),
        "{message}"
    );
}

#[test]
fn version_shows_the_revision() {
    let output = exitwatch(&["--version"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let version = String::from_utf8_lossy(&output.stdout);
    let revision = version
        .split("(revision ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("no revision in {version:?}"));
    // Built from a git checkout (as the tests are), the revision is its commit.
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.git")
        .exists();
    let commit = revision.len() == 12 && revision.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(commit || (!checkout && !revision.is_empty()), "{version:?}");
}

#[test]
fn without_privileges_the_agent_says_which_are_missing() {
    require_root();
    let output = as_nobody(Path::new(env!("CARGO_BIN_EXE_exitwatch")))
        .args(["run", "--listen", "127.0.0.1:0"])
        .output()
        .expect("running setpriv (util-linux)");
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("missing privileges"), "{message}");
    assert!(message.contains("CAP_BPF"), "{message}");
}

#[test]
fn a_busy_listen_address_is_an_error_not_a_silent_agent() {
    let agent = Agent::start();
    let address = agent.url.trim_start_matches("http://").to_string();
    let output = exitwatch(&["run", "--listen", &address]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot listen on"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_deadlock_that_began_before_the_agent_is_found_in_the_first_scans() {
    require_root();
    let subject = Subject::python("seed_pipe_deadlock.py", &[]);
    std::thread::sleep(HANG_AFTER + Duration::from_secs(1));
    let agent = Agent::start();
    let incident = agent.wait_for_pipe_deadlock(Duration::from_secs(2), &subject);
    assert_eq!(incident.pipes, [pipe_inode(subject.pid("child"), 1)]);
}

#[test]
fn explain_needs_no_agent() {
    require_root();
    let subject = Subject::python("seed_pipe_deadlock.py", &[]);
    let (parent, child) = (subject.pid("parent"), subject.pid("child"));
    std::thread::sleep(Duration::from_millis(1500));
    let output = exitwatch(&["explain", &parent.to_string(), "--hang-after", "1s"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!("in wait() for child {child}")),
        "{text}"
    );
    assert!(text.contains("pipe_deadlock"), "{text}");
    assert!(text.contains(&pipe_inode(child, 1).to_string()), "{text}");

    let gone = exitwatch(&["explain", "999999999"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(stderr(&gone).contains("is gone"), "{}", stderr(&gone));
}

#[test]
fn explain_names_the_orphan_that_holds_a_readers_pipe() {
    require_root();
    let subject = Subject::python("orphan_holds_pipe.py", &[]);
    let (reader, orphan) = (subject.pid("reader"), subject.pid("orphan"));
    subject.wait_in_syscall("reader", libc::SYS_poll as u32);
    std::thread::sleep(Duration::from_millis(1500));
    let output = exitwatch(&["explain", &reader.to_string(), "--hang-after", "1s"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("pipe_held_by_orphan"), "{text}");
    assert!(
        text.contains(&format!("sleep (pid {orphan}) is no child of")),
        "{text}"
    );
}

#[test]
fn explain_names_a_permission_error_as_such() {
    require_root();
    let output = as_nobody(Path::new(env!("CARGO_BIN_EXE_exitwatch")))
        .args(["explain", "1"])
        .output()
        .expect("running setpriv (util-linux)");
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("Permission denied"), "{message}");
    assert!(message.contains("CAP_SYS_PTRACE"), "{message}");
    assert!(!message.contains("exited"), "{message}");
}

#[test]
fn incidents_command_prints_a_table_and_json() {
    let agent = Agent::start();
    let subject = Subject::python("seed_pipe_deadlock.py", &[]);
    let parent = subject.pid("parent");
    agent.wait_for(HANG_AFTER + Duration::from_secs(3), "pipe_deadlock", |i| {
        i.pids.contains(&Pid::from_raw(parent))
    });
    let table = exitwatch(&["incidents", "--agent", &agent.url]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{}", stderr(&table));
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["ID", "KIND", "STATE", "PIDS", "STARTED", "SUMMARY"],
        "{text}"
    );
    assert!(
        text.contains("pipe_deadlock") && text.contains(&parent.to_string()),
        "{text}"
    );
    let json = exitwatch(&["incidents", "--agent", &agent.url, "--json"]);
    let parsed: IncidentList = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "`incidents --json` is no incident list ({e}): {}",
            String::from_utf8_lossy(&json.stdout)
        )
    });
    assert!(!parsed.incidents.is_empty());

    let nobody = exitwatch(&["incidents", "--agent", "http://127.0.0.1:9"]);
    assert_eq!(nobody.status.code(), Some(1));
    assert!(
        stderr(&nobody).contains("is `exitwatch run` running?"),
        "{}",
        stderr(&nobody)
    );
}

#[test]
fn explain_finds_a_c_program_stuck_inside_exit() {
    require_root();
    let subject = Subject::c("atexit_join.c", &[]);
    let pid = subject.pid("pid");
    std::thread::sleep(Duration::from_millis(1500));
    let output = exitwatch(&["explain", &pid.to_string(), "--hang-after", "1s"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("exit_blocked_on_threads"), "{text}");
    assert!(text.contains("libc_exit"), "{text}");
    // The stacks, innermost frame first: the handler under exit().
    let handler = text
        .find(" join_worker ")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(text[handler..].contains(" exit "), "{text}");
}

#[test]
fn explain_json_gives_each_waiting_thread_its_stack() {
    require_root();
    let binary = compile("atexit_join.c", "-g", &["cc", "-O1", "-g", "-pthread"]);
    let subject = Subject::spawn("atexit_join.c", std::process::Command::new(binary));
    let pid = subject.pid("pid");
    std::thread::sleep(Duration::from_millis(1500));
    let output = exitwatch(&["explain", &pid.to_string(), "--hang-after", "1s", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    let threads = json["process"]["threads"].as_array().expect("threads");
    assert_eq!(threads.len(), 2, "{json:#}");
    let handler = threads
        .iter()
        .flat_map(|t| t["stack"]["frames"].as_array().into_iter().flatten())
        .find(|f| f["function"] == "join_worker")
        .unwrap_or_else(|| panic!("no join_worker frame: {json:#}"));
    assert_eq!(handler["file"], "atexit_join.c", "{handler:#}");
    assert_eq!(handler["kind"], "native", "{handler:#}");
    assert_eq!(
        json["findings"][0]["kind"], "exit_blocked_on_threads",
        "{json:#}"
    );
    let summary = json["findings"][0]["summary"].as_str().expect("a summary");
    assert!(
        summary.contains(&format!("(pid {pid}) in `join_worker` at atexit_join.c:")),
        "{summary}"
    );
}
