//! Harness for the privileged integration tests: a real agent binary, real hanging
//! programs, and polling of the agent's HTTP API. Starting and stopping them is
//! `exitwatch-testkit`'s, shared with the bench; this adds the test settings, the HTTP
//! client, the fixtures and the panics: every failure panics with the context needed to
//! understand it (the agent's log, the incidents it had).
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    time::{Duration, Instant},
};

use exitwatch::graph::Kind;
use exitwatch::incidents::{Incident, IncidentList, IncidentProcess};
use exitwatch::pid::Pid;
use exitwatch_testkit::{self as testkit, AgentProcess};

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
    process: AgentProcess,
    pub url: String,
    /// Where `process` logs; kept here because the file is removed when this drops.
    _log_file: tempfile::NamedTempFile,
    client: ureq::Agent,
    /// Basic auth credentials sent with every request of `get`.
    credentials: Option<(String, String)>,
}

/// How to start an agent beyond the test defaults.
#[derive(Default)]
pub struct Setup {
    pub args: Vec<String>,
    /// RLIMIT_NOFILE (soft and hard) the agent starts with.
    pub open_files: Option<u64>,
    /// For an https agent: the CA its certificate chains to.
    pub ca_file: Option<PathBuf>,
    /// Sent with every request of `get`.
    pub credentials: Option<(String, String)>,
    /// What to start instead of this build's `exitwatch` (a released binary, under
    /// `setpriv`); `run` and the test flags are appended to it.
    pub command: Option<Command>,
}

impl Agent {
    /// Starts `exitwatch run` with the test threshold and waits until it serves.
    pub fn start() -> Agent {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Agent {
        Self::start_setup(Setup {
            args: extra.iter().map(|a| a.to_string()).collect(),
            ..Setup::default()
        })
    }

    /// Listens on port 0 and learns the real port from the agent's log.
    pub fn start_setup(setup: Setup) -> Agent {
        require_root();
        let log = tempfile::NamedTempFile::new().expect("creating the agent log file");
        let mut command = setup
            .command
            .unwrap_or_else(|| Command::new(env!("CARGO_BIN_EXE_exitwatch")));
        command
            .args(["run", "--listen", "127.0.0.1:0"])
            .args(["--hang-after", &format!("{}ms", HANG_AFTER.as_millis())])
            .args([
                "--scan-interval",
                &format!("{}ms", SCAN_INTERVAL.as_millis()),
            ])
            .args(&setup.args)
            .env("EXITWATCH_LOG", "debug");
        if let Some(limit) = setup.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: only an async-signal-safe syscall between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let client = http_client(setup.ca_file.as_deref());
        // Serving; a 503 (first scans slower than three intervals) still counts.
        let serving = |url: &str| request(&client, url, "/healthz", None).is_ok();
        let process = AgentProcess::start(command, log.path(), Duration::from_secs(30), serving)
            .unwrap_or_else(|e| panic!("{e}"));
        Agent {
            url: process.url().to_string(),
            process,
            _log_file: log,
            client,
            credentials: setup.credentials,
        }
    }

    pub fn pid(&self) -> i32 {
        self.process.pid() as i32
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
        self.process.log()
    }

    pub fn get(&self, path: &str) -> Option<String> {
        let credentials = self.credentials.as_ref();
        let response = self
            .request(path, credentials.map(|(u, p)| (u.as_str(), p.as_str())))
            .ok()?;
        (response.status() == 200).then(|| response.into_string().ok())?
    }

    /// One GET through a fresh connection; 4xx and 5xx answers are `Ok`.
    pub fn request(
        &self,
        path: &str,
        credentials: Option<(&str, &str)>,
    ) -> Result<ureq::Response, String> {
        request(&self.client, &self.url, path, credentials)
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics")
            .unwrap_or_else(|| panic!("GET /metrics failed:\n{}", self.log()))
    }

    pub fn incidents(&self) -> Vec<Incident> {
        let body = self
            .get("/api/v1/incidents")
            .unwrap_or_else(|| panic!("GET /api/v1/incidents failed:\n{}", self.log()));
        let list: IncidentList = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("the incident list does not parse ({e}):\n{body}"));
        list.incidents
    }

    /// Incidents (active or resolved) that name any of `pids`.
    pub fn incidents_involving(&self, pids: &[i32]) -> Vec<Incident> {
        self.incidents()
            .into_iter()
            .filter(|i| i.pids.iter().any(|pid| pids.contains(&pid.as_raw())))
            .collect()
    }

