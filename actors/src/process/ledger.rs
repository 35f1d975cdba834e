//! The controller's count of a worker process's batch: which sequences run and the KV-cache
//! tokens they reserve, kept exact while the process steps ahead of the controller.
//!
//! Each admit's answer says what it reserved; a cancel takes that off at once (it is not
//! answered). A step's reported usage is taken as it stands only when the process had handled
//! every admit and cancel sent before the step; an older step's finished sequences take off
//! their own reservations instead.

use std::collections::HashMap;

use crate::batch::{KvUsage, SeqEvent, SeqId};

#[derive(Debug)]
pub(super) struct Ledger {
    kv: KvUsage,
    /// What each running sequence reserved at its admit.
    running: HashMap<SeqId, usize>,
    /// `Admit`s and `CancelSequence`s sent (see [`super::protocol::StepReport::control`]).
    sent: u64,
}

impl Ledger {
    /// Nothing running under `kv`'s budget.
    pub(super) fn new(kv: KvUsage) -> Self {
        Self {
            kv,
            running: HashMap::new(),
            sent: 0,
        }
    }

    /// An `Admit` or a `CancelSequence` is being sent.
    pub(super) fn control_sent(&mut self) {
        self.sent += 1;
    }

    /// The answer to an admit: `share` tokens reserved when admitted, and the budget now.
    pub(super) fn admitted(&mut self, id: SeqId, admitted: bool, share: usize, kv: KvUsage) {
        self.kv.budget_tokens = kv.budget_tokens;
        if admitted {
            self.running.insert(id, share);
            self.kv.reserved_tokens += share;
        }
    }

    /// A sequence cancelled (not answered by the process).
    pub(super) fn cancelled(&mut self, id: SeqId) {
        if let Some(share) = self.running.remove(&id) {
            self.kv.reserved_tokens = self.kv.reserved_tokens.saturating_sub(share);
        }
    }

    /// A step's events, its usage after it, and how many admits and cancels it had seen.
    pub(super) fn stepped(&mut self, events: &[SeqEvent], kv: KvUsage, control: u64) {
        let current = control == self.sent;
        for event in events {
            if let SeqEvent::Finished(id, _) = event {
                if let Some(share) = self.running.remove(id) {
                    if !current {
                        self.kv.reserved_tokens = self.kv.reserved_tokens.saturating_sub(share);
                    }
                }
            }
        }
        if current {
            self.kv = kv;
        }
    }

    /// Whether sequences run (so a step is sure to come).
    pub(super) fn running(&self) -> bool {
        !self.running.is_empty()
    }

    pub(super) fn kv(&self) -> KvUsage {
        self.kv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{EngineError, ErrorKind};

    fn kv(reserved_tokens: usize) -> KvUsage {
        KvUsage {
            reserved_tokens,
            budget_tokens: 100,
        }
    }

    fn finished(id: SeqId) -> SeqEvent {
        SeqEvent::Finished(id, Err(EngineError::new(ErrorKind::Internal, "done")))
    }

    #[test]
    fn admits_and_cancels_count_at_once_and_a_current_step_sets_the_usage() {
        let mut ledger = Ledger::new(kv(0));
        ledger.control_sent();
        ledger.admitted(1, true, 30, kv(30));
        ledger.control_sent();
        ledger.admitted(2, true, 20, kv(50));
        ledger.control_sent();
        ledger.admitted(3, false, 0, kv(50));
        assert_eq!((ledger.kv(), ledger.running()), (kv(50), true));
        // A step that had seen all three: its usage stands (the engine's own view).
        ledger.stepped(&[finished(2)], kv(31), 3);
        assert_eq!(ledger.kv(), kv(31));
        ledger.control_sent();
        ledger.cancelled(1);
        assert_eq!((ledger.kv(), ledger.running()), (kv(1), false));
    }

    #[test]
    fn a_step_older_than_a_cancel_or_admit_does_not_bring_back_what_they_changed() {
        let mut ledger = Ledger::new(kv(0));
        ledger.control_sent();
        ledger.admitted(1, true, 30, kv(30));
        ledger.control_sent();
        ledger.admitted(2, true, 20, kv(50));
        ledger.control_sent();
        ledger.cancelled(1);
        assert_eq!(ledger.kv(), kv(20));
        // Stepped before the cancel arrived: still counts sequence 1.
        ledger.stepped(&[], kv(50), 2);
        assert_eq!(ledger.kv(), kv(20));
        // Stepped before the cancel too, and finished 2: only 2's share comes off.
        ledger.stepped(&[finished(2)], kv(30), 2);
        assert_eq!((ledger.kv(), ledger.running()), (kv(0), false));
        // Stepped after it: taken as it is.
        ledger.stepped(&[], kv(0), 3);
        assert_eq!(ledger.kv(), kv(0));
    }
}
