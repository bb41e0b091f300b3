//! Turning what the probes recorded into a verified [`Snapshot`](crate::graph::Snapshot):
//! every candidate is checked against `/proc` before the graph sees it.
mod cmdline;
mod collect;
mod exit_stack;
mod seed;
mod wait;

pub use collect::{collect, KernelView, Options};
pub use exit_stack::ExitStacks;
pub use seed::blocked_from_proc;
