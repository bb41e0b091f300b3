//! A self-refreshing HTML status page, usable without Grafana.
use std::fmt::Write;

use crate::{
    clock::Clock,
    daemon::Config,
    incidents::{rfc3339, Incident, IncidentThread, State},
    stacks::Stack,
};

pub fn render(incidents: &[Incident], config: &Config, host: &str) -> String {
    let clock = Clock::now();
    let active: Vec<&Incident> = incidents
        .iter()
        .filter(|i| i.state == State::Active)
        .collect();
    let recent: Vec<&Incident> = incidents
        .iter()
        .filter(|i| i.state == State::Resolved)
        .collect();
    let host = escape(host);
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\"><title>exitwatch · {host}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse;width:100%;margin-bottom:2em}}\
         th,td{{border-bottom:1px solid #ddd;padding:.4em;text-align:left;vertical-align:top}}\
         th{{background:#f4f4f4}}.active{{color:#b00;font-weight:bold}}\
         .nowrap{{white-space:nowrap}}small{{color:#555}}\
         </style></head><body><h1>exitwatch · {host}</h1>"
    );
    let _ = write!(
        html,
        "<p>Hang threshold {}; this page refreshes every 5 s. \
         <a href=\"/metrics\">metrics</a> · <a href=\"/api/v1/incidents\">incidents JSON</a></p>",
        humantime::format_duration(config.hang_after)
    );
    section(
        &mut html,
        &clock,
        "Active incidents",
        &active,
        "No process is hung at exit.",
    );
    section(&mut html, &clock, "Recent incidents", &recent, "None yet.");
    html.push_str("</body></html>");
    html
}

fn section(html: &mut String, clock: &Clock, title: &str, incidents: &[&Incident], empty: &str) {
    let _ = write!(html, "<h2>{title} ({})</h2>", incidents.len());
    if incidents.is_empty() {
        let _ = write!(html, "<p>{empty}</p>");
        return;
    }
    html.push_str(
        "<table><tr><th>id</th><th>kind</th><th>processes and waits</th><th>hung for</th>\
         <th>state</th><th>what happened</th></tr>",
    );
    for incident in incidents {
        let mut processes: Vec<String> = incident
            .processes
            .iter()
            .map(|p| {
                let mut waits: Vec<String> = p
                    .threads
                    .iter()
                    .filter(|t| t.wait != "running")
                    .map(thread_wait)
                    .collect();
                waits.extend(more(p.threads_omitted, "thread"));
                // A workload all processes share is shown once, above them.
                let workload = match incident.workload {
                    Some(_) => None,
                    None => p.workload.phrase(),
                };
                format!(
                    "<code>{} ({})</code>{}{}",
                    escape(&p.comm),
                    p.pid,
                    workload.map_or_else(String::new, |w| format!(
                        " <small>in {}</small>",
                        escape(&w)
                    )),
                    waits.concat()
                )
            })
            .collect();
        processes.extend(more(incident.processes_omitted, "process"));
        if let Some(shared) = incident.workload.as_ref().and_then(|w| w.phrase()) {
            processes.insert(0, format!("<small>in {}</small>", escape(&shared)));
        }
        let (state, until) = match incident.state {
            State::Active => (
                "<span class=\"active\">active</span>".to_string(),
                clock.wall,
            ),
            State::Resolved => {
                let ended = incident
                    .ended
                    .map(|e| format!(" ({})", e.as_str()))
                    .unwrap_or_default();
                let at = incident
                    .resolved_at
                    .map(rfc3339::format)
                    .unwrap_or_default();
                (
                    format!("resolved{ended}<br><small>{}</small>", escape(&at)),
                    incident.resolved_at.unwrap_or(clock.wall),
                )
            }
        };
        let hung_for = until
            .duration_since(incident.started_at)
            .map(|d| humantime::format_duration(std::time::Duration::from_secs(d.as_secs())))
            .map_or_else(|_| String::new(), |d| d.to_string());
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"nowrap\">{}</td><td class=\"nowrap\">{}</td>\
             <td class=\"nowrap\" title=\"since {}\">{hung_for}</td><td class=\"nowrap\">{state}</td>\
             <td>{}</td></tr>",
            incident.id,
            escape(incident.kind.as_str()),
            processes.join("<br>"),
            escape(&rfc3339::format(incident.started_at)),
            escape(&incident.summary),
        );
    }
    html.push_str("</table>");
}

