//! Parsers for command-line values that more than one subcommand takes.
use std::{net::SocketAddr, time::Duration};

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

/// The environment variable a rejected value came from: clap names the flag
/// (`--hang-after`), but whoever set `EXITWATCH_HANG_AFTER` in a unit file or a manifest
/// has to be told where to look.
pub fn variable_behind(error: &clap::Error, command: &clap::Command) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let (Some(ContextValue::String(flag)), Some(ContextValue::String(value))) = (
        error.get(ContextKind::InvalidArg),
        error.get(ContextKind::InvalidValue),
    ) else {
        return None;
    };
    let long = flag.split_whitespace().next()?.strip_prefix("--")?;
    let commands = std::iter::once(command).chain(command.get_subcommands());
    commands
        .flat_map(clap::Command::get_arguments)
        .filter(|arg| arg.get_long() == Some(long))
        .filter_map(|arg| arg.get_env())
        .find(|variable| std::env::var_os(variable).is_some_and(|set| set == value.as_str()))
        .map(|variable| variable.to_string_lossy().into_owned())
}
