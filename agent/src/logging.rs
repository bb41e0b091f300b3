//! The agent's own log: one line per record, as text for people or JSON for collectors.
use std::io::Write;

use clap::ValueEnum;
use log::{LevelFilter, Log, Metadata, Record};

use crate::text::printable;

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

struct Logger {
    format: Format,
    level: LevelFilter,
}

/// Installs the logger; `EXITWATCH_LOG` (error, warn, info, debug, trace) sets the level.
pub fn init(format: Format) {
    let level = std::env::var("EXITWATCH_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::Info);
    let logger = Box::leak(Box::new(Logger { format, level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // Libraries (aya's loader is chatty at debug) stay at info unless asked for trace.
        let own = metadata.target().starts_with("exitwatch") || self.level == LevelFilter::Trace;
        metadata.level() <= self.level && (own || metadata.level() <= log::Level::Info)
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let line = match self.format {
            // Messages quote comms and command lines, which other users choose.
            Format::Text => format!(
                "{ts} {:<5} {}\n",
                record.level(),
                printable(&record.args().to_string())
            ),
            Format::Json => format!(
                "{}\n",
                serde_json::json!({
                    "ts": ts.to_string(),
                    "level": record.level().as_str().to_ascii_lowercase(),
                    "target": record.target(),
                    "msg": record.args().to_string(),
                })
            ),
        };
        // A closed stderr must not take the agent down.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}
