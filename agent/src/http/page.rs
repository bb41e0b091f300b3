//! A self-refreshing HTML status page, usable without Grafana.
use std::fmt::Write;

use crate::{
    daemon::Config,
    incidents::{Incident, State},
};

pub fn render(incidents: &[Incident], config: &Config) -> String {
    let active: Vec<&Incident> = incidents
        .iter()
        .filter(|i| i.state == State::Active)
        .collect();
    let recent: Vec<&Incident> = incidents
        .iter()
        .filter(|i| i.state == State::Resolved)
        .collect();
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\"><title>exitwatch</title><style>\
         body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
         table{border-collapse:collapse;width:100%;margin-bottom:2em}\
         th,td{border-bottom:1px solid #ddd;padding:.4em;text-align:left;vertical-align:top}\
         th{background:#f4f4f4}.active{color:#b00;font-weight:bold}code{font-size:90%}\
         </style></head><body><h1>exitwatch</h1>",
    );
    let _ = write!(
        html,
        "<p>Hang threshold {}; this page refreshes every 5 s. \
         <a href=\"/metrics\">metrics</a> · <a href=\"/api/v1/incidents\">incidents JSON</a></p>",
        humantime::format_duration(config.hang_after)
    );
    section(
        &mut html,
        "Active incidents",
        &active,
        "No process is hung at exit.",
    );
    section(&mut html, "Recent incidents", &recent, "None yet.");
    html.push_str("</body></html>");
    html
}

fn section(html: &mut String, title: &str, incidents: &[&Incident], empty: &str) {
    let _ = write!(html, "<h2>{title} ({})</h2>", incidents.len());
    if incidents.is_empty() {
        let _ = write!(html, "<p>{empty}</p>");
        return;
    }
    html.push_str(
        "<table><tr><th>id</th><th>kind</th><th>processes</th><th>started</th>\
         <th>state</th><th>what happened</th></tr>",
    );
    for incident in incidents {
        let processes: Vec<String> = incident
            .processes
            .iter()
            .map(|p| {
                let waits: Vec<String> = p
                    .threads
                    .iter()
                    .filter(|t| t.wait != "running")
                    .map(|t| format!("{} {} {:.0}s", t.tid, t.wait, t.blocked_seconds))
                    .collect();
                format!(
                    "<code>{} ({})</code><br><small>{}</small>",
                    escape(&p.comm),
                    p.pid,
                    escape(&waits.join(", "))
                )
            })
            .collect();
        let state = match incident.state {
            State::Active => "<span class=\"active\">active</span>".to_string(),
            State::Resolved => format!(
                "resolved {}",
                escape(incident.resolved_at.as_deref().unwrap_or(""))
            ),
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{state}</td><td>{}</td></tr>",
            incident.id,
            escape(&incident.kind),
            processes.join("<br>"),
            escape(&incident.started_at),
            escape(&incident.summary),
        );
    }
    html.push_str("</table>");
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
