//! The wait-for graph: who waits on whom, and which blocked threads nothing can release.
//!
//! Pure functions over a `Snapshot`, so every rule is unit-tested without privileges.
mod analyze;
mod explain;
mod model;
mod orphan;
mod phase;

pub use analyze::Kind;
pub(crate) use analyze::{analysis, analyze, Finding};
pub(crate) use explain::describe;
pub(crate) use model::{ChildTarget, ExitPhase, PipeEnds, Process, Snapshot, Thread, Wait};
pub(crate) use phase::is_asyncio_executor_shutdown;
pub use phase::Phase;

#[cfg(test)]
mod phase_tests;
#[cfg(test)]
mod tests;
