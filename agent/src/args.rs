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
