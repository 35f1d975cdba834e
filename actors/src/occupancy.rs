//! The live occupancy of one engine (its "load", as `EngineLoad` names it): sequences in its
//! batch, requests waiting for room and the KV-cache tokens reserved, written by its engine actor as they change and read by the
//! controller when it lists engines (never a message to a busy engine).

use std::sync::Mutex;

use crate::batch::KvUsage;

/// What an engine holds now, as its engine actor last wrote it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadNow {
    /// Sequences in the running batch (0 or 1 for an engine that does not batch).
    pub running: usize,
    /// Requests in the engine actor's queue, waiting for KV-cache room in the batch.
    pub waiting_for_room: usize,
    /// The batch's KV-cache reservation and budget.
    pub kv: KvUsage,
}

/// Shared by an engine actor (the writer, on its worker's thread) and the controller.
#[derive(Debug, Default)]
pub struct EngineLoad(Mutex<LoadNow>);

impl EngineLoad {
    /// A load with nothing running under `kv`'s budget.
    pub fn new(kv: KvUsage) -> Self {
        Self(Mutex::new(LoadNow {
            kv,
            ..LoadNow::default()
        }))
    }

    /// The load now; the fields were written together, so they agree with each other.
    pub fn now(&self) -> LoadNow {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the whole load.
    pub(crate) fn set(&self, now: LoadNow) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }

    /// Changes only the count waiting for room.
    pub(crate) fn set_waiting(&self, waiting_for_room: usize) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting_for_room = waiting_for_room;
    }

    /// Changes only the count running (an engine that does not batch).
    pub(crate) fn set_running(&self, running: usize) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).running = running;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_updates_keep_the_other_fields() {
        let kv = KvUsage {
            reserved_tokens: 0,
            budget_tokens: 100,
        };
        let load = EngineLoad::new(kv);
        load.set_waiting(3);
        load.set_running(1);
        assert_eq!(
            load.now(),
            LoadNow {
                running: 1,
                waiting_for_room: 3,
                kv
            }
        );
        let full = LoadNow {
            running: 2,
            waiting_for_room: 0,
            kv: KvUsage {
                reserved_tokens: 80,
                budget_tokens: 100,
            },
        };
        load.set(full);
        assert_eq!(load.now(), full);
        assert_eq!(load.now().kv.fraction(), 0.8);
    }

    #[test]
    fn no_budget_is_no_usage() {
        assert_eq!(KvUsage::default().fraction(), 0.0);
    }
}
