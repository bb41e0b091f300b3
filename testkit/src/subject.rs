//! A program under test that hangs (or does not): it prints `READY key=pid ...` on stderr
//! once its shape is set up, and every pid it names is killed when it drops.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use crate::{process, Error};

pub struct Subject {
    child: Child,
    pids: BTreeMap<String, i32>,
    name: String,
}

impl Subject {
    /// Spawns `command` and waits up to `within` for its READY line.
    pub fn spawn(name: &str, mut command: Command, within: Duration) -> Result<Subject, Error> {
        command
            // Unbuffered output would change how the programs fill their pipes.
            .env_remove("PYTHONUNBUFFERED")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(Error::io(format!("starting {name}")))?;
        let (sender, receiver) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.starts_with("READY") {
                        let _ = sender.send(line);
                    }
                }
            });
        }
        let Ok(ready) = receiver.recv_timeout(within) else {
            let _ = child.kill();
            let _ = child.wait();
            let name = name.to_string();
            return Err(Error::NotReady { name, within });
        };
        let pids = ready
            .split_whitespace()
            .skip(1)
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                Some((key.to_string(), value.parse().ok()?))
            })
            .collect();
        Ok(Subject {
            child,
            pids,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every pid of the READY line, by its key.
    pub fn pids(&self) -> &BTreeMap<String, i32> {
        &self.pids
    }

    /// Waits up to `within` for the program to end by itself.
    pub fn wait(&mut self, within: Duration) -> Result<ExitStatus, Error> {
        let status = process::wait_for_exit(&mut self.child, within)
            .map_err(Error::io(format!("waiting for {}", self.name)))?;
        status.ok_or_else(|| Error::DidNotFinish {
            name: self.name.clone(),
            within,
        })
    }

    /// SIGKILL to every pid it named, and to the program itself.
    pub fn kill(&mut self) {
        for pid in self.pids.values() {
            process::signal(*pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        self.kill();
    }
}
