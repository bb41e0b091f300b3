//! The Grafana dashboard and the Prometheus rules in `dashboards/` follow the project's
//! conventions and only name metrics the agent exports. No privileges needed; `promtool`
//! (Debian package `prometheus`) must be installed: the rule tests fail without it.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// Range functions whose window must follow Grafana's scrape-aware `$__rate_interval`.
const RANGE_FUNCTIONS: [&str; 4] = ["rate", "irate", "increase", "delta"];

const DATASOURCE_UID: &str = "${datasource}";

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the agent crate lives inside the workspace")
        .join("dashboards")
}

fn dashboard() -> Value {
    let path = dashboards_dir().join("exitwatch.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    assert!(!out.is_empty(), "the dashboard has no panels");
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn title(panel: &Value) -> String {
    panel["title"].as_str().unwrap_or("<untitled>").to_string()
}

/// `(panel title, expression)` for every target of every panel.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target of {:?} has no expr", title(panel)));
            out.push((title(panel), expr.to_string()));
        }
    }
    out
}

/// The metric names the agent exports, read from the source so that a rename breaks
/// this test: every `"exitwatch_…"` and `"process_…"` literal in `src/metrics/`
/// (histograms also expose `_bucket`, `_sum` and `_count`).
fn known_metrics() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    let source: String = files
        .iter()
        .map(|file| {
            std::fs::read_to_string(file)
                .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
        })
        .collect();
    let mut names: BTreeSet<String> = string_literals(&source)
        .into_iter()
        .filter(|s| {
            (s.starts_with("exitwatch_") || s.starts_with("process_"))
                && s.chars().all(is_name_char)
        })
        .collect();
    assert!(
        names.len() >= 10,
        "found only {names:?} in {}: did the metric definitions move?",
        path.display()
    );
    // Histograms: those built with `HistogramOpts`, and custom collectors (`Desc::new`)
    // when the file emits `MetricType::HISTOGRAM` families (the kernel's wait histogram).
    let mut constructors = vec!["HistogramOpts::new("];
    if source.contains("MetricType::HISTOGRAM") {
        constructors.push("Desc::new(");
    }
    let mut histograms = 0;
    for constructor in constructors {
        for (at, _) in source.match_indices(constructor) {
            let name = string_literals(&source[at..])
                .into_iter()
                .next()
                .expect("a histogram name");
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
            histograms += 1;
        }
    }
    assert!(histograms >= 2, "no histograms found in {}", path.display());
    names
}

/// The contents of `"…"` literals, in order (no escapes occur in metric names).
fn string_literals(source: &str) -> Vec<String> {
    source
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The expression with the contents of string literals removed.
fn without_strings(expr: &str) -> String {
    let mut out = String::new();
    let mut in_string = false;
    for c in expr.chars() {
        if c == '"' {
            in_string = !in_string;
            out.push(c);
        } else if !in_string {
            out.push(c);
        }
    }
    out
}

/// Identifiers of the expression (outside string literals) and the character after
/// each, skipping whitespace.
fn identifiers(expr: &str) -> Vec<(String, Option<char>)> {
    let code = without_strings(expr);
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let starts = (c.is_ascii_alphabetic() || c == '_')
            && (i == 0 || !(is_name_char(chars[i - 1]) || chars[i - 1] == '$'));
        if !starts {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_name_char(chars[i]) {
            i += 1;
        }
        let next = chars[i..].iter().copied().find(|c| !c.is_whitespace());
        out.push((chars[start..i].iter().collect(), next));
    }
    out
}

/// Names used as metric selectors: every identifier followed by `{`, and every
/// identifier that looks like one of the agent's metrics.
fn metric_names(expr: &str) -> Vec<String> {
    identifiers(expr)
        .into_iter()
        .filter(|(name, next)| {
            *next == Some('{') || name.starts_with("exitwatch_") || name.starts_with("process_")
        })
        .map(|(name, _)| name)
        .collect()
}

/// The argument text of every call of `function(` in the expression.
fn call_arguments<'a>(expr: &'a str, function: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let pattern = format!("{function}(");
    for (at, _) in expr.match_indices(&pattern) {
        let preceded_by_name = expr[..at].chars().next_back().is_some_and(is_name_char);
        if preceded_by_name {
            continue; // e.g. `irate(` when looking for `rate(`
        }
        let open = at + pattern.len();
        let mut depth = 1;
        let mut end = None;
        for (offset, c) in expr[open..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(open + offset);
                        break;
                    }
                }
                _ => {}
            }
        }
        let end = end.unwrap_or_else(|| panic!("unbalanced parentheses in {expr}"));
        out.push(&expr[open..end]);
    }
    out
}

/// Collects violations and fails once, listing all of them.
struct Violations(Vec<String>);

