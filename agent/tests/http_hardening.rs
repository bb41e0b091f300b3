//! The HTTP port as an attacker meets it: slow and idle clients against a small
//! open-file limit, SIGTERM with a request half sent, TLS and basic auth, and bad web
//! config files. Real agent, real probes, real deadlocks; needs root, never skips.
mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{Agent, Setup, Subject, TlsFixture, HANG_AFTER};
use exitwatch::pid::Pid;
use exitwatch::{graph::Kind, incidents::IncidentList};

/// The agent's header-read timeout, and how late a disconnect may come after it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const SLACK: Duration = Duration::from_secs(3);
/// A scrape under attack answers within this (retried through fresh connections).
const SCRAPE_WITHIN: Duration = Duration::from_secs(2);
/// A scraper whose password the agent has not verified yet gets in within this while
/// another client floods wrong passwords.
const COLD_SCRAPE_WITHIN: Duration = Duration::from_secs(5);

fn address(agent: &Agent) -> String {
    let (_, address) = agent
        .url
        .split_once("://")
        .unwrap_or_else(|| panic!("agent URL {} has no scheme", agent.url));
    address.to_string()
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// Whether the peer closed the connection (EOF or reset, after any last words).
fn closed_by_peer(mut stream: &TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("setting a read timeout");
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Largest descriptor count of `pid` seen until `stop` is set.
fn watch_fds(pid: i32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(open_fds(pid));
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}

/// Clients that send a request line a byte at a time.
struct Tricklers {
    streams: Vec<TcpStream>,
    running: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tricklers {
    fn start(target: &str, count: usize) -> Tricklers {
        let streams: Vec<TcpStream> = (0..count)
            .map(|_| {
                let mut stream = TcpStream::connect(target).expect("connecting a slow client");
                let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ");
                stream
            })
            .collect();
        let writers: Vec<TcpStream> = streams
            .iter()
            .map(|s| s.try_clone().expect("cloning a slow client"))
            .collect();
        let (running, sent) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicUsize::new(0)),
        );
        let thread = {
            let (running, sent) = (running.clone(), sent.clone());
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    for mut stream in &writers {
                        if stream.write_all(b"a").is_ok() {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
        };
        Tricklers {
            streams,
            running,
            sent,
            thread: Some(thread),
        }
    }

    /// Stops trickling; how many of the clients the agent has not disconnected.
    fn stop(mut self) -> usize {
        self.running.store(false, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the trickling thread");
        }
        assert!(
            self.sent.load(Ordering::Relaxed) > 0,
            "the slow clients never sent a byte"
        );
        self.streams.iter().filter(|s| !closed_by_peer(s)).count()
    }
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
}

#[test]
fn slow_and_idle_clients_are_cut_off_after_the_header_timeout() {
    let agent = Agent::start();
    let target = address(&agent);
    let started = Instant::now();
    let slow = Tricklers::start(&target, 60);
    let idle: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect(&target).expect("connecting an idle client"))
        .collect();
    assert!(
        agent.get("/metrics").is_some(),
        "/metrics failed with 210 of 256 slots held:\n{}",
        agent.log()
    );
    let cut_off_by = HEADER_READ_TIMEOUT + SLACK;
    std::thread::sleep(cut_off_by.saturating_sub(started.elapsed()));
    let idle_open = idle.iter().filter(|s| !closed_by_peer(s)).count();
    let slow_open = slow.stop();
    assert_eq!(
        (slow_open, idle_open),
        (0, 0),
        "(slow, idle) clients still connected {cut_off_by:?} after they began"
    );
    let metrics = agent.metrics();
    assert_eq!(
        counter(&metrics, "exitwatch_http_connections_evicted_total"),
        0.0,
        "210 connections fit in 256 slots"
    );
}

#[test]
fn held_connections_neither_lock_out_scrapers_nor_exhaust_descriptors() {
    // The limit of the field report: 110 held connections stalled a 128-fd agent.
    const OPEN_FILES: u64 = 128;
    let agent = Agent::start_setup(Setup {
        open_files: Some(OPEN_FILES),
        ..Setup::default()
    });
    let pid = agent.pid();
    assert!(
        agent
            .log()
            .contains("--web-max-connections 256 lowered to 32"),
        "the agent did not fit its connection cap to 128 descriptors:\n{}",
        agent.log()
    );
    let idle_fds = open_fds(pid);
    let stop_watching = Arc::new(AtomicBool::new(false));
    let fds = watch_fds(pid, stop_watching.clone());

    // 60 slow clients, 300 idle ones, and an attacker that keeps opening more.
    let target = address(&agent);
    let slow = Tricklers::start(&target, 60);
    let held: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&target).expect("connecting an idle client"))
        .collect();
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = {
        let (flooding, target) = (flooding.clone(), target.clone());
        std::thread::spawn(move || {
            let mut streams = std::collections::VecDeque::new();
            while flooding.load(Ordering::Relaxed) {
                if let Ok(stream) = TcpStream::connect(&target) {
                    streams.push_back(stream);
                }
                if streams.len() > 300 {
                    streams.pop_front();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    // A new deadlock while the port is under attack.
    let subject = Subject::python("seed_pipe_deadlock.py", &[]);
    let parent = subject.pid("parent");
    let hang_started = Instant::now();

    // Every scrape, through a fresh connection, gets through promptly.
    let mut slowest = Duration::ZERO;
    let mut metrics = String::new();
    for _ in 0..5 {
        let asked = Instant::now();
        metrics = loop {
            if let Some(text) = agent.get("/metrics") {
                break text;
            }
            assert!(
                asked.elapsed() < SCRAPE_WITHIN,
                "/metrics did not answer within {SCRAPE_WITHIN:?} under attack:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        slowest = slowest.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    let evicted = counter(&metrics, "exitwatch_http_connections_evicted_total");
    assert!(
        evicted >= 300.0,
        "360 connections and a flood against 32 slots, {evicted} evicted"
    );
    assert!(
        agent.log().contains("idle connection(s) to make room"),
        "no warning about the full port:\n{}",
        agent.log()
    );

    // The scanner was never starved of descriptors: the deadlock is found in time.
    let incident =
        loop {
            let found = agent.get("/api/v1/incidents").and_then(|body| {
                let list: IncidentList = serde_json::from_str(&body).ok()?;
                list.incidents.into_iter().find(|i| {
                    i.kind == Kind::PipeDeadlock && i.pids.contains(&Pid::from_raw(parent))
                })
            });
            if let Some(found) = found {
                break found;
            }
            assert!(
            hang_started.elapsed() < HANG_AFTER + SLACK,
            "the pipe deadlock of pid {parent} was not found during the attack; /healthz: {:?}\n\
             scans: {}\n{}",
            agent.request("/healthz", None).map(|r| r.into_string().unwrap_or_default()),
            agent
                .get("/metrics")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("exitwatch_scan") || l.starts_with("exitwatch_blocked"))
                .collect::<Vec<_>>()
                .join("\n"),
            agent.log()
        );
            std::thread::sleep(Duration::from_millis(200));
        };
    let found_after = hang_started.elapsed();

    flooding.store(false, Ordering::Relaxed);
    flood.join().expect("the flooding thread");
    let slow_open = slow.stop();
    assert_eq!(slow_open, 0, "slow clients are still connected");
    stop_watching.store(true, Ordering::Relaxed);
    let peak_fds = fds.join().expect("the descriptor watcher");
    eprintln!(
        "held-connection attack: slowest of 5 scrapes {:.2} s; deadlock found within {:.1} s \
         ({}); {evicted} idle connections evicted; descriptors {idle_fds} idle, {peak_fds} at \
         peak (limit {OPEN_FILES})",
        slowest.as_secs_f64(),
        found_after.as_secs_f64(),
        humantime::format_rfc3339_millis(incident.detected_at),
    );
    assert!(
        (peak_fds as u64) < OPEN_FILES - 16,
        "the agent's descriptors reached {peak_fds} of {OPEN_FILES}"
    );
    assert!(
        !agent.log().contains("Too many open files"),
        "the agent ran out of descriptors:\n{}",
        agent.log()
    );
    agent.assert_peak_rss_bounded();
    drop(held);
}

#[test]
fn sigterm_with_a_half_sent_request_exits_within_five_seconds() {
    let agent = Agent::start();
    let pid = agent.pid();
    let mut half = TcpStream::connect(address(&agent)).expect("connecting");
    half.write_all(b"GET /metr")
        .expect("sending half a request");
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let (status, log) = agent.terminate();
    let took = started.elapsed();
    eprintln!(
        "shutdown with a half-sent request took {:.2} s",
        took.as_secs_f64()
    );
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} to exit:\n{log}"
    );
    assert!(
        log.contains("cutting 1 HTTP connection(s)"),
        "the cut connection is not logged:\n{log}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} is still there"
    );
    // Its probes went with it: a new agent loads its own and finds a deadlock.
    let next = Agent::start();
    let subject = Subject::python("seed_pipe_deadlock.py", &[]);
    let parent = subject.pid("parent");
    next.wait_for(HANG_AFTER + SLACK, "for the new deadlock", |i| {
        i.pids.contains(&Pid::from_raw(parent))
    });
}

#[test]
fn port_zero_logs_and_serves_the_bound_port() {
    let agent = Agent::start();
    let port: u16 = address(&agent)
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {}", agent.url));
    assert_ne!(port, 0, "{}", agent.log());
    let page = agent.get("/").expect("the status page on the logged port");
    assert!(page.contains("exitwatch"), "{page}");
    assert_eq!(agent.get("/healthz").as_deref(), Some("ok\n"));
}

#[test]
fn requests_with_bodies_or_other_methods_are_refused() {
    let agent = Agent::start();
    let ask = |request: &[u8]| {
        let mut stream = TcpStream::connect(address(&agent)).expect("connecting");
        stream.write_all(request).expect("sending");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    let post = ask(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi");
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let body = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi");
    assert!(body.starts_with("HTTP/1.1 413"), "{body}");
    let huge_header = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let huge = ask(huge_header.as_bytes());
    assert!(
        huge.is_empty() || huge.starts_with("HTTP/1.1 431"),
        "a 64 KiB header was served: {}",
        &huge[..huge.len().min(200)]
    );
}

#[test]
fn tls_and_basic_auth_from_an_exporter_toolkit_web_config() {
    let tls = TlsFixture::new();
    let agent = tls.agent();
    assert!(agent.url.starts_with("https://"), "{}", agent.url);

    let plain = ureq::get(&format!("http://{}/healthz", address(&agent)))
        .timeout(Duration::from_secs(5))
        .call();
    assert!(
        plain.is_err(),
        "plain HTTP was answered on the TLS port: {plain:?}"
    );

    let status = |credentials: Option<(&str, &str)>| {
        agent
            .request("/metrics", credentials)
            .unwrap_or_else(|e| panic!("https request failed: {e}\n{}", agent.log()))
    };
    let anonymous = status(None);
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous.header("X-Frame-Options"),
        Some("deny"),
        "http_server_config.headers are not applied"
    );
    assert!(
        anonymous
            .header("WWW-Authenticate")
            .is_some_and(|h| h.starts_with("Basic")),
        "401 without a Basic challenge"
    );
    assert_eq!(status(Some((&tls.user, "wrong"))).status(), 401);
    assert_eq!(status(Some(("intruder", &tls.password))).status(), 401);
    for _ in 0..2 {
        let allowed = status(Some((&tls.user, &tls.password)));
        assert_eq!(allowed.status(), 200);
        let text = allowed.into_string().expect("the metrics text");
        assert!(text.contains("exitwatch_build_info"), "{text}");
    }
    let health = agent.request("/healthz", None).expect("GET /healthz");
    assert_eq!(health.status(), 200, "liveness probes need /healthz bare");
    assert_eq!(
        agent
            .request("/api/v1/incidents", None)
            .expect("GET /api/v1/incidents")
            .status(),
        401
    );

    let cli = |password: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_exitwatch"));
        command
            .args(["incidents", "--agent", &agent.url, "--ca-file"])
            .arg(tls.ca_file())
            .args(["--user", &tls.user]);
        match password {
            Some(password) => command.env("EXITWATCH_AGENT_PASSWORD", password),
            None => command.env_remove("EXITWATCH_AGENT_PASSWORD"),
        };
        command.output().expect("running exitwatch incidents")
    };
    let table = cli(Some(&tls.password));
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    // Other hangs on the host may be listed: the answer is a table or "no incidents".
    let stdout = String::from_utf8_lossy(&table.stdout);
    assert!(
        stdout.starts_with("ID ") || stdout.contains("no incidents"),
        "{stdout}"
    );
    let refused = cli(Some("wrong"));
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let no_password = cli(None);
    assert!(
        String::from_utf8_lossy(&no_password.stderr).contains("EXITWATCH_AGENT_PASSWORD"),
        "{}",
        String::from_utf8_lossy(&no_password.stderr)
    );
}

/// A TCP connection to `target` from `source`, another address of the loopback network:
/// the agent tells clients apart by address.
fn connect_from(source: Ipv4Addr, target: SocketAddrV4) -> std::io::Result<TcpStream> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let sockaddr = |address: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: address.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*address.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let (local, remote) = (sockaddr(SocketAddrV4::new(source, 0)), sockaddr(target));
    let length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the new descriptor is owned at once; bind and connect only read the
    // addresses, which outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let socket = OwnedFd::from_raw_fd(fd);
        let fd = socket.as_raw_fd();
        if libc::bind(fd, (&raw const local).cast(), length) != 0
            || libc::connect(fd, (&raw const remote).cast(), length) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(TcpStream::from(socket))
    }
}

#[test]
fn a_flood_of_wrong_passwords_does_not_lock_out_a_scraper() {
    // Few slots and a deployed bcrypt cost (the TLS fixture's cost 4 is too cheap to
    // queue on); TLS plays no part in the queue, so this agent serves plain HTTP.
    const MAX_CONNECTIONS: usize = 32;
    const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
    let (user, password) = ("prometheus", "scrape-secret");
    let dir = tempfile::tempdir().expect("temp dir");
    let web_config = dir.path().join("web-config.yml");
    let hash = bcrypt::hash(password, 10).expect("hashing the test password");
    std::fs::write(
        &web_config,
        format!("basic_auth_users:\n  {user}: '{hash}'\n"),
    )
    .expect("writing the web config");
    let agent = Agent::start_setup(Setup {
        args: vec![
            "--web-config-file".to_string(),
            web_config.display().to_string(),
            "--web-max-connections".to_string(),
            MAX_CONNECTIONS.to_string(),
        ],
        ..Setup::default()
    });
    let target: SocketAddrV4 = address(&agent)
        .parse()
        .unwrap_or_else(|e| panic!("agent address {}: {e}", agent.url));

    // Twice as many clients as slots, each sending a wrong password again and again.
    let flooding = Arc::new(AtomicBool::new(true));
    let too_many = Arc::new(AtomicUsize::new(0));
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
        common::basic_authorization(user, "wrong")
    );
    let flood: Vec<_> = (0..2 * MAX_CONNECTIONS)
        .map(|_| {
            let (flooding, too_many, request) =
                (flooding.clone(), too_many.clone(), request.clone());
            std::thread::spawn(move || {
                while flooding.load(Ordering::Relaxed) {
                    let mut answer = String::new();
                    if let Ok(mut stream) = connect_from(ATTACKER, target) {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                        if stream.write_all(request.as_bytes()).is_ok() {
                            let _ = stream.read_to_string(&mut answer);
                        }
                    }
                    if answer.starts_with("HTTP/1.1 429") {
                        too_many.fetch_add(1, Ordering::Relaxed);
                    }
                    // A checked password is followed by the next at once, to keep the
                    // slot; only a client turned away paces itself.
                    if !answer.starts_with("HTTP/1.1 401") {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        })
        .collect();
    // Without limits, the flood's checks queue up for bcrypt and hold every slot by now.
    std::thread::sleep(Duration::from_secs(1));

    let started = Instant::now();
    let mut answers = Vec::new();
    let scraped = loop {
        match agent.request("/metrics", Some((user, password))) {
            Ok(response) if response.status() == 200 => break response.into_string().ok(),
            Ok(response) => answers.push(response.status().to_string()),
            Err(error) => answers.push(error),
        }
        if started.elapsed() >= COLD_SCRAPE_WITHIN {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = started.elapsed();
    let Some(metrics) = scraped.filter(|_| took < COLD_SCRAPE_WITHIN) else {
        panic!(
            "the right password did not get in within {COLD_SCRAPE_WITHIN:?} of wrong ones \
             (last try ended after {took:?}); answers: {answers:?}\n{}",
            agent.log()
        );
    };
    eprintln!(
        "cold-cache scrape under a wrong-password flood: in after {:.2} s, {} refusal(s) first",
        took.as_secs_f64(),
        answers.len()
    );
    assert!(metrics.contains("exitwatch_build_info"), "{metrics}");
    flooding.store(false, Ordering::Relaxed);
    for thread in flood {
        thread.join().expect("a flooding thread");
    }
    assert!(
        too_many.load(Ordering::Relaxed) > 0,
        "the flood was never told to come back later (429)"
    );
}

#[test]
fn a_bad_web_config_file_stops_start_up_and_names_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("unknown-key.yml", "tls_server_config:\n  cert: x\n", "cert"),
        ("not-yaml.yml", "basic_auth_users: [\n", "not-yaml.yml"),
        (
            "no-cert.yml",
            "tls_server_config:\n  cert_file: missing.pem\n  key_file: missing.key\n",
            "cert_file",
        ),
        (
            "plain-password.yml",
            "basic_auth_users:\n  alice: hunter2\n",
            "not a bcrypt hash",
        ),
    ];
    for (name, text, expected) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("writing the config");
        let output = Command::new(env!("CARGO_BIN_EXE_exitwatch"))
            .args(["run", "--listen", "127.0.0.1:0", "--web-config-file"])
            .arg(&file)
            .output()
            .expect("running exitwatch");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&file.display().to_string()),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
}

/// `exitwatch incidents` against an answer far over ureq's 10 MB string limit.
#[test]
fn the_incidents_command_reads_answers_of_any_size() {
    const PADDING: usize = 24 * 1024 * 1024;
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a fake agent");
    let url = format!(
        "http://{}",
        server.local_addr().expect("the fake agent's address")
    );
    let serving = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut stream, _) = server.accept().expect("accepting the CLI");
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let body_start = b"{\"incidents\": [";
            let body_end = b"]}";
            let length = body_start.len() + PADDING + body_end.len();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\
                 Connection: close\r\n\r\n"
            );
            let padding = vec![b' '; PADDING];
            for part in [head.as_bytes(), body_start, &padding, body_end] {
                if stream.write_all(part).is_err() {
                    break;
                }
            }
        }
    });
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_exitwatch"))
            .args(["incidents", "--agent", &url])
            .args(extra)
            .env_remove("EXITWATCH_AGENT_PASSWORD")
            .output()
            .expect("running exitwatch incidents")
    };
    let table = run(&[]);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&table.stdout), "no incidents\n");
    let json = run(&["--json"]);
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    assert!(
        json.stdout.len() > PADDING,
        "--json printed {} bytes",
        json.stdout.len()
    );
    serving.join().expect("the fake agent");
}
