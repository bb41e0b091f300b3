//! `exitwatch explain PID`: "why won't this process exit?" from `/proc` alone.
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{
    clock::monotonic_ns,
    graph::{analyze, Process, Snapshot},
    procfs::ProcFs,
    scan::{blocked_from_proc, collect, Fresh, KernelView, Options, ScanState},
    text::printable,
};

pub fn print(pid: i32, hang_after: Duration) -> Result<()> {
    let procfs = ProcFs::default();
    procfs
        .stat(pid, pid)
        .with_context(|| format!("cannot inspect pid {pid}"))?;
    let now = monotonic_ns();
    let kernel = KernelView {
        blocked: blocked_from_proc(&procfs, now),
        exiting: Vec::new(),
    };
    let scan = collect(
        &procfs,
        &kernel,
        now,
        Options {
            hang_after_ns: hang_after.as_nanos() as u64,
            cmdlines: true,
        },
        &[pid],
        Fresh::All,
        &mut ScanState::default(),
    );
    let Some(process) = scan.snapshot.processes.get(&pid) else {
        match scan.unreadable.get(&pid) {
            Some(error) if error.is_permission() => bail!(
                "cannot inspect pid {pid}: {error} (reading another user's threads needs root \
                 or CAP_SYS_PTRACE)"
            ),
            Some(error) if !error.is_gone() => bail!("cannot inspect pid {pid}: {error}"),
            _ => bail!("pid {pid} exited while being inspected"),
        }
    };
    print!("{}", describe(&scan.snapshot, process));
    let findings: Vec<_> = analyze(&scan.snapshot)
        .into_iter()
        .filter(|f| f.pids.contains(&pid) || f.behind.contains(&pid))
        .collect();
    if findings.is_empty() {
        println!(
            "\nNo deadlock or exit hang found. `explain` reads /proc only: it sees C programs \
             stuck inside exit() but not interpreters in Py_FinalizeEx or delivered signals, \
             which need the running agent (`exitwatch run`)."
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
        out.push_str(&format!("  tid {}: {what}{wchan}\n", thread.tid));
    }
    out
}
