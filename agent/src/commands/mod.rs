//! One-shot commands that do not run the agent.
pub mod incidents;
