//! Connection slots: at most `max` connections are open. When all are taken, a new
//! connection takes the slot of the oldest idle one (connecting, trickling a request head,
//! having its password checked, or waiting between keep-alive requests), so clients that
//! only hold connections or guess passwords cannot lock out a scraper; only when every slot
//! is serving an authenticated request is the newcomer refused.
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use tokio::sync::Notify;

pub struct Slots {
    max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Oldest first.
    open: BTreeMap<u64, Arc<Occupant>>,
}

#[derive(Default)]
pub struct Occupant {
    busy: AtomicBool,
    evicted: Notify,
    closed: Notify,
}

pub enum Admission {
    Admitted(Slot),
    /// Admitted in the place of an idle connection, which is being closed: wait for
    /// `Evicted::closed` before accepting more, or descriptors outrun the cap.
    Evicted(Slot, Evicted),
    Refused,
}

pub struct Evicted(Arc<Occupant>);

/// One open connection's place; freed when dropped.
pub struct Slot {
    id: u64,
    slots: Arc<Slots>,
    occupant: Arc<Occupant>,
}

/// Marks its connection as serving a request until dropped.
pub struct Busy(Arc<Occupant>);

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            state: Mutex::default(),
        })
    }

    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut state = self.state();
        let mut evicted = None;
        if state.open.len() >= self.max {
            let idle = state
                .open
                .iter()
                .find(|(_, occupant)| !occupant.busy.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            let Some(occupant) = idle.and_then(|id| state.open.remove(&id)) else {
                return Admission::Refused;
            };
            // Stored as a permit if the connection is not waiting yet.
            occupant.evicted.notify_one();
            evicted = Some(Evicted(occupant));
        }
        let id = state.next_id;
        state.next_id += 1;
        let occupant = Arc::new(Occupant::default());
        state.open.insert(id, occupant.clone());
        let slot = Slot {
            id,
            slots: self.clone(),
            occupant,
        };
        match evicted {
            Some(evicted) => Admission::Evicted(slot, evicted),
            None => Admission::Admitted(slot),
        }
    }

    pub fn open(&self) -> usize {
        self.state().open.len()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Slot {
    /// Completes when a newcomer has taken this connection's place.
    pub async fn evicted(&self) {
        self.occupant.evicted.notified().await;
    }

    pub fn occupant(&self) -> Arc<Occupant> {
        self.occupant.clone()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.state().open.remove(&self.id);
        self.occupant.closed.notify_one();
    }
}

impl Evicted {
    /// Completes when the evicted connection has let go of its slot (and its socket).
    pub async fn closed(self) {
        self.0.closed.notified().await;
    }
}

impl Occupant {
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.store(true, Ordering::Relaxed);
        Busy(self.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(admission: Admission) -> Slot {
        match admission {
            Admission::Admitted(slot) => slot,
            _ => panic!("expected a free slot"),
        }
    }

    #[tokio::test]
    async fn the_oldest_idle_connection_makes_room() {
        let slots = Slots::new(2);
        let first = admitted(slots.admit());
        let second = admitted(slots.admit());
        let _serving = second.occupant().busy();
        let Admission::Evicted(third, evicted) = slots.admit() else {
            panic!("the idle connection was not evicted");
        };
        let within = std::time::Duration::from_secs(1);
        // The first connection learns it was evicted even though it was not waiting yet.
        tokio::time::timeout(within, first.evicted())
            .await
            .expect("the evicted connection is told");
        assert_eq!(slots.open(), 2);
        drop(first);
        tokio::time::timeout(within, evicted.closed())
            .await
            .expect("the newcomer learns that the evicted connection closed");
        assert_eq!(slots.open(), 2, "an evicted slot is no longer counted");
        let _also_serving = third.occupant().busy();
        assert!(matches!(slots.admit(), Admission::Refused));
        drop(third);
        assert_eq!(slots.open(), 1);
        assert!(matches!(slots.admit(), Admission::Admitted(_)));
    }

    #[test]
    fn a_finished_request_makes_its_connection_idle_again() {
        let slots = Slots::new(1);
        let only = admitted(slots.admit());
        drop(only.occupant().busy());
        assert!(matches!(slots.admit(), Admission::Evicted(..)));
    }
}
