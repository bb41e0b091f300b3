//! exitwatch: finds processes hung at exit, says why, exports it to Prometheus.
//!
//! The `exitwatch` binary parses its command line and calls [`daemon::run`],
//! [`commands::incidents::print`] or [`commands::explain::print`]; the integration tests
//! read the API back as [`incidents::Incident`]. Everything else stays inside the crate.
pub mod args;
mod clock;
pub mod commands;
pub mod daemon;
mod elf;
pub mod graph;
mod http;
pub mod incidents;
pub mod logging;
mod metrics;
pub mod pid;
mod probes;
mod procfs;
mod scan;
mod stacks;
mod text;
mod workload;
