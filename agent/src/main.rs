//! The `exitwatch` command: parses the command line and hands over to the library.
use std::{process::ExitCode, time::Duration};

use clap::{CommandFactory, Parser, Subcommand};
use exitwatch::{
    args::{parse_duration, variable_behind},
    commands, daemon, logging,
};

#[derive(Parser)]
#[command(
    name = "exitwatch",
    version = concat!(env!("CARGO_PKG_VERSION"), " (revision ", env!("EXITWATCH_REVISION"), ")"),
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
        /// The process that does not exit.
        pid: exitwatch::pid::Pid,
        /// Waits shorter than this are not considered stuck.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        hang_after: Duration,
        /// Print the process (its threads, waits and stacks) and findings as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|error| {
        let variable = variable_behind(&error, &Cli::command());
        // --help and --version arrive here too, and print to stdout.
        let _ = error.print();
        if let Some(variable) = variable {
            eprintln!("note: the value comes from the environment variable {variable}");
        }
        std::process::exit(error.exit_code())
    });
    let result = match cli.command {
        Command::Run(config) => {
            logging::init(config.log_format);
            daemon::run(config)
        }
        Command::Incidents(options) => commands::incidents::print(&options),
        Command::Explain {
            pid,
            hang_after,
            json,
        } => commands::explain::print(pid, hang_after, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("exitwatch: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
