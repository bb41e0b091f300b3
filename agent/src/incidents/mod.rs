//! Incidents: findings that persist across scans get an id, a start, an end, and a story.
mod model;
mod store;

pub use model::{Incident, State};
pub use store::{Store, MAX_ACTIVE};
