//! The incident API as the benchmark reads it: only the fields it uses, so that it needs
//! no agent crate. Fields the agent adds are ignored; one it drops or retypes fails the
//! parse, as a test would.
use serde::Deserialize;

/// The body of `/api/v1/incidents`.
#[derive(Clone, Debug, Deserialize)]
pub struct IncidentList {
    pub incidents: Vec<Incident>,
}

/// One incident: the processes it names and its RFC 3339 (UTC) timestamps.
#[derive(Clone, Debug, Deserialize)]
pub struct Incident {
    pub pids: Vec<i32>,
    pub started_at: String,
    pub detected_at: String,
}

impl Incident {
    pub fn involves(&self, pid: i32) -> bool {
        self.pids.contains(&pid)
    }
}