    /// Polls the API until an incident matches, or panics with what it saw.
    pub fn wait_for(
        &self,
        within: Duration,
        what: &str,
        matches: impl Fn(&Incident) -> bool,
    ) -> Incident {
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

    /// The pipe-deadlock incident naming `subject`'s `parent` and `child` (the seed
    /// `seed_pipe_deadlock.py` shape), waited for as [`Agent::wait_for`] does.
    pub fn wait_for_pipe_deadlock(&self, within: Duration, subject: &Subject) -> Incident {
        let (parent, child) = (subject.pid("parent"), subject.pid("child"));
        self.wait_for(within, "of kind pipe_deadlock", |i| {
            i.kind == Kind::PipeDeadlock
                && i.pids.contains(&Pid::from_raw(parent))
                && i.pids.contains(&Pid::from_raw(child))
        })
    }

    /// Value of one sample of `/metrics`, e.g. `exitwatch_incidents_total{kind="pipe_deadlock"}`.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
    }

    /// SIGTERM, and the exit status once the agent has detached its probes.
    pub fn stop(self) -> ExitStatus {
        self.terminate().0
    }

    /// As `stop`, with the agent's whole log.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let status = self
            .process
            .stop(Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("{e}"));
        (status, self.log())
    }
}

/// One GET of `url` + `path` through `client`; 4xx and 5xx answers are `Ok`.
fn request(
    client: &ureq::Agent,
    url: &str,
    path: &str,
    credentials: Option<(&str, &str)>,
) -> Result<ureq::Response, String> {
    let mut request = client
        .get(&format!("{url}{path}"))
        .timeout(Duration::from_secs(5));
    if let Some((user, password)) = credentials {
        request = request.set("Authorization", &basic_authorization(user, password));
    }
    match request.call() {
        Ok(response) | Err(ureq::Error::Status(_, response)) => Ok(response),
        Err(ureq::Error::Transport(transport)) => Err(transport.to_string()),
    }
}

/// A client without connection reuse, trusting `ca_file` for https.
fn http_client(ca_file: Option<&Path>) -> ureq::Agent {
    let builder = ureq::AgentBuilder::new().max_idle_connections(0);
    let Some(ca_file) = ca_file else {
        return builder.build();
    };
    let pem = std::fs::read(ca_file).unwrap_or_else(|e| panic!("reading {ca_file:?}: {e}"));
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.unwrap_or_else(|e| panic!("parsing {ca_file:?}: {e:?}")))
            .unwrap_or_else(|e| panic!("trusting {ca_file:?}: {e}"));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    builder.tls_config(std::sync::Arc::new(tls)).build()
}

