//! Workload identity end to end: real cgroups in the host's cgroup2 hierarchy shaped as
//! the kubelet and systemd make them, the seed pipe deadlock moved into each, containerd's
//! state laid out as containerd lays it out (no runtime can start containers here), and
//! the identity checked where people meet it: the incident JSON, the summary, the status
//! page, the metric labels and the event lines.
mod common;

use std::{
    ffi::CString,
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{programs_dir, python, require_root, Agent, Subject, HANG_AFTER};
use exitwatch::{
    graph::Kind,
    incidents::{Incident, State, Workload},
};
use serde_json::Value;

const SLACK: Duration = Duration::from_secs(5);

#[test]
fn pods_and_units_are_named_in_incidents_metrics_and_events() {
    require_root();
    let cgroups = TestCgroups::new();
    let (id, uid) = ids();
    let uid_ = uid.replace('-', "_");
    let pod_cgroup = cgroups.create(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/\
         cri-containerd-{id}.scope"
    ));
    let unit = format!("exitwatch-nightly-{}.service", std::process::id());
    let unit_cgroup = cgroups.create(&format!("system.slice/{unit}"));

    let state = tempfile::tempdir().expect("creating the containerd state directory");
    let config = state
        .path()
        .join("io.containerd.runtime.v2.task/k8s.io")
        .join(&id)
        .join("config.json");
    fs::create_dir_all(config.parent().expect("a parent")).expect("laying out the state");
    fs::write(
        &config,
        serde_json::json!({
            "ociVersion": "1.1.0",
            "process": {"args": ["python3", "app.py"]},
            "annotations": {
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.sandbox-name": "checkout-7d9f",
                "io.kubernetes.cri.sandbox-namespace": "shop",
                "io.kubernetes.cri.container-name": "api",
                "io.kubernetes.cri.sandbox-id": "0".repeat(64),
            }
        })
        .to_string(),
    )
    .expect("writing config.json");
    let events = state.path().join("events.jsonl");

    let agent = Agent::start_with(&[
        "--containerd-state",
        &state.path().display().to_string(),
        "--events",
        &events.display().to_string(),
    ]);
    // Dropped (killed) before the cgroups, so the cgroups are empty when removed.
    let mut in_pod = deadlock_in(&pod_cgroup);
    let mut in_unit = deadlock_in(&unit_cgroup);

    let pod_incident = agent.wait_for_pipe_deadlock(HANG_AFTER + SLACK, &in_pod);
    let expected_pod = Workload {
        slice: Some(format!("kubepods-burstable-pod{uid_}.slice")),
        runtime: Some("containerd".into()),
        container_id: Some(id.clone()),
        container: Some("api".into()),
        pod_uid: Some(uid.clone()),
        pod: Some("checkout-7d9f".into()),
        namespace: Some("shop".into()),
        qos_class: Some("burstable".into()),
        ..Workload::default()
    };
    assert_eq!(
        pod_incident.workload.as_ref(),
        Some(&expected_pod),
        "{pod_incident:#?}"
    );
    assert!(
        pod_incident
            .processes
            .iter()
            .all(|p| p.workload == expected_pod),
        "{pod_incident:#?}"
    );
    assert!(
        pod_incident
            .summary
            .starts_with("Pipe deadlock in pod shop/checkout-7d9f container api: "),
        "{}",
        pod_incident.summary
    );
    assert_eq!(pod_incident.node, node_name());

    let unit_incident = agent.wait_for_pipe_deadlock(HANG_AFTER + SLACK, &in_unit);
    let expected_unit = Workload {
        unit: Some(unit.clone()),
        slice: Some("system.slice".into()),
        ..Workload::default()
    };
    assert_eq!(
        unit_incident.workload.as_ref(),
        Some(&expected_unit),
        "{unit_incident:#?}"
    );
    assert!(
        unit_incident
            .summary
            .starts_with(&format!("Pipe deadlock in unit {unit}: ")),
        "{}",
        unit_incident.summary
    );

    let metrics = agent.metrics();
    let info = |pid: i32| {
        metrics
            .lines()
            .find(|line| {
                line.starts_with("exitwatch_active_incident_info{")
                    && line.contains(&format!("pid=\"{pid}\""))
            })
            .unwrap_or_else(|| panic!("no info series for pid {pid}:\n{metrics}"))
    };
    let pod_series = info(in_pod.pid("parent"));
    for label in [
        r#"namespace="shop""#,
        r#"pod="checkout-7d9f""#,
        r#"container="api""#,
        r#"unit="""#,
    ] {
        assert!(pod_series.contains(label), "{label} in {pod_series}");
    }
    let unit_series = info(in_unit.pid("child"));
    for label in [
        r#"namespace="""#,
        r#"pod="""#,
        r#"container="""#,
        &format!(r#"unit="{unit}""#),
    ] {
        assert!(unit_series.contains(label), "{label} in {unit_series}");
    }

    let build = metrics
        .lines()
        .find(|line| line.starts_with("exitwatch_build_info{"))
        .unwrap_or_else(|| panic!("no exitwatch_build_info:\n{metrics}"));
    assert!(build.contains("revision=\""), "{build}");

    let page = agent
        .get("/")
        .unwrap_or_else(|| panic!("GET / failed:\n{}", agent.log()));
    assert!(
        page.contains("in pod shop/checkout-7d9f container api"),
        "{page}"
    );
    assert!(page.contains(&format!("in unit {unit}")), "{page}");

    in_pod.kill();
    in_unit.kill();
    for incident in [&pod_incident, &unit_incident] {
        agent.wait_for(Duration::from_secs(5), "resolved after kill", |i| {
            i.id == incident.id && i.state == State::Resolved
        });
    }
    let lines = event_lines(&events, &[pod_incident.id, unit_incident.id]);
    for (incident, workload) in [
        (&pod_incident, &expected_pod),
        (&unit_incident, &expected_unit),
    ] {
        let of_incident: Vec<&Value> = lines.iter().filter(|e| e["id"] == incident.id).collect();
        let kinds: Vec<&str> = of_incident
            .iter()
            .filter_map(|e| e["event"].as_str())
            .collect();
        assert_eq!(kinds.first(), Some(&"opened"), "{of_incident:#?}");
        assert_eq!(kinds.last(), Some(&"resolved"), "{of_incident:#?}");
        for event in of_incident {
            let parsed: Incident = serde_json::from_value(event.clone())
                .unwrap_or_else(|e| panic!("an event is not a whole incident ({e}): {event:#}"));
            assert_eq!(parsed.workload.as_ref(), Some(workload), "{event:#}");
            assert_eq!(parsed.kind, Kind::PipeDeadlock);
        }
    }
    assert!(agent.stop().success());
}

/// The seed `Popen(stdout=PIPE).wait()` deadlock, started inside `cgroup` (its child is
/// born there too).
fn deadlock_in(cgroup: &Path) -> Subject {
    let procs = CString::new(
        cgroup
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("a cgroup path without NUL");
    let mut command = Command::new(python());
    command.arg(programs_dir().join("seed_pipe_deadlock.py"));
    // SAFETY: only open/write/close between fork and exec, on memory prepared before.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Subject::spawn("seed_pipe_deadlock.py", command)
}

/// The event lines once the resolutions of all `ids` are written (the writer is a
/// thread of its own, a moment behind the API).
fn event_lines(path: &Path, ids: &[u64]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("an event line is not JSON ({e}): {line}"))
            })
            .collect();
        let resolved = |id: &u64| {
            lines
                .iter()
                .any(|e| e["id"] == *id && e["event"] == "resolved")
        };
        if ids.iter().all(resolved) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no resolved events for {ids:?} in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A 64-hex container id and a pod uid, unique to this run.
