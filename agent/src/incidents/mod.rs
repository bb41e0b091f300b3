//! Incidents: findings that persist across scans get an id, a start, an end, and a story.
mod model;
pub(crate) mod rfc3339;
mod store;
mod stream;

pub use crate::stacks::model::{Frame, FrameKind, Stack};
pub use crate::workload::Workload;
pub use model::{Ending, Incident, IncidentList, IncidentProcess, IncidentThread, State};
pub(crate) use store::{describe, Store, MAX_ACTIVE};
pub(crate) use stream::{EventCounters, EventStream};
