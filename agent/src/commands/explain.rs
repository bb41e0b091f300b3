//! `exitwatch explain PID`: "why won't this process exit?" from `/proc` alone.
use std::{collections::HashMap, time::Duration};

use anyhow::{bail, Context, Result};
use exitwatch_common::BlockedWait;

use serde::Serialize;

use crate::{
    clock::monotonic_ns,
    graph::{analyze, Kind, Phase, Process, Snapshot},
    incidents::{describe as describe_process, IncidentProcess},
    pid::Pid,
    procfs::ProcFs,
    scan::{blocked_from_proc, collect, Fresh, KernelView, Options, ScanState, WaitChanges},
    stacks::Stacks,
    text::printable,
};

/// What `--json` prints: the process as an incident describes it (stacks included), and
/// the findings it is part of.
#[derive(Serialize)]
struct Explanation {
    process: IncidentProcess,
    findings: Vec<FindingJson>,
}

#[derive(Serialize)]
struct FindingJson {
    kind: Kind,
    pids: Vec<Pid>,
    exit_phase: Option<Phase>,
    summary: String,
}

pub fn print(pid: Pid, hang_after: Duration, json: bool) -> Result<()> {
    let procfs = ProcFs::default();
    procfs
        .stat(pid, pid)
        .with_context(|| format!("cannot inspect pid {pid}"))?;
    let now = monotonic_ns();
    let blocked = blocked_from_proc(&procfs, now);
    let records: HashMap<u32, BlockedWait> = blocked.iter().copied().collect();
    let lookup = |tid| records.get(&tid).copied();
    let kernel = KernelView {
        waits: &lookup,
        exiting: Vec::new(),
    };
    let mut state = ScanState::default();
    state.waits_changed(WaitChanges::All(blocked.clone()));
    let mut scan = collect(
        &procfs,
        &kernel,
        now,
        Options {
            hang_after_ns: hang_after.as_nanos() as u64,
            lookahead_ns: 0,
            cmdlines: true,
        },
        &[pid],
        Fresh::All,
        &mut state,
    );
    // Registers from /proc: no frame pointer, so some stacks stop early (`complete`
    // false); the running agent has the probe's.
    let mut stacks = Stacks::default();
    stacks.attach_waiting(&procfs, &blocked, &mut scan.snapshot, pid);
    if !scan.snapshot.processes.contains_key(&pid) {
        match scan.unreadable.get(&pid) {
            Some(error) if error.is_permission() => bail!(
                "cannot inspect pid {pid}: {error} (reading another user's threads needs root \
                 or CAP_SYS_PTRACE)"
            ),
            Some(error) if !error.is_gone() => bail!("cannot inspect pid {pid}: {error}"),
            _ => bail!("pid {pid} exited while being inspected"),
        }
    }
    let mut findings: Vec<_> = analyze(&scan.snapshot)
        .into_iter()
        .filter(|f| f.pids.contains(&pid) || f.behind.contains(&pid))
        .collect();
    // The other processes of its findings (a deadlocked child).
    stacks.attach(
        &procfs,
        &blocked,
        &mut scan.snapshot,
        &mut findings,
        |_, _| {},
    );
    // Capturing stacks takes nothing out of the snapshot.
    let process = scan
        .snapshot
        .processes
        .get(&pid)
        .with_context(|| format!("pid {pid} left the snapshot"))?;
    if json {
        let explanation = Explanation {
            process: describe_process(&scan.snapshot, process),
            findings: findings
                .into_iter()
                .map(|f| FindingJson {
                    kind: f.kind,
                    exit_phase: f.phase,
                    pids: f.pids,
                    summary: f.summary,
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&explanation)?);
        return Ok(());
    }
    print!("{}", describe(&scan.snapshot, process));
    if findings.is_empty() {
        println!(
            "\nNo deadlock or exit hang found. `explain` reads /proc only: it sees C programs \
             stuck inside exit() and asyncio.run() stuck shutting down its executor, but not \
             interpreters in Py_FinalizeEx or delivered signals, which need the running agent \
             (`exitwatch run`)."
        );
    }
    for finding in findings {
        println!(
            "\n{}: {}",
            finding.kind.as_str(),
            printable(&finding.summary)
        );
    }
    Ok(())
}

fn describe(snapshot: &Snapshot, process: &Process) -> String {
    let mut out = format!(
        "{} (pid {}, parent {}): {} thread(s)\n",
        printable(&process.comm),
        process.pid,
        process.ppid,
        process.threads.len()
    );
    for thread in &process.threads {
        let what = match &thread.wait {
            Some(wait) => {
                let seconds = snapshot.now_ns.saturating_sub(thread.since_ns) as f64 / 1e9;
                format!("{wait} for ~{seconds:.0} s")
            }
            None => format!("state {}, not in a wait exitwatch models", thread.state),
        };
        let wchan = if thread.wchan.is_empty() {
            String::new()
        } else {
            format!(" [{}]", thread.wchan)
        };
        let name = thread
            .python_name()
            .map(|name| format!(" (Python thread \"{}\")", printable(name)))
            .unwrap_or_default();
        out.push_str(&format!("  tid {}{name}: {what}{wchan}\n", thread.tid));
        if let Some(stack) = &thread.stack {
            for (depth, frame) in stack.frames.iter().enumerate() {
                out.push_str(&format!(
                    "      #{depth:<2} {}\n",
                    printable(&frame.to_string())
                ));
            }
            if !stack.complete {
                out.push_str("      (cut: the rest could not be unwound)\n");
            }
        }
    }
    out
}
