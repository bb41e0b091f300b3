//! An `exitwatch run` process: started with its log in a file, ready once it serves,
//! stopped with SIGTERM, killed when dropped.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{process, Error};

/// How often start-up is checked: the agent logs its address within a second or two.
const POLL: Duration = Duration::from_millis(50);

pub struct AgentProcess {
    child: Child,
    log: PathBuf,
    url: String,
}

impl AgentProcess {
    /// Spawns `command`, an `exitwatch run` that picks its own port (`--listen
    /// 127.0.0.1:0`), with its log written to `log`, and waits up to `within` until it has
    /// logged the address it bound and `serving(url)` holds.
    pub fn start(
        mut command: Command,
        log: &Path,
        within: Duration,
        mut serving: impl FnMut(&str) -> bool,
    ) -> Result<AgentProcess, Error> {
        let log_file = fs::File::create(log).map_err(Error::io(format!(
            "creating the agent log {}",
            log.display()
        )))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = command
            .spawn()
            .map_err(Error::io("starting the exitwatch binary"))?;
        let mut agent = AgentProcess {
            child,
            log: log.to_path_buf(),
            url: String::new(),
        };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let exited = agent
                .child
                .try_wait()
                .map_err(Error::io("polling the agent"))?;
            if let Some(status) = exited {
                let log = agent.log();
                return Err(Error::AgentExited { status, log });
            }
            if agent.url.is_empty() {
                agent.url = bound_url(&agent.log()).unwrap_or_default();
            } else if serving(&agent.url) {
                return Ok(agent);
            }
            thread::sleep(POLL);
        }
        let log = agent.log();
        Err(Error::AgentNotServing { within, log })
    }

    /// `http://127.0.0.1:PORT` (or https), as the agent logged it.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far (empty if it cannot be read).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit status once the agent has detached its probes and exited;
    /// killed if that takes longer than `within`.
    pub fn stop(&mut self, within: Duration) -> Result<ExitStatus, Error> {
        let stopped = process::stop(&mut self.child, libc::SIGTERM, within)
            .map_err(Error::io("stopping the agent"))?;
        stopped.ok_or_else(|| Error::AgentDidNotStop {
            within,
            log: self.log(),
        })
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The address the agent logged as bound: `serving http://127.0.0.1:PORT/` gives
/// `http://127.0.0.1:PORT`.
pub fn bound_url(log: &str) -> Option<String> {
    let start = log.find("serving http")? + "serving ".len();
    let url = &log[start..];
    let host = url.find("://")? + 3;
    let end = host + url[host..].find('/')?;
    Some(url[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::bound_url;

    #[test]
    fn the_bound_url_is_read_from_the_start_up_line() {
        let log = "2026-11-30T08:00:00.000Z INFO exitwatch 0.1.0 watching: hang-after 2s, \
                   scan every 500ms, 1 uprobe target(s), 0 wait(s) already in progress; \
                   serving https://127.0.0.1:40123/\n";
        assert_eq!(bound_url(log).as_deref(), Some("https://127.0.0.1:40123"));
        assert_eq!(bound_url("loading probes\n"), None);
    }
}
