//! exitwatch: finds processes hung at exit, says why, exports it to Prometheus.
mod clock;
mod commands;
mod daemon;
mod elf;
mod graph;
mod http;
mod incidents;
mod logging;
mod metrics;
mod probes;
mod procfs;
mod scan;
mod text;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "exitwatch",
    version,
    about = "Finds processes hung at exit and says why"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load the probes, scan, serve /metrics and the incident API.
    Run(daemon::Config),
    /// Print the incidents of a running agent.
    Incidents(commands::incidents::Options),
    /// Explain, from /proc alone, why a process does not exit (no agent needed).
    Explain {
        pid: i32,
        /// Waits shorter than this are not considered stuck.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        hang_after: Duration,
    },
}

/// Parses `10s`, `1500ms`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(duration)
}

pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("{e}: expected ADDRESS:PORT, e.g. 0.0.0.0:9977 or [::1]:9977"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(config) => {
            logging::init(config.log_format);
            daemon::run(config)
        }
        Command::Incidents(options) => commands::incidents::print(&options),
        Command::Explain { pid, hang_after } => commands::explain::print(pid, hang_after),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("exitwatch: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