impl Violations {
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }

    fn assert_none(self, what: &str) {
        assert!(
            self.0.is_empty(),
            "{what}: {} violation(s):\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

#[test]
fn dashboard_has_a_fixed_uid_and_the_three_variables() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "exitwatch", "the uid must stay fixed");
    assert_eq!(dashboard["title"], "exitwatch");
    let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
    assert!(
        (36..=41).contains(&schema),
        "schemaVersion {schema}: expected a current Grafana schema (36..=41)"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name:?}"))
    };

    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");

    let known = known_metrics();
    for (name, wanted) in [
        ("job", "label_values(exitwatch_build_info, job)"),
        (
            "instance",
            "label_values(exitwatch_build_info{job=\"$job\"}, instance)",
        ),
    ] {
        let v = variable(name);
        assert_eq!(v["type"], "query", "variable {name}");
        assert_eq!(v["datasource"]["type"], "prometheus", "variable {name}");
        assert_eq!(v["datasource"]["uid"], DATASOURCE_UID, "variable {name}");
        assert_eq!(v["definition"], wanted, "variable {name}");
        assert_eq!(v["query"]["query"], wanted, "variable {name}");
        for metric in metric_names(wanted) {
            assert!(
                known.contains(&metric),
                "variable {name} uses {metric}, not exported"
            );
        }
    }
    let instance = variable("instance");
    assert_eq!(instance["multi"], true, "instance allows several agents");
    assert_eq!(instance["includeAll"], true);
    assert_eq!(
        instance["allValue"], ".*",
        "`All` must be a regex for instance=~"
    );
}

#[test]
fn every_panel_has_the_datasource_variable_a_unit_and_a_description() {
    let dashboard = dashboard();
    let mut violations = Violations(Vec::new());
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let name = title(panel);
        let id = panel["id"].as_u64();
        violations.check(id.is_some_and(|id| ids.insert(id)), || {
            format!("{name:?}: missing or duplicate id {:?}", panel["id"])
        });
        violations.check(panel["gridPos"]["w"].as_u64().is_some(), || {
            format!("{name:?}: no gridPos")
        });
        if is_row(panel) {
            violations.check(panel.get("targets").is_none(), || {
                format!("row {name:?} has targets")
            });
            continue;
        }
        violations.check(panel["datasource"]["type"] == "prometheus", || {
            format!("{name:?}: datasource type {}", panel["datasource"]["type"])
        });
        violations.check(panel["datasource"]["uid"] == DATASOURCE_UID, || {
            format!("{name:?}: datasource uid {}", panel["datasource"]["uid"])
        });
        let unit = panel["fieldConfig"]["defaults"]["unit"].as_str();
        violations.check(unit.is_some_and(|u| !u.is_empty()), || {
            format!("{name:?}: no fieldConfig.defaults.unit")
        });
        let description = panel["description"].as_str().unwrap_or_default();
        violations.check(description.len() >= 20, || {
            format!("{name:?}: no useful description ({description:?})")
        });
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        violations.check(!targets.is_empty(), || format!("{name:?}: no targets"));
        let mut refs = BTreeSet::new();
        for target in &targets {
            violations.check(target["datasource"]["type"] == "prometheus", || {
                format!("{name:?}: target datasource type {}", target["datasource"])
            });
            violations.check(target["datasource"]["uid"] == DATASOURCE_UID, || {
                format!("{name:?}: target datasource uid {}", target["datasource"])
            });
            let reference = target["refId"].as_str().unwrap_or_default().to_string();
            violations.check(
                !reference.is_empty() && refs.insert(reference.clone()),
                || format!("{name:?}: missing or duplicate refId {reference:?}"),
            );
        }
    }
    violations.assert_none("panel conventions");
}

#[test]
fn every_selector_filters_on_job_and_instance() {
    let dashboard = dashboard();
    let mut violations = Violations(Vec::new());
    for (panel, expr) in expressions(&dashboard) {
        for (name, next) in identifiers(&expr) {
            if name.starts_with("exitwatch_") || name.starts_with("process_") {
                violations.check(next == Some('{'), || {
                    format!("{panel:?}: {name} has no label matchers in {expr}")
                });
            }
        }
        for (at, _) in expr.match_indices('{') {
            let matchers = &expr[at..expr[at..].find('}').map_or(expr.len(), |end| at + end)];
            violations.check(
                matchers.contains("job=\"$job\"") && matchers.contains("instance=~\"$instance\""),
                || {
                    format!(
                        "{panel:?}: selector {matchers}}} lacks job=\"$job\" and \
                         instance=~\"$instance\" in {expr}"
                    )
                },
            );
        }
    }
    violations.assert_none("job/instance filters");
}

