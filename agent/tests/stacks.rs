//! Stacks of stuck threads, captured by the real agent from real hanging programs: the
//! frames under `exit()` of C and C++ exit hangs, with names (and lines, from DWARF)
//! where the binary has them and `module+offset` where it is stripped.
mod common;

use std::{process::Command, time::Duration};

use common::{compile, process_of, Agent, Subject};
use exitwatch::{
    graph::Kind,
    incidents::{Incident, IncidentThread, State},
};

/// How long an incident may take to appear: generous, because the machines that run
/// these tests are often busy with other builds (this is a limit, not a measurement).
const WITHIN: Duration = Duration::from_secs(60);

/// The exit hang of the program built by `command` from `source`, once its stuck main
/// thread has a stack.
fn exit_hang(source: &str, variant: &str, command: &[&str]) -> (Agent, Subject, Incident) {
    let agent = Agent::start();
    let binary = compile(source, variant, command);
    let subject = Subject::spawn(source, Command::new(binary));
    let pid = subject.pid("pid");
    let incident = agent.wait_for(WITHIN, "exit hang with a stack", |i| {
        i.kind == Kind::ExitBlockedOnThreads
            && i.state == State::Active
            && i.pids == [pid]
            && main_thread(i, pid).stack.is_some()
    });
    (agent, subject, incident)
}

fn main_thread(incident: &Incident, pid: i32) -> &IncidentThread {
    process_of(incident, pid)
        .threads
        .iter()
        .find(|t| t.tid == pid)
        .unwrap_or_else(|| panic!("main thread of {pid} not described: {incident:#?}"))
}

/// The frames' function names, innermost first (`?` where there is none).
fn functions(thread: &IncidentThread) -> Vec<&str> {
    let stack = thread.stack.as_ref().expect("a stack");
    stack
        .frames
        .iter()
        .map(|f| f.function.as_deref().unwrap_or("?"))
        .collect()
}

/// The position of the first frame whose name contains every one of `parts`.
fn position(names: &[&str], parts: &[&str]) -> usize {
    names
        .iter()
        .position(|n| parts.iter().all(|part| n.contains(part)))
        .unwrap_or_else(|| panic!("no frame named with {parts:?} in {names:?}"))
}

/// `pthread_join`, or the internal function it hands over to (glibc's
/// `__pthread_clockjoin_ex`), named from root's debug file for libc.
const PTHREAD_JOIN: &[&str] = &["pthread_", "join"];

