//! `exitwatch incidents`: a running agent's incidents as a table.
use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Args;
use rustls::{pki_types::pem::PemObject, pki_types::CertificateDer, RootCertStore};

use crate::{
    incidents::{rfc3339, Incident, IncidentList, State},
    pid::Pid,
    text::printable,
};

/// The basic auth password comes from here, never from the command line (which every
/// local user can read in /proc).
pub const PASSWORD_ENV: &str = "EXITWATCH_AGENT_PASSWORD";

/// A large answer over a slow link still arrives; a stalled agent does not hang the CLI.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct Options {
    /// Base URL of the agent (https:// for an agent with a TLS web config).
    #[arg(long, default_value = "http://127.0.0.1:9977")]
    agent: String,
    /// CA certificate(s) (PEM) that the agent's certificate must chain to, instead of
    /// the built-in web roots.
    #[arg(long, value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// Basic auth user; the password is read from $EXITWATCH_AGENT_PASSWORD.
    #[arg(long)]
    user: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn print(options: &Options) -> Result<()> {
    let agent = &options.agent;
    let url = format!("{}/api/v1/incidents", agent.trim_end_matches('/'));
    let mut request = client(options.ca_file.as_deref())?
        .get(&url)
        .timeout(TIMEOUT);
    if let Some(authorization) = authorization(options.user.as_deref())? {
        request = request.set("Authorization", &authorization);
    }
    let body = request
        .call()
        .with_context(|| format!("asking the agent at {agent} (is `exitwatch run` running?)"))?
        .into_reader();
    // Streamed, not buffered into a string: the answer may be of any size.
    if options.json {
        let mut out = io::stdout().lock();
        io::copy(&mut io::BufReader::new(body), &mut out).context("reading the agent's answer")?;
        writeln!(out)?;
        return Ok(());
    }
    let response: IncidentList = serde_json::from_reader(io::BufReader::new(body))
        .context("the agent's answer is not an incident list")?;
    print!("{}", table(&response.incidents));
    Ok(())
}

fn client(ca_file: Option<&Path>) -> Result<ureq::Agent> {
    let Some(ca_file) = ca_file else {
        return Ok(ureq::agent());
    };
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading --ca-file {}", ca_file.display()))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        bail!(
            "--ca-file {}: no usable certificate in it",
            ca_file.display()
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(ureq::AgentBuilder::new().tls_config(Arc::new(tls)).build())
}

fn authorization(user: Option<&str>) -> Result<Option<String>> {
    let password = std::env::var(PASSWORD_ENV).ok();
    match (user, password) {
        (None, None) => Ok(None),
        (None, Some(_)) => bail!("${PASSWORD_ENV} is set: name the user with --user"),
        (Some(_), None) => bail!("--user needs the password in ${PASSWORD_ENV}"),
        (Some(user), Some(password)) => {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            Ok(Some(format!("Basic {encoded}")))
        }
    }
}

fn table(incidents: &[Incident]) -> String {
    if incidents.is_empty() {
        return "no incidents\n".to_string();
    }
    let rows: Vec<[String; 6]> = incidents
        .iter()
        .map(|i| {
            let state = match (i.state, i.ended) {
                (State::Resolved, Some(ended)) => format!("resolved ({})", ended.as_str()),
                (state, _) => state.as_str().to_string(),
            };
            let pids: Vec<String> = i.pids.iter().map(Pid::to_string).collect();
            [
                i.id.to_string(),
                i.kind.as_str().to_string(),
                state,
                pids.join(","),
                rfc3339::format(i.started_at),
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