fn ids() -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let hex = format!("{nanos:032x}{:032x}", std::process::id());
    let uid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[52..64]
    );
    (hex, uid)
}

/// What the agent, started with the test's environment, calls this node.
fn node_name() -> String {
    match std::env::var("NODE_NAME") {
        Ok(node) if !node.is_empty() => node,
        _ => fs::read_to_string("/proc/sys/kernel/hostname")
            .expect("reading the hostname")
            .trim()
            .to_string(),
    }
}

/// A test-owned cgroup in the host's cgroup2 hierarchy, removed with everything created
/// under it when dropped (also when the test panics).
struct TestCgroups {
    root: PathBuf,
}

impl TestCgroups {
    fn new() -> TestCgroups {
        let mount = cgroup2_mount();
        let root = mount.join(format!("exitwatch-test-{}", std::process::id()));
        fs::create_dir(&root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
        TestCgroups { root }
    }

    fn create(&self, relative: &str) -> PathBuf {
        let path = self.root.join(relative);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        path
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        let mut dirs = vec![self.root.clone()];
        let mut at = 0;
        while let Some(dir) = dirs.get(at).cloned() {
            let children = fs::read_dir(&dir).into_iter().flatten().flatten();
            dirs.extend(
                children
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
            at += 1;
        }
        // Deepest first; a killed process may take a moment to leave its cgroup.
        for dir in dirs.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Err(error) = fs::remove_dir(dir) {
                if Instant::now() > deadline {
                    eprintln!("cannot remove the test cgroup {}: {error}", dir.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Where cgroup2 is mounted: `/sys/fs/cgroup` on pure-v2 hosts, elsewhere (often
/// `/sys/fs/cgroup/unified`) on hybrid ones.
fn cgroup2_mount() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").expect("reading /proc/mounts");
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(point))
        })
        .unwrap_or_else(|| panic!("no cgroup2 mount in /proc/mounts:\n{mounts}"))
}