#[test]
fn c_atexit_handler_is_named_under_exit_with_its_line() {
    let (agent, subject, incident) =
        exit_hang("atexit_join.c", "-g", &["cc", "-O1", "-g", "-pthread"]);
    let pid = subject.pid("pid");
    let thread = main_thread(&incident, pid);
    let names = functions(thread);
    let join = position(&names, PTHREAD_JOIN);
    let handler = position(&names, &["join_worker"]);
    let exit = position(&names, &["exit"]);
    assert!(join < handler && handler < exit, "{names:?}");
    let frame = &thread.stack.as_ref().expect("a stack").frames[handler];
    assert_eq!(frame.file.as_deref(), Some("atexit_join.c"), "{frame:?}");
    assert!(frame.line.is_some(), "{frame:?}");
    assert_eq!(frame.module.as_deref(), Some("atexit_join-g"), "{frame:?}");
    let summary = &incident.summary;
    assert!(
        summary.contains(&format!("(pid {pid}) in `join_worker` at atexit_join.c:")),
        "{summary}"
    );
    assert!(summary.contains("atexit handler"), "{summary}");
    assert!(!summary.contains("daemon=True"), "{summary}");
    assert!(agent.metric(r#"exitwatch_stack_captures_total{result="ok"}"#) >= 1.0);
    assert!(agent.metric("exitwatch_stack_capture_duration_seconds_count") >= 1.0);
}

#[test]
fn cpp_static_destructor_is_named_demangled() {
    let (_agent, subject, incident) =
        exit_hang("static_dtor_join.cc", "", &["g++", "-O1", "-g", "-pthread"]);
    let names = functions(main_thread(&incident, subject.pid("pid")));
    let destructor = position(&names, &["(anonymous namespace)::Pool::~Pool"]);
    assert!(destructor < position(&names, &["exit"]), "{names:?}");
    let summary = &incident.summary;
    assert!(
        summary.contains("static destructor `(anonymous namespace)::Pool::~Pool"),
        "{summary}"
    );
    assert!(!summary.contains("daemon=True"), "{summary}");
}

#[test]
fn stripped_binary_gives_module_and_offset_frames() {
    let (_agent, subject, incident) = exit_hang(
        "atexit_join.c",
        "-stripped",
        &["cc", "-O1", "-pthread", "-s"],
    );
    let pid = subject.pid("pid");
    let thread = main_thread(&incident, pid);
    let stack = thread.stack.as_ref().expect("a stack");
    let names = functions(thread);
    // libc keeps its dynamic symbols; the program's own frames have only an offset.
    assert!(
        position(&names, PTHREAD_JOIN) < position(&names, &["exit"]),
        "{names:?}"
    );
    let own = stack
        .frames
        .iter()
        .find(|f| f.module.as_deref() == Some("atexit_join-stripped"))
        .unwrap_or_else(|| panic!("no frame in the program: {stack:?}"));
    assert_eq!(own.function, None, "{own:?}");
    assert!(own.offset > 0, "{own:?}");
    let place = format!("(pid {pid}) in `atexit_join-stripped+{:#x}`", own.offset);
    assert!(incident.summary.contains(&place), "{}", incident.summary);
}

/// The shared libraries `binary` loads, as `ldd` (run on our own test binary) lists them.
fn libraries_of(binary: &std::path::Path) -> Vec<std::path::PathBuf> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .expect("running ldd");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| path.into())
        })
        .collect()
}

#[test]
fn a_program_in_a_container_root_on_overlayfs_is_named() {
    let agent = Agent::start();
    let binary = compile("atexit_join.c", "-g", &["cc", "-O1", "-g", "-pthread"]);
    // A container's root: an overlay whose lower layer holds the program and its own
    // copies of libc and the loader, entered with chroot in a mount namespace of its
    // own, so no file it maps has a path the agent could open from its own root.
    let layers = std::env::temp_dir().join(format!("exitwatch-overlay-{}", std::process::id()));
    let lower = layers.join("lower");
    for library in libraries_of(&binary) {
        let copy = lower.join(library.strip_prefix("/").expect("an absolute path"));
        std::fs::create_dir_all(copy.parent().expect("a directory")).expect("creating lower");
        std::fs::copy(&library, &copy).expect("copying a library into the lower layer");
    }
    std::fs::copy(&binary, lower.join("atexit_join")).expect("copying the program");
    for dir in ["upper", "work", "merged"] {
        std::fs::create_dir_all(layers.join(dir)).expect("creating the overlay's directories");
    }
    let shell = format!(
        "mount -t overlay exitwatch-test -o lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work \
         {0}/merged && exec chroot {0}/merged /atexit_join",
        layers.display()
    );
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", &shell]);
    let subject = Subject::spawn("atexit_join in an overlay root", command);
    let pid = subject.pid("pid");
    let incident = agent.wait_for(WITHIN, "exit hang with a stack", |i| {
        i.kind == Kind::ExitBlockedOnThreads
            && i.pids == [pid]
            && main_thread(i, pid).stack.is_some()
    });
    let names = functions(main_thread(&incident, pid));
    assert!(
        position(&names, PTHREAD_JOIN) < position(&names, &["join_worker"]),
        "{names:?}"
    );
    assert!(
        incident
            .summary
            .contains("in `join_worker` at atexit_join.c:"),
        "{}",
        incident.summary
    );
    drop(subject);
    std::fs::remove_dir_all(&layers).ok();
}
