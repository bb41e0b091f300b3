//! `exitwatch incidents`: a running agent's incidents as a table.
use anyhow::{Context, Result};
use serde::Deserialize;

use crate::{
    incidents::{Incident, State},
    text::printable,
};

#[derive(Deserialize)]
struct Response {
    incidents: Vec<Incident>,
}

pub fn print(agent: &str, json: bool) -> Result<()> {
    let url = format!("{}/api/v1/incidents", agent.trim_end_matches('/'));
    let body = ureq::get(&url)
        .timeout(std::time::Duration::from_secs(10))
        .call()
        .with_context(|| format!("asking the agent at {agent} (is `exitwatch run` running?)"))?
        .into_string()
        .context("reading the agent's answer")?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let response: Response =
        serde_json::from_str(&body).context("the agent's answer is not an incident list")?;
    print!("{}", table(&response.incidents));
    Ok(())
}

fn table(incidents: &[Incident]) -> String {
    if incidents.is_empty() {
        return "no incidents\n".to_string();
    }
    let rows: Vec<[String; 6]> = incidents
        .iter()
        .map(|i| {
            let state = match i.state {
                State::Active => "active".to_string(),
                State::Resolved => format!(
                    "resolved ({})",
                    i.ended
                        .map(|e| format!("{e:?}").to_lowercase())
                        .unwrap_or_default()
                ),
            };
            let pids: Vec<String> = i.pids.iter().map(i32::to_string).collect();
            [
                i.id.to_string(),
                i.kind.clone(),
                state,
                pids.join(","),
                i.started_at.clone(),
                printable(&i.summary).into_owned(),
            ]
        })
        .collect();
    let header = ["ID", "KIND", "STATE", "PIDS", "STARTED", "SUMMARY"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row).take(5) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i < 5 {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header);
    for row in &rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}
