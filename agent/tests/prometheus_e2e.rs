//! End to end through a real Prometheus server (Debian package `prometheus`): it scrapes a
//! real agent while the seed pipe deadlock hangs, loads `dashboards/alerts.yml`, and must
//! answer every expression of every dashboard panel with data and fire the deadlock
//! alert. Needs root (the agent loads BPF programs); never skips.
mod common;

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Agent, Subject, TlsFixture, HANG_AFTER};
use exitwatch::graph::Kind;
use exitwatch::pid::Pid;
use serde_json::Value;

/// How long every expression gets to return data after Prometheus is ready.
const QUERY_DEADLINE: Duration = Duration::from_secs(40);
/// What `$__rate_interval` becomes: several scrapes at the 1 s interval used here.
const RATE_INTERVAL: &str = "1m";
const JOB: &str = "exitwatch";

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the agent crate lives inside the workspace")
        .to_path_buf()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("finding a free port")
}

/// A Prometheus server with its own config and storage; killed on drop, panics included.
struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        Self::start_with(target, "")
    }

    /// `job` holds more keys of the scrape job, indented for it (scheme, tls_config...).
    fn start_with(target: &str, job: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("creating the Prometheus directory");
        let rules = repo_dir().join("dashboards/alerts.yml");
        assert!(rules.exists(), "{} is missing", rules.display());
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: {JOB}\n{job}    static_configs:\n      - targets: [{target:?}]\n",
            rules = rules.display().to_string(),
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("writing prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log"))
            .expect("creating the Prometheus log");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run prometheus ({e}): install the Debian package `prometheus` \
                     (`cargo xtask test` does); this test does not skip"
                )
            });
        let mut server = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait().expect("polling prometheus") {
                panic!(
                    "prometheus exited at start-up ({status}):\n{}",
                    server.log()
                );
            }
            let ready = ureq::get(&format!("{}/-/ready", server.url))
                .timeout(Duration::from_secs(2))
                .call()
                .is_ok();
            if ready {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within 30 s:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the result vector, or the error Prometheus gave.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let response = ureq::get(&format!("{}/api/v1/query", self.url))
            .query("query", expr)
            .timeout(Duration::from_secs(10))
            .call();
        let body: Value = match response {
            Ok(response) => response.into_json().map_err(|e| e.to_string())?,
            Err(ureq::Error::Status(code, response)) => {
                let text = response.into_string().unwrap_or_default();
                return Err(format!("HTTP {code}: {text}"));
            }
            Err(e) => return Err(e.to_string()),
        };
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        match body["data"]["resultType"].as_str() {
            Some("vector") | Some("matrix") => Ok(body["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()),
            // A scalar always has a value.
            _ => Ok(vec![body["data"]["result"].clone()]),
        }
    }

    fn label_values(&self, label: &str, selector: &str) -> Vec<String> {
        let response = ureq::get(&format!("{}/api/v1/label/{label}/values", self.url))
            .query("match[]", selector)
            .timeout(Duration::from_secs(10))
            .call()
            .unwrap_or_else(|e| panic!("label values of {label} for {selector}: {e}"));
        let body: Value = response.into_json().expect("label values JSON");
        body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(panel title, refId, expression)` of every target of every dashboard panel.
fn dashboard_expressions() -> Vec<(String, String, String)> {
    let path = repo_dir().join("dashboards/exitwatch.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    fn walk(list: &Value, out: &mut Vec<(String, String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push((
                    title.to_string(),
                    target["refId"].as_str().unwrap_or_default().to_string(),
                    target["expr"].as_str().unwrap_or_default().to_string(),
                ));
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    assert!(out.len() >= 10, "too few dashboard targets: {out:?}");
    out
}

/// What Grafana sends for one agent selected on the dashboard.
fn substitute(expr: &str, instance: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$job", JOB)
        .replace("$instance", &instance.replace('.', "\\\\."))
}

#[test]
fn prometheus_scrapes_the_agent_answers_every_panel_and_fires_the_deadlock_alert() {
    // The wait-duration panels need the opt-in histogram.
    let agent = Agent::start_with(&["--wait-histogram"]);
    let subject = Subject::python("seed_pipe_deadlock.py", &[]);
    let (parent, child) = (subject.pid("parent"), subject.pid("child"));
    let instance = agent
        .url
        .strip_prefix("http://")
        .expect("agent URL is http://host:port")
        .to_string();

    let prometheus = Prometheus::start(&instance);
    let started = Instant::now();
    agent.wait_for(
        HANG_AFTER + Duration::from_secs(5),
        "of kind pipe_deadlock",
        |i| {
            i.kind == Kind::PipeDeadlock
                && i.pids.contains(&Pid::from_raw(parent))
                && i.pids.contains(&Pid::from_raw(child))
        },
    );

    // Every panel expression, as Grafana would send it, until each returns data.
    let mut pending: BTreeMap<String, (String, String)> = dashboard_expressions()
        .into_iter()
        .map(|(title, reference, expr)| {
            (
                substitute(&expr, &instance),
                (format!("{title} / {reference}"), expr),
            )
        })
        .collect();
    let total = pending.len();
    let deadline = Instant::now() + QUERY_DEADLINE;
    let mut last_answer: BTreeMap<String, String> = BTreeMap::new();
    while !pending.is_empty() && Instant::now() < deadline {
        pending.retain(|expr, (panel, _)| match prometheus.query(expr) {
            Ok(result) if !result.is_empty() => false,
            Ok(_) => {
                last_answer.insert(expr.clone(), "empty result".into());
                true
            }
            Err(error) if error.starts_with("HTTP 400") => {
                panic!("Prometheus rejects the expression of {panel}:\n  {expr}\n  {error}")
            }
            Err(error) => {
                last_answer.insert(expr.clone(), error);
                true
            }
        });
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    assert!(
        pending.is_empty(),
        "{} of {total} dashboard expressions stayed empty for {QUERY_DEADLINE:?}:\n{}\n\
         up: {:?}\nprometheus log:\n{}\nagent /metrics:\n{}",
        pending.len(),
        pending
            .iter()
            .map(|(expr, (panel, _))| format!(
                "  {panel}: {expr}  ({})",
                last_answer.get(expr).map_or("never asked", String::as_str)
            ))
            .collect::<Vec<_>>()
            .join("\n"),
        prometheus.query(&format!("up{{job=\"{JOB}\"}}")),
        prometheus.log(),
        agent.metrics(),
    );
    eprintln!(
        "all {total} dashboard expressions answered {:.1} s after Prometheus started",
        started.elapsed().as_secs_f64()
    );

    // The variables the dashboard offers resolve to this agent.
    let jobs = prometheus.label_values("job", "exitwatch_build_info");
    assert!(jobs.iter().any(|j| j == JOB), "job values: {jobs:?}");
    let instances = prometheus.label_values(
        "instance",
        &format!("exitwatch_build_info{{job=\"{JOB}\"}}"),
    );
    assert_eq!(instances, vec![instance.clone()]);

    // The hung processes table names both processes of the deadlock.
    let info = prometheus
        .query(&format!(
            "exitwatch_active_incident_info{{job=\"{JOB}\", kind=\"pipe_deadlock\"}}"
        ))
        .expect("querying the incident info series");
    for pid in [parent, child] {
        assert!(
            info.iter()
                .any(|s| s["metric"]["pid"] == pid.to_string().as_str()),
            "no info series for pid {pid}: {info:#?}"
        );
    }

    // The deadlock alert fires; the agent is not reported down.
    let alert = format!(
        "ALERTS{{alertname=\"ExitwatchPipeDeadlock\", alertstate=\"firing\", \
         instance=\"{instance}\", kind=\"pipe_deadlock\"}}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let firing = prometheus.query(&alert).unwrap_or_default();
        if let Some(series) = firing.first() {
            assert_eq!(series["metric"]["severity"], "critical", "{series}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{alert} did not appear within 20 s; ALERTS: {:?}\nrules: {}\nprometheus log:\n{}",
            prometheus.query("ALERTS"),
            ureq::get(&format!("{}/api/v1/rules", prometheus.url))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .unwrap_or_default(),
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let down = prometheus
        .query("ALERTS{alertname=\"ExitwatchDown\"}")
        .expect("querying ALERTS");
    assert!(
        down.is_empty(),
        "ExitwatchDown is pending or firing: {down:?}"
    );
    drop(subject);
}

/// A node_exporter-style scrape job (`scheme: https`, `tls_config`, `basic_auth`) works
/// unchanged against an agent with an exporter-toolkit web config.
#[test]
fn prometheus_scrapes_an_agent_behind_tls_and_basic_auth() {
    let tls = TlsFixture::new();
    let agent = tls.agent();
    let instance = agent
        .url
        .strip_prefix("https://")
        .expect("agent URL is https://host:port")
        .to_string();
    let job: String = [
        "    scheme: https".to_string(),
        "    tls_config:".to_string(),
        format!("      ca_file: {:?}", tls.ca_file().display().to_string()),
        "    basic_auth:".to_string(),
        format!("      username: {}", tls.user),
        format!("      password: {}", tls.password),
    ]
    .map(|line| line + "\n")
    .concat();
    let prometheus = Prometheus::start_with(&instance, &job);
    let up = format!("up{{job=\"{JOB}\", instance=\"{instance}\"}} == 1");
    let build_info = format!("exitwatch_build_info{{job=\"{JOB}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scraped = prometheus.query(&up).is_ok_and(|r| !r.is_empty())
            && prometheus.query(&build_info).is_ok_and(|r| !r.is_empty());
        if scraped {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the TLS agent within 30 s: up = {:?}\n\
             targets: {}\nprometheus log:\n{}\nagent log:\n{}",
            prometheus.query(&format!("up{{job=\"{JOB}\"}}")),
            ureq::get(&format!("{}/api/v1/targets", prometheus.url))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .unwrap_or_default(),
            prometheus.log(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
