//! One-shot commands that do not run the agent.
pub mod explain;
pub mod incidents;
