//! Harness for the privileged integration tests: a real agent binary, real hanging
//! programs, and polling of the agent's HTTP API. Every failure panics with the context
//! needed to understand it (the agent's log, the incidents it had).
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const HANG_AFTER: Duration = Duration::from_secs(2);
pub const SCAN_INTERVAL: Duration = Duration::from_millis(500);
/// The agent's memory bound under attack (the DaemonSet's request).
pub const MAX_PEAK_RSS: u64 = 64 * 1024 * 1024;

/// Privileged tests never skip: without root they fail and say why.
pub fn require_root() {
    // SAFETY: no arguments, cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged integration tests need root and a BPF-capable kernel: run `cargo xtask test` \
         (or sudo cargo test); they do not skip"
    );
}

pub fn programs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs")
}

pub struct Agent {
    child: Child,
    pub url: String,
    log: tempfile::NamedTempFile,
}

impl Agent {
    /// Starts `exitwatch run` with the test threshold and waits until it serves.
    pub fn start() -> Agent {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Agent {
        require_root();
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("creating the agent log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_exitwatch"));
        command
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--hang-after", &format!("{}ms", HANG_AFTER.as_millis())])
            .args([
                "--scan-interval",
                &format!("{}ms", SCAN_INTERVAL.as_millis()),
            ])
            .args(extra)
            .env("EXITWATCH_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("reopening the agent log"));
        let child = command.spawn().expect("starting the exitwatch binary");
        let mut agent = Agent {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = agent.child.try_wait().expect("polling the agent") {
                panic!("the agent exited at start-up ({status}):\n{}", agent.log());
            }
            if agent.get("/healthz").is_some() {
                return agent;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the agent did not serve /healthz within 30 s:\n{}",
            agent.log()
        );
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Panics unless the agent's peak resident memory so far (`VmHWM`) is within
    /// [`MAX_PEAK_RSS`]; prints it for the record.
    pub fn assert_peak_rss_bounded(&self) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("reading the agent's status: {e}\n{}", self.log()));
        let peak = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no VmHWM in the agent's status:\n{status}"));
        eprintln!("agent peak RSS: {:.1} MiB", peak as f64 / 1048576.0);
        assert!(
            peak <= MAX_PEAK_RSS,
            "agent peak RSS {} MiB > {} MiB\n{}",
            peak >> 20,
            MAX_PEAK_RSS >> 20,
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Option<String> {
        ureq::get(&format!("{}{path}", self.url))
            .timeout(Duration::from_secs(5))
            .call()
            .ok()?
            .into_string()
            .ok()
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics")
            .unwrap_or_else(|| panic!("GET /metrics failed:\n{}", self.log()))
    }

    pub fn incidents(&self) -> Vec<Value> {
        let body = self
            .get("/api/v1/incidents")
            .unwrap_or_else(|| panic!("GET /api/v1/incidents failed:\n{}", self.log()));
        let parsed: Value = serde_json::from_str(&body).expect("incidents JSON");
        parsed["incidents"]
            .as_array()
            .cloned()
            .expect("an `incidents` array")
    }

    /// Incidents (active or resolved) that name any of `pids`.
    pub fn incidents_involving(&self, pids: &[i32]) -> Vec<Value> {
        self.incidents()
            .into_iter()
            .filter(|i| pids.iter().any(|pid| involves(i, *pid)))
            .collect()
    }

    /// Polls the API until an incident matches, or panics with what it saw.
    pub fn wait_for(
        &self,
        within: Duration,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let incidents = self.incidents();
            if let Some(found) = incidents.iter().find(|i| matches(i)) {
                return found.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "no incident {what} within {within:?}; incidents: {}\nagent log:\n{}",
                    serde_json::to_string_pretty(&incidents).unwrap_or_default(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Value of one sample of `/metrics`, e.g. `exitwatch_incidents_total{kind="pipe_deadlock"}`.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
    }

    /// SIGTERM, and the exit status once the agent has detached its probes.
    pub fn stop(mut self) -> ExitStatus {
        signal(self.child.id() as i32, libc::SIGTERM);
        let log = &self.log;
        wait_for_exit(&mut self.child, Duration::from_secs(15), || {
            let log = std::fs::read_to_string(log.path()).unwrap_or_default();
            format!("the agent did not stop within 15 s of SIGTERM:\n{log}")
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program` to be run as `nobody`, with no supplementary groups and no capabilities.
pub fn as_nobody(program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(program);
    command
}

/// Runs the exitwatch binary with `args` (no agent) and collects its output.
pub fn exitwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exitwatch"))
        .args(args)
        .output()
        .expect("running exitwatch")
}

/// Incidents whose pids include `pid`.
pub fn involves(incident: &Value, pid: i32) -> bool {
    incident["pids"]
        .as_array()
        .is_some_and(|pids| pids.iter().any(|p| p.as_i64() == Some(i64::from(pid))))
}

/// A hanging (or healthy) program under test. It prints `READY key=pid ...` on stderr;
/// every pid named there is killed when the subject drops.
pub struct Subject {
    child: Child,
    pub pids: BTreeMap<String, i32>,
    name: String,
}

impl Subject {
    pub fn python(script: &str, args: &[&str]) -> Subject {
        let mut command = Command::new(python());
        command.arg(programs_dir().join(script)).args(args);
        Self::spawn(script, command)
    }

    pub fn c(source: &str, args: &[&str]) -> Subject {
        let binary = compile_c(source);
        let mut command = Command::new(binary);
        command.args(args);
        Self::spawn(source, command)
    }

    /// Any command whose program prints the READY line.
    pub fn spawn(name: &str, mut command: Command) -> Subject {
        command
            .env_remove("PYTHONUNBUFFERED")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("READY") {
                    let _ = sender.send(line);
                }
            }
        });
        let ready = receiver
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("{name} did not print READY within 15 s"));
        let pids = ready
            .split_whitespace()
            .skip(1)
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                Some((key.to_string(), value.parse().ok()?))
            })
            .collect();
        Subject {
            child,
            pids,
            name: name.to_string(),
        }
    }

    pub fn pid(&self, key: &str) -> i32 {
        *self
            .pids
            .get(key)
            .unwrap_or_else(|| panic!("{} printed no {key}= in READY: {:?}", self.name, self.pids))
    }

    pub fn signal(&self, key: &str, signal_number: i32) {
        signal(self.pid(key), signal_number);
    }

    /// Waits for the program to end by itself.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let name = &self.name;
        wait_for_exit(&mut self.child, within, || {
            format!("{name} did not finish within {within:?}")
        })
    }

    pub fn kill(&mut self) {
        for pid in self.pids.values() {
            signal(*pid, libc::SIGKILL);
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

/// The child's exit status, or a panic with `failure()` once `within` has passed.
fn wait_for_exit(child: &mut Child, within: Duration, failure: impl Fn() -> String) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("polling a child process") {
            return status;
        }
        assert!(Instant::now() < deadline, "{}", failure());
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn signal(pid: i32, signal_number: i32) {
    // SAFETY: plain syscall; a pid that is already gone only yields ESRCH.
    unsafe { libc::kill(pid, signal_number) };
}

/// Debian's interpreter (statically linked libpython, what a fresh machine has), else
/// whatever `python3` is on PATH.
pub fn python() -> PathBuf {
    let debian = Path::new("/usr/bin/python3");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("python3")
    }
}

/// `source` (in the programs directory) built once per test binary; the binary's path.
pub fn compile_c(source: &str) -> PathBuf {
    let out_dir = std::env::temp_dir().join(format!("exitwatch-tests-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).expect("creating the C build directory");
    let binary = out_dir.join(source.trim_end_matches(".c"));
    if !binary.exists() {
        let status = Command::new("cc")
            .args(["-O1", "-pthread", "-o"])
            .arg(&binary)
            .arg(programs_dir().join(source))
            .status()
            .expect("running cc (install gcc)");
        assert!(status.success(), "compiling {source} failed");
    }
    binary
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("finding a free port")
}

/// The pipe inode `/proc/PID/fd/FD` points at.
pub fn pipe_inode(pid: i32, fd: i32) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/fd/{fd}: {e}"));
    let text = link.to_string_lossy();
    text.strip_prefix("pipe:[")
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inode| inode.parse().ok())
        .unwrap_or_else(|| panic!("/proc/{pid}/fd/{fd} is {text}, not a pipe"))
}
