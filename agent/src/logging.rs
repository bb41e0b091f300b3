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
    /// stderr is connected to journald: text lines start with their syslog priority.
    journald: bool,
}

/// Installs the logger; `EXITWATCH_LOG` (error, warn, info, debug, trace) sets the level.
pub fn init(format: Format) {
    let level = std::env::var("EXITWATCH_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::Info);
    let logger = Box::leak(Box::new(Logger {
        format,
        level,
        journald: stderr_is_journal(),
    }));
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
                "{}{ts} {:<5} {}\n",
                if self.journald {
                    priority(record.level())
                } else {
                    ""
                },
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

/// The `<N>` prefix journald reads as a line's priority (sd-daemon(3)).
fn priority(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "<3>",
        log::Level::Warn => "<4>",
        log::Level::Info => "<6>",
        log::Level::Debug | log::Level::Trace => "<7>",
    }
}

/// systemd sets `JOURNAL_STREAM` to the device and inode of the stream it connected;
/// the variable is inherited by children whose stderr goes elsewhere, so it counts only
/// if stderr is that very stream.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    let stream = std::env::var("JOURNAL_STREAM").ok();
    stream.is_some_and(|stream| is_stream(&stream, std::io::stderr().as_fd()))
}

/// Whether `fd` is the file `stream` (`DEVICE:INODE`) names.
fn is_stream(stream: &str, fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((device, inode)) = stream.split_once(':').and_then(|(device, inode)| {
        Some((device.parse::<u64>().ok()?, inode.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    let Ok(meta) = fd
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata())
    else {
        return false;
    };
    meta.dev() == device && meta.ino() == inode
}

#[cfg(test)]
mod tests {
    use std::os::{fd::AsFd, unix::fs::MetadataExt};

    use super::*;

    #[test]
    fn journal_stream_must_be_the_very_file() -> std::io::Result<()> {
        let file = tempfile::tempfile()?;
        let meta = file.metadata()?;
        let own = format!("{}:{}", meta.dev(), meta.ino());
        assert!(is_stream(&own, file.as_fd()));
        let other = format!("{}:{}", meta.dev(), meta.ino() + 1);
        assert!(!is_stream(&other, file.as_fd()));
        assert!(!is_stream("garbage", file.as_fd()));
        assert_eq!(priority(log::Level::Warn), "<4>");
        Ok(())
    }
}