/// A stack, collapsed: one line per frame, innermost first.
fn stack_details(stack: &Stack) -> String {
    let frames: Vec<String> = stack
        .frames
        .iter()
        .map(|frame| escape(&frame.to_string()))
        .collect();
    format!(
        "<details><summary><small>stack ({} frames{})</small></summary><pre>{}</pre></details>",
        frames.len(),
        if stack.complete { "" } else { ", cut" },
        frames.join("\n")
    )
}

/// "… and N more things", for the parts of an incident it does not describe.
fn more(count: usize, thing: &str) -> Option<String> {
    let plural = match (count, thing.ends_with('s')) {
        (1, _) => "",
        (_, true) => "es",
        (_, false) => "s",
    };
    (count > 0).then(|| format!("<br><small>… and {count} more {thing}{plural}</small>"))
}

/// A waiting thread: its tid (and Python name), wait and time, then its stack.
fn thread_wait(t: &IncidentThread) -> String {
    let name = t
        .python_thread
        .as_deref()
        .map(|name| format!(" \"{}\"", escape(name)))
        .unwrap_or_default();
    format!(
        "<br><small>tid {}{name} · {} · {:.0} s</small>{}",
        t.tid,
        t.wait,
        t.blocked_seconds,
        t.stack.as_ref().map(stack_details).unwrap_or_default()
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::{more, stack_details, thread_wait, IncidentThread, Stack};
    use crate::pid::Pid;

    #[test]
    fn stacks_are_collapsed_and_their_names_escaped() {
        use crate::stacks::model::{Frame, FrameKind};
        let frame = |function: &str| Frame {
            kind: FrameKind::Native,
            function: Some(function.into()),
            file: Some("prog.c".into()),
            line: Some(12),
            module: Some("prog".into()),
            offset: 0x1189,
        };
        let stack = Stack {
            frames: vec![frame("<script>alert(1)</script>"), frame("main")],
            complete: false,
            python_thread: None,
        };
        let html = stack_details(&stack);
        assert!(html.starts_with("<details><summary>"), "{html}");
        assert!(html.contains("stack (2 frames, cut)"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; at prog.c:12 (prog+0x1189)\nmain at prog.c:12"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
    }

    #[test]
    fn omitted_parts_are_counted_in_words() {
        assert_eq!(more(0, "thread"), None);
        assert_eq!(
            more(1, "process").as_deref(),
            Some("<br><small>… and 1 more process</small>")
        );
        assert_eq!(
            more(469, "process").as_deref(),
            Some("<br><small>… and 469 more processes</small>")
        );
        assert_eq!(
            more(2, "thread").as_deref(),
            Some("<br><small>… and 2 more threads</small>")
        );
    }

    #[test]
    fn a_threads_python_name_is_shown_escaped() {
        let mut thread = IncidentThread {
            tid: Pid::from_raw(21),
            wait: "futex".into(),
            state: "S".into(),
            wchan: "futex_do_wait".into(),
            blocked_seconds: 4.0,
            pipe: None,
            fd: None,
            target_pid: None,
            timed: Some(false),
            stuck: true,
            python_thread: Some("<b>uploader</b>".into()),
            stack: None,
        };
        let html = thread_wait(&thread);
        assert!(
            html.contains("tid 21 \"&lt;b&gt;uploader&lt;/b&gt;\" · futex"),
            "{html}"
        );
        thread.python_thread = None;
        assert!(thread_wait(&thread).contains("tid 21 · futex"));
    }
}
