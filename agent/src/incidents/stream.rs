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
