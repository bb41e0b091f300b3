//! Incidents as events, for log pipelines (Loki, Vector, Fluent Bit, journald): one JSON
//! line per incident opened, changed and resolved, with the whole incident. A thread of
//! its own writes them, so a slow reader of the pipe never holds up a scan: events it is
//! behind on wait in a queue bounded in bytes, and further ones are dropped and counted.
use std::{
    fs::OpenOptions,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread,
};

use prometheus::IntCounter;
use serde::Serialize;

use super::{store::Changes, Incident};

/// Events waiting for the writer, in bytes of JSON: a few hundred big incidents.
const QUEUE_BYTES: usize = 8 << 20;

#[derive(Serialize)]
struct Event<'a> {
    /// `opened`, `changed` or `resolved`.
    event: &'static str,
    #[serde(flatten)]
    incident: &'a Incident,
}

/// What happens to events that are not written, for the agent's metrics.
#[derive(Clone)]
pub struct EventCounters {
    pub dropped: IntCounter,
    pub write_errors: IntCounter,
}

pub struct EventStream {
    sender: Option<mpsc::Sender<String>>,
    queued: Arc<AtomicUsize>,
    counters: EventCounters,
}

impl EventStream {
    /// Events to `path` (appended; `-` is standard output), or nowhere.
    pub fn open(path: Option<&Path>, counters: EventCounters) -> io::Result<Self> {
        let mut stream = Self {
            sender: None,
            queued: Arc::default(),
            counters,
        };
        let Some(path) = path else {
            return Ok(stream);
        };
        let out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(io::stdout())
        } else {
            // Events carry command lines (redacted, but still other users' business).
            Box::new(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(path)?,
            )
        };
        let (sender, receiver) = mpsc::channel();
        let queued = stream.queued.clone();
        let write_errors = stream.counters.write_errors.clone();
        thread::Builder::new()
            .name("incident-events".into())
            .spawn(move || write_lines(out, &receiver, &queued, &write_errors))?;
        stream.sender = Some(sender);
        Ok(stream)
    }

    /// Queues one event per incident opened, changed or resolved in a scan.
    pub fn publish(&self, changes: &Changes) {
        let Some(sender) = &self.sender else {
            return;
        };
        let events = (changes.opened.iter().map(|i| ("opened", i)))
            .chain(changes.changed.iter().map(|i| ("changed", i)))
            .chain(changes.resolved.iter().map(|(i, _)| ("resolved", i)));
        for (event, incident) in events {
            let Ok(mut line) = serde_json::to_string(&Event { event, incident }) else {
                self.counters.dropped.inc();
                continue;
            };
            line.push('\n');
            let queued = self.queued.fetch_add(line.len(), Ordering::Relaxed);
            if queued + line.len() > QUEUE_BYTES {
                self.queued.fetch_sub(line.len(), Ordering::Relaxed);
                self.counters.dropped.inc();
                continue;
            }
            let bytes = line.len();
            if sender.send(line).is_err() {
                self.queued.fetch_sub(bytes, Ordering::Relaxed);
                self.counters.dropped.inc();
            }
        }
    }
}

/// Writes each line whole and flushes it, so a reader never sees half an event. Errors
/// are counted, and logged when writing starts failing and when it works again.
fn write_lines(
    mut out: Box<dyn Write + Send>,
    lines: &mpsc::Receiver<String>,
    queued: &AtomicUsize,
    write_errors: &IntCounter,
) {
    let mut failing = false;
    for line in lines {
        queued.fetch_sub(line.len(), Ordering::Relaxed);
        match out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) if failing => {
                failing = false;
                log::info!("writing incident events works again");
            }
            Ok(()) => {}
            Err(error) => {
                write_errors.inc();
                if !failing {
                    failing = true;
                    log::warn!("cannot write incident events: {error} (counting further errors)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::fd::AsRawFd,
        time::{Duration, Instant},
    };

    use super::*;

    fn counters() -> EventCounters {
        let counter = |name: &str| IntCounter::new(name, "test").expect("a valid counter");
        EventCounters {
            dropped: counter("dropped"),
            write_errors: counter("write_errors"),
        }
    }

    /// An incident whose summary is `summary_bytes` long.
    fn incident(id: u64, summary_bytes: usize) -> Incident {
        serde_json::from_value(serde_json::json!({
            "id": id, "kind": "pipe_deadlock", "state": "active", "pids": [1, 2],
            "blocked_behind": [], "processes": [], "pipes": [], "thread_spawns": null,
            "thread_spawns_per_second": null, "summary": "x".repeat(summary_bytes),
            "started_at": "2026-11-30T08:00:00.000Z", "detected_at": "2026-11-30T08:00:02.000Z",
            "resolved_at": null, "ended": null
        }))
        .expect("a valid incident")
    }

    #[test]
    fn each_change_is_one_json_line_with_its_event() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("events.jsonl");
        let stream = EventStream::open(Some(&path), counters())?;
        let changes = Changes {
            opened: vec![incident(7, 10)],
            changed: vec![incident(8, 10)],
            resolved: vec![(incident(9, 10), 3.0)],
            untracked: 0,
        };
        stream.publish(&changes);
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&path)?;
            if text.lines().count() == 3 || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let events: Vec<(String, u64)> = text
            .lines()
            .map(|line| {
                let event: serde_json::Value = serde_json::from_str(line).expect("JSON lines");
                let id = event["id"].as_u64().expect("the incident's id");
                (event["event"].as_str().unwrap_or_default().to_string(), id)
            })
            .collect();
        let expected = [("opened", 7), ("changed", 8), ("resolved", 9)];
        assert_eq!(events, expected.map(|(e, id)| (e.to_string(), id)));
        Ok(())
    }

    #[test]
    fn a_reader_that_never_reads_costs_drops_not_a_stuck_scan() -> io::Result<()> {
        let (reader, writer) = std::io::pipe()?;
        let path = format!("/proc/self/fd/{}", writer.as_raw_fd());
        let counters = counters();
        let stream = EventStream::open(Some(Path::new(&path)), counters.clone())?;
        let changes = Changes {
            opened: vec![incident(1, 64 * 1024)],
            ..Changes::default()
        };
        // The pipe holds 64 KiB and the queue 8 MiB: well before this many, publishing
        // must have started to drop rather than wait.
        for _ in 0..2 * QUEUE_BYTES / (64 * 1024) {
            stream.publish(&changes);
        }
        assert!(counters.dropped.get() > 0);
        assert!(stream.queued.load(Ordering::Relaxed) <= QUEUE_BYTES);
        drop(reader);
        Ok(())
    }
}