#[test]
fn every_range_uses_rate_interval() {
    let dashboard = dashboard();
    let mut violations = Violations(Vec::new());
    let mut calls = 0;
    for (panel, expr) in expressions(&dashboard) {
        for function in RANGE_FUNCTIONS {
            for argument in call_arguments(&expr, function) {
                calls += 1;
                violations.check(argument.trim_end().ends_with("[$__rate_interval]"), || {
                    format!("{panel:?}: {function}({argument}) does not use [$__rate_interval]")
                });
            }
        }
        let code = without_strings(&expr);
        for (at, _) in code.match_indices('[') {
            violations.check(code[at..].starts_with("[$__rate_interval]"), || {
                format!("{panel:?}: a range other than [$__rate_interval] in {expr}")
            });
        }
    }
    assert!(
        calls >= 5,
        "expected rate()/increase() panels, found {calls}"
    );
    violations.assert_none("range windows");
}

#[test]
fn every_metric_the_dashboard_names_is_exported() {
    let dashboard = dashboard();
    let known = known_metrics();
    let mut violations = Violations(Vec::new());
    let mut used = BTreeSet::new();
    for (panel, expr) in expressions(&dashboard) {
        let names = metric_names(&expr);
        violations.check(!names.is_empty(), || {
            format!("{panel:?}: no metric in {expr}")
        });
        for name in names {
            violations.check(known.contains(&name), || {
                format!("{panel:?}: {name} is not exported by the agent (metrics/mod.rs)")
            });
            used.insert(name);
        }
    }
    violations.assert_none("metric names");
    // The panels the dashboard exists for.
    for wanted in [
        "exitwatch_incidents_active",
        "exitwatch_active_incident_info",
        "exitwatch_incidents_total",
        "exitwatch_blocked_threads",
        "exitwatch_incident_duration_seconds_bucket",
        "exitwatch_exit_phase_processes",
        "exitwatch_exit_phase_entries_total",
        "exitwatch_bpf_program_run_time_seconds_total",
        "exitwatch_ringbuf_dropped_events_total",
        "exitwatch_map_insert_failures_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "exitwatch_scan_duration_seconds_bucket",
        "exitwatch_blocked_wait_duration_seconds_bucket",
    ] {
        assert!(used.contains(wanted), "no panel shows {wanted}");
    }
}

#[test]
fn heatmap_reads_buckets_by_le_and_tables_are_instant() {
    let dashboard = dashboard();
    let all = panels(&dashboard);
    let heatmaps: Vec<&&Value> = all.iter().filter(|p| p["type"] == "heatmap").collect();
    assert!(!heatmaps.is_empty(), "no heatmap panel");
    for panel in heatmaps {
        assert_eq!(panel["options"]["calculate"], false, "{}", title(panel));
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                expr.contains("_bucket{") && expr.contains("by (le)"),
                "{}: {expr}",
                title(panel)
            );
            assert_eq!(target["format"], "heatmap", "{}", title(panel));
        }
    }
    for panel in all.iter().filter(|p| p["type"] == "table") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(target["instant"], true, "{}", title(panel));
            assert_eq!(target["format"], "table", "{}", title(panel));
        }
    }
}

#[test]
fn the_expression_scanner_sees_what_it_must() {
    let expr = r#"sum by (le) (rate(exitwatch_x_bucket{job="$job", instance=~"$instance"}[$__rate_interval])) / up{job="a_b"}"#;
    assert_eq!(metric_names(expr), vec!["exitwatch_x_bucket", "up"]);
    assert_eq!(
        call_arguments(expr, "rate"),
        vec![r#"exitwatch_x_bucket{job="$job", instance=~"$instance"}[$__rate_interval]"#]
    );
    assert!(call_arguments("irate(x[5m])", "rate").is_empty());
    assert_eq!(without_strings(r#"a{b="c[1m]"}"#), r#"a{b=""}"#);
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dashboards_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install it (Debian package `prometheus`, \
                 `cargo xtask test` does); this test does not skip"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        output.status
    );
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn alert_rules_name_only_exported_metrics() {
    let path = dashboards_dir().join("alerts.yml");
    let rules = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let known = known_metrics();
    let mut violations = Violations(Vec::new());
    let mut alerts = BTreeSet::new();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            alerts.insert(name.trim().to_string());
        }
        if line.trim_start().starts_with('#') {
            continue;
        }
        for (name, _) in identifiers(line) {
            if name.starts_with("exitwatch_") && name.chars().all(is_name_char) {
                violations.check(known.contains(&name), || {
                    format!("alerts.yml uses {name}, which the agent does not export")
                });
            }
        }
    }
    violations.assert_none("alert rule metrics");
    let expected: BTreeSet<String> = [
        "ExitwatchPipeDeadlock",
        "ExitwatchExitHang",
        "ExitwatchPipeHeldByOrphan",
        "ExitwatchDroppingEvents",
        "ExitwatchScansStale",
        "ExitwatchScanErrors",
        "ExitwatchDown",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(alerts, expected);
}