pub fn basic_authorization(user: &str, password: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// A CA, a server certificate for 127.0.0.1 signed by it (made with the `openssl` CLI),
/// and an exporter-toolkit web config that serves TLS, requires one bcrypt user and sets
/// `X-Frame-Options: deny`, as node_exporter's files may.
pub struct TlsFixture {
    dir: tempfile::TempDir,
    pub user: String,
    pub password: String,
}

impl TlsFixture {
    pub fn new() -> TlsFixture {
        let dir = tempfile::tempdir().expect("creating the TLS directory");
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("running openssl (install the Debian package `openssl`)");
            assert!(
                output.status.success(),
                "openssl {args:?} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let ca = [
            "-subj",
            "/CN=exitwatch test CA",
            "-days",
            "2",
            "-keyout",
            "ca.key",
        ];
        openssl(&[&["req", "-x509"], &ec[..], &ca[..], &["-out", "ca.pem"]].concat());
        let server = ["-subj", "/CN=localhost", "-keyout", "server.key"];
        openssl(&[&["req"], &ec[..], &server[..], &["-out", "server.csr"]].concat());
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .expect("writing the certificate extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        let (user, password) = ("prometheus".to_string(), "scrape-secret".to_string());
        let hash = bcrypt::hash(&password, 4).expect("hashing the test password");
        // Relative paths: the agent resolves them against the file's directory.
        std::fs::write(
            dir.path().join("web-config.yml"),
            format!(
                "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n\
                 basic_auth_users:\n  {user}: '{hash}'\n\
                 http_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n"
            ),
        )
        .expect("writing the web config");
        TlsFixture {
            dir,
            user,
            password,
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn web_config(&self) -> PathBuf {
        self.dir.path().join("web-config.yml")
    }

    /// An agent serving with this web config, that the harness's requests authenticate to.
    pub fn agent(&self) -> Agent {
        Agent::start_setup(Setup {
            args: vec![
                "--web-config-file".to_string(),
                self.web_config().display().to_string(),
            ],
            ca_file: Some(self.ca_file()),
            credentials: Some((self.user.clone(), self.password.clone())),
            ..Setup::default()
        })
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

/// How `incident` describes `pid`, or a panic that shows the incident.
pub fn process_of(incident: &Incident, pid: i32) -> &IncidentProcess {
    incident
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .unwrap_or_else(|| panic!("pid {pid} not described: {incident:#?}"))
}

/// A hanging (or healthy) program under test, as the harness's [`testkit::Subject`]
/// with the test's panics.
pub struct Subject(testkit::Subject);

/// How long a program gets to set up its hang and print READY.
const READY_WITHIN: Duration = Duration::from_secs(15);

impl Subject {
    pub fn python(script: &str, args: &[&str]) -> Subject {
        Self::python_with(&python(), script, args)
    }

    /// `script` run by the interpreter `python` (see [`pyenv_python`]).
    pub fn python_with(python: &Path, script: &str, args: &[&str]) -> Subject {
        let mut command = Command::new(python);
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
    pub fn spawn(name: &str, command: Command) -> Subject {
        Subject(
            testkit::Subject::spawn(name, command, READY_WITHIN).unwrap_or_else(|e| panic!("{e}")),
        )
    }

    pub fn pid(&self, key: &str) -> i32 {
        let pids = self.0.pids();
        *pids
            .get(key)
            .unwrap_or_else(|| panic!("{} printed no {key}= in READY: {pids:?}", self.0.name()))
    }

    /// Every pid the READY line named.
    pub fn pids(&self) -> Vec<i32> {
        self.0.pids().values().copied().collect()
    }

    pub fn signal(&self, key: &str, signal_number: i32) {
        testkit::signal(self.pid(key), signal_number);
    }

    /// Waits for the program to end by itself.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        self.0.wait(within).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// Waits until the main thread of the process READY named `key` sleeps in syscall
    /// `nr`: READY can come before the wait begins (a helper thread prints it), and a
    /// test that ages the wait must count from its start.
    pub fn wait_in_syscall(&self, key: &str, nr: u32) {
        let path = format!("/proc/{}/syscall", self.pid(key));
        let until = Instant::now() + READY_WITHIN;
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.split_whitespace().next() == Some(nr.to_string().as_str()) {
                return;
            }
            assert!(
                Instant::now() < until,
                "{key} did not enter syscall {nr} within {READY_WITHIN:?}: {path} says {text:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
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

/// pyenv's CPython `minor` (`3.11`): the newest patch release installed under
/// `$PYENV_ROOT/versions` (`$HOME/.pyenv` when `PYENV_ROOT` is unset). Panics, saying
/// what to install, when there is none.
pub fn pyenv_python(minor: &str) -> PathBuf {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pyenv")))
        .expect("neither PYENV_ROOT nor HOME is set: cannot find pyenv's interpreters");
    let versions = root.join("versions");
    let patch =
        |name: &str| -> Option<u32> { name.strip_prefix(minor)?.strip_prefix('.')?.parse().ok() };
    let newest = std::fs::read_dir(&versions)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| Some((patch(&name)?, name)))
        .max()
        .unwrap_or_else(|| {
            panic!(
                "CPython {minor} is not installed under {}: install it with \
                 `pyenv install {minor}` (these tests need it and do not skip)",
                versions.display()
            )
        });
    versions.join(newest.1).join("bin/python3")
}

/// `source` (in the programs directory) built once per test binary; the binary's path.
pub fn compile_c(source: &str) -> PathBuf {
    compile(source, "", &["cc", "-O1", "-pthread"])
}

/// `source` from the programs directory built by `command` (the compiler and its flags),
/// into a binary named for the source and `variant`, once per test process.
pub fn compile(source: &str, variant: &str, command: &[&str]) -> PathBuf {
    let out_dir = std::env::temp_dir().join(format!("exitwatch-tests-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).expect("creating the C build directory");
    let stem = source.split('.').next().unwrap_or(source);
    let binary = out_dir.join(format!("{stem}{variant}"));
    if !binary.exists() {
        let (compiler, flags) = command.split_first().expect("a compiler");
        let status = Command::new(compiler)
            .args(flags)
            .arg("-o")
            .arg(&binary)
            .arg(programs_dir().join(source))
            .status()
            .unwrap_or_else(|e| panic!("running {compiler} (install gcc and g++): {e}"));
        assert!(
            status.success(),
            "compiling {source} with {command:?} failed"
        );
    }
    binary
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
