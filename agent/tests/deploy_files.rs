//! The shipped deployment files as written: the systemd unit's hardening score, and the
//! DaemonSet, PodMonitor, unit and Containerfile passing the agent only flags it accepts.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// `systemd-analyze security --offline=true deploy/exitwatch.service`, as the README
/// states it.
const UNIT_EXPOSURE: &str = "2.5";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ is inside the repository")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Value {
    serde_saphyr::from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
}

#[test]
fn the_systemd_unit_scores_what_the_readme_says() {
    let unit = repo().join("deploy/exitwatch.service");
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .env("SYSTEMD_COLORS", "0")
        .output()
        .expect("running systemd-analyze (install the Debian package `systemd`)");
    let text = String::from_utf8_lossy(&output.stdout);
    let score = text
        .lines()
        .find_map(|line| line.split_once("Overall exposure level for exitwatch.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure level in:\n{text}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert_eq!(score, UNIT_EXPOSURE, "{text}");
    assert!(
        read("README.md").contains(&format!("exposure level {UNIT_EXPOSURE}")),
        "the README must state the unit's exposure level {UNIT_EXPOSURE}"
    );
}

#[test]
fn the_manifests_unit_and_image_pass_only_flags_the_agent_accepts() {
    let daemonset = yaml("deploy/daemonset.yaml");
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    assert_accepted("deploy/daemonset.yaml", &strings(&container["args"]));

    let unit = read("deploy/exitwatch.service");
    let exec_start = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart=");
    let mut words = exec_start.split_whitespace().map(String::from);
    assert_eq!(words.next().as_deref(), Some("/usr/local/bin/exitwatch"));
    assert_accepted("deploy/exitwatch.service", &words.collect::<Vec<_>>());

    let containerfile = read("Containerfile");
    let cmd = containerfile
        .lines()
        .find_map(|line| line.strip_prefix("CMD "))
        .expect("the Containerfile has a CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD is a JSON array");
    assert_accepted("Containerfile", &cmd);
}

/// The DaemonSet runs the Containerfile's image at this release, with the unit's
/// capabilities, the node name, a liveness probe and read-only mounts; the PodMonitor
/// scrapes its pods.
#[test]
fn the_daemonset_and_podmonitor_fit_together() {
    let daemonset = yaml("deploy/daemonset.yaml");
    let pod = &daemonset["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        format!("ghcr.io/exitwatch/exitwatch:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(pod["spec"]["hostPID"], true);
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    let mut granted: Vec<String> = strings(&security["capabilities"]["add"])
        .iter()
        .map(|cap| format!("CAP_{cap}"))
        .collect();
    granted.sort();
    let unit = read("deploy/exitwatch.service");
    let mut unit_caps: Vec<String> = unit
        .lines()
        .find_map(|line| line.strip_prefix("AmbientCapabilities="))
        .expect("the unit grants ambient capabilities")
        .split_whitespace()
        .map(String::from)
        .collect();
    unit_caps.sort();
    assert_eq!(
        granted, unit_caps,
        "the DaemonSet and the unit grant the same"
    );
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);

    let env = container["env"].as_array().expect("env");
    assert!(
        env.iter().any(|var| var["name"] == "NODE_NAME"
            && var["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
        "NODE_NAME from the downward API: {env:?}"
    );
    let liveness = &container["livenessProbe"]["httpGet"];
    assert_eq!(liveness["path"], "/healthz");
    assert_eq!(liveness["port"], "metrics");
    for mount in container["volumeMounts"].as_array().expect("volumeMounts") {
        assert_eq!(mount["readOnly"], true, "{mount}");
    }
    assert_eq!(container["ports"][0]["name"], "metrics");

    let monitor = yaml("deploy/podmonitor.yaml");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "PodMonitor");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        pod["metadata"]["labels"]
    );
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["scheme"], "https");
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected a list, found {value}"))
        .iter()
        .map(|item| {
            item.as_str()
                .unwrap_or_else(|| panic!("expected a string, found {item}"))
                .to_string()
        })
        .collect()
}

/// `args` (`run --flag value ...`) as the agent parses them: clap checks every flag
/// and value before it answers the `--help` at the end, so only a command line it
/// would run exits 0.
fn assert_accepted(source: &str, args: &[String]) {
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "{source}: {args:?}"
    );
    let mut checked: Vec<&str> = args.iter().map(String::as_str).collect();
    checked.push("--help");
    let output = common::exitwatch(&checked);
    assert!(
        output.status.success(),
        "{source}: the agent refuses {args:?}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
