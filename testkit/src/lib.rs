//! What the integration tests (`agent/tests`) and `cargo xtask bench` both do to the
//! agent and to the programs it watches: start an `exitwatch run` and wait until it
//! serves, start a hanging program and learn its pids from the `READY` line it prints,
//! and stop either one, by a signal first and SIGKILL if it lingers; and populate the host
//! with idle threads and pipe readers for scale tests. Everything returns a
//! `Result`: the tests turn errors into panics with context, the bench into reports.
mod agent;
mod c_program;
mod error;
pub mod incidents;
mod population;
mod process;
mod subject;

pub use agent::{bound_url, AgentProcess};
pub use c_program::compile_c;
pub use error::Error;
pub use population::{Population, PopulationSize};
pub use process::{signal, stop, wait_for_exit};
pub use subject::Subject;
