//! The agent's status page (`GET /`) as a browser renders it: headless Chromium (Debian
//! package `chromium`) loads the page of a real agent while the seed pipe deadlock hangs.
//! Needs root (the agent loads BPF programs); never skips.
//!
//! Set `EXITWATCH_SCREENSHOT` to a file path to keep the screenshot for a human to look at.
mod common;

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Agent, Subject, HANG_AFTER};
use exitwatch::pid::Pid;
use exitwatch::{graph::Kind, incidents::State};

const CHROMIUM: &str = "/usr/bin/chromium";
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs headless Chromium with a fresh profile; returns its stdout.
fn chromium(profile: &Path, args: &[String]) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install the Debian package `chromium` (`cargo xtask test` \
         does); this test does not skip"
    );
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {CHROMIUM}: {e}"));
    // Drain both pipes while waiting so a chatty browser cannot block on them.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium {args:?} did not finish within {BROWSER_TIMEOUT:?}:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    assert!(
        status.success(),
        "chromium {args:?} failed ({status}):\n{stderr}"
    );
    stdout
}

/// Whether `text` holds `number` with no digit right before or after it.
fn contains_number(text: &str, number: i32) -> bool {
    let needle = number.to_string();
    text.match_indices(&needle).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// Text as the DOM serialiser writes it inside an element.
fn as_dom_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

/// Every run of digits replaced by `#`.
fn without_numbers(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('#') {
            out.push('#');
        }
    }
    out
}

#[test]
fn status_page_shows_the_active_deadlock_in_a_browser() {
    let agent = Agent::start();
    let subject = Subject::python("seed_pipe_deadlock.py", &[]);
    let (parent, child) = (subject.pid("parent"), subject.pid("child"));
    let incident = agent.wait_for(
        HANG_AFTER + Duration::from_secs(5),
        "of kind pipe_deadlock",
        |i| {
            i.kind == Kind::PipeDeadlock
                && i.state == State::Active
                && i.pids.contains(&Pid::from_raw(parent))
                && i.pids.contains(&Pid::from_raw(child))
        },
    );
    let (id, summary) = (incident.id, incident.summary);

    let profile = tempfile::tempdir().expect("creating the browser profile directory");
    let url = format!("{}/", agent.url);
    let dom = chromium(profile.path(), &["--dump-dom".to_string(), url.clone()]);
    assert!(
        dom.contains("<h1>exitwatch · "),
        "not the status page:\n{dom}"
    );

    // The incident's own row: its id, kind, both pids and its summary.
    let row = dom
        .split("<tr")
        .skip(1)
        .find(|row| row.contains(&format!("<td>{id}</td>")))
        .unwrap_or_else(|| panic!("no table row for incident {id}:\n{dom}"));
    assert!(row.contains(">pipe_deadlock</td>"), "{row}");
    for pid in [parent, child] {
        assert!(contains_number(row, pid), "pid {pid} not in the row: {row}");
    }
    assert!(row.contains("active"), "{row}");
    // The summary names how long things have waited, which grows between the two reads.
    assert!(
        without_numbers(row).contains(&without_numbers(&as_dom_text(&summary))),
        "summary {summary:?} not in the row: {row}"
    );
    let active = dom
        .split("<h2>Recent incidents")
        .next()
        .expect("split yields at least one part");
    assert!(
        active.contains(&format!("<td>{id}</td>")),
        "incident {id} is not under Active incidents:\n{dom}"
    );

    // A screenshot a person can judge; here only checked to be a real PNG.
    let shots = tempfile::tempdir().expect("creating the screenshot directory");
    let png: PathBuf = shots.path().join("page.png");
    chromium(
        profile.path(),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,800".to_string(),
            "--hide-scrollbars".to_string(),
            url,
        ],
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot: {e}"));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    assert!(
        bytes.len() > 10_000,
        "the screenshot is suspiciously small ({} bytes): a blank page?",
        bytes.len()
    );
    if let Some(keep) = std::env::var_os("EXITWATCH_SCREENSHOT") {
        std::fs::copy(&png, &keep)
            .unwrap_or_else(|e| panic!("copying the screenshot to {keep:?}: {e}"));
        eprintln!("screenshot kept at {}", Path::new(&keep).display());
    }
    drop(subject);
}

#[test]
fn contains_number_respects_digit_boundaries() {
    assert!(contains_number("<code>python3 (1234)</code>", 1234));
    assert!(!contains_number("<code>python3 (12345)</code>", 1234));
    assert!(!contains_number("91234", 1234));
    assert_eq!(without_numbers("pid 17210 for 3 s"), "pid # for # s");
}
