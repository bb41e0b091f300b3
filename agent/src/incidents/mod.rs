//! Incidents: findings that persist across scans get an id, a start, an end, and a story.
mod model;
pub mod rfc3339;
mod store;

pub use model::{Ending, Incident, State};
pub use store::{Store, MAX_ACTIVE};
