//! The worker state machine: a worker slot and every change of its state, each one checking once that the event is current.
//!
//! Events about a worker come back late: a load that finishes after the worker failed and was
//! restarted, a release that answers after a shutdown. Each transition below names the state it
//! expects and, where the event comes from a worker, the incarnation (start) it is about; one
//! that does not hold is refused (it returns `false` or `None`) and changes nothing. Nothing
//! outside this file writes a slot's state.
//!
//! ```text
//! Warming --ready--> Idle --attach_begun--> Attaching --attach_done--> Serving
//!                     ^                         |                        |
//!                     +------attach_abandoned---+                  detach_begun
//!                     +----------------detach_done---- Detaching <-------+
//! any live state --failed--> Restarting --restarted--> Warming (next incarnation)
//!                        \--> Failed (out of restarts)   \--> Stopped (shutting down)
//! any state --stopped--> Stopped
//! ```

use actix::prelude::*;

use crate::backend::{DeviceSpec, MemoryInfo, PrewarmOptions, PrewarmReport};
use crate::reports::{EngineId, WorkerState};
use crate::worker::WorkerActor;

/// What the controller knows about one worker.
pub(super) struct WorkerSlot {
    pub(super) index: usize,
    pub(super) device: DeviceSpec,
    pub(super) options: PrewarmOptions,
    /// Where the worker is in its life; written only by the transitions below.
    state: WorkerState,
    /// Counts starts of this worker; events from older starts are ignored.
    incarnation: u64,
    pub(super) addr: Option<Addr<WorkerActor>>,
    /// The worker's thread; stopped on failure and shutdown.
    pub(super) arbiter: Option<Arbiter>,
    pub(super) prewarm: Option<PrewarmReport>,
    pub(super) memory: Option<MemoryInfo>,
    /// Memory when holding no engine: the capacity an attach can count on.
    pub(super) idle_memory: Option<MemoryInfo>,
    /// The engine held or being attached.
    engine: Option<EngineId>,
    pub(super) failures: u32,
    pub(super) restarts: u32,
    /// Failures since the last successful attach; bounds restarts.
    consecutive_failures: u32,
    pub(super) last_error: Option<String>,
}

/// What a failure took down with the worker, for the controller to clean up.
pub(super) struct Failed {
    /// The engine the worker held or was attaching: lost with it.
    pub(super) lost_engine: Option<EngineId>,
    /// The worker's thread, to stop (and join before a restart).
    pub(super) arbiter: Option<Arbiter>,
    /// `Restarting`, `Failed` (out of restarts) or `Stopped` (the runtime is shutting down).
    pub(super) next: WorkerState,
    /// Failures in a row, this one included: sets the restart backoff.
    pub(super) consecutive: u32,
}

/// States a worker can fail from: it is running (or starting), not already down.
const LIVE: [WorkerState; 5] = [
    WorkerState::Warming,
    WorkerState::Idle,
    WorkerState::Attaching,
    WorkerState::Serving,
    WorkerState::Detaching,
];

impl WorkerSlot {
    /// A worker about to start for the first time (incarnation 0, warming).
    pub(super) fn new(index: usize, device: DeviceSpec, options: PrewarmOptions) -> Self {
        Self {
            index,
            device,
            options,
            state: WorkerState::Warming,
            incarnation: 0,
            addr: None,
            arbiter: None,
            prewarm: None,
            memory: None,
            idle_memory: None,
            engine: None,
            failures: 0,
            restarts: 0,
            consecutive_failures: 0,
            last_error: None,
        }
    }

    pub(super) fn state(&self) -> WorkerState {
        self.state
    }

    pub(super) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The engine held or being attached.
    pub(super) fn engine(&self) -> Option<EngineId> {
        self.engine
    }

    /// The one stale-event guard: the event is about this start and finds the expected state.
    fn holds(&self, incarnation: u64, expected: &[WorkerState]) -> bool {
        self.incarnation == incarnation && expected.contains(&self.state)
    }

    /// Prewarm finished: `Warming` → `Idle`.
    pub(super) fn ready(
        &mut self,
        incarnation: u64,
        prewarm: PrewarmReport,
        memory: MemoryInfo,
    ) -> bool {
        if !self.holds(incarnation, &[WorkerState::Warming]) {
            return false;
        }
        self.state = WorkerState::Idle;
        self.prewarm = Some(prewarm);
        self.memory = Some(memory.clone());
        self.idle_memory = Some(memory);
        true
    }

    /// An attach of `engine` was sent to the worker: `Idle` → `Attaching`. Returns the
    /// incarnation the load's answer will be about.
    pub(super) fn attach_begun(&mut self, engine: EngineId) -> Option<u64> {
        if self.state != WorkerState::Idle {
            return None;
        }
        self.state = WorkerState::Attaching;
        self.engine = Some(engine);
        Some(self.incarnation)
    }

    /// The engine loaded and made its first token: `Attaching` → `Serving`.
    pub(super) fn attach_done(&mut self, incarnation: u64, memory: MemoryInfo) -> bool {
        if !self.holds(incarnation, &[WorkerState::Attaching]) {
            return false;
        }
        self.state = WorkerState::Serving;
        self.memory = Some(memory);
        self.consecutive_failures = 0;
        true
    }

    /// The load failed and the worker survived: `Attaching` → `Idle`, with the memory it
    /// reported (if any).
    pub(super) fn attach_abandoned(
        &mut self,
        incarnation: u64,
        memory: Option<MemoryInfo>,
    ) -> bool {
        if !self.holds(incarnation, &[WorkerState::Attaching]) {
            return false;
        }
        self.state = WorkerState::Idle;
        self.engine = None;
        self.memory = memory.or(self.memory.take());
        true
    }

    /// The worker was asked to release its engine: `Serving` → `Detaching`.
    pub(super) fn detach_begun(&mut self, incarnation: u64) -> bool {
        if !self.holds(incarnation, &[WorkerState::Serving]) {
            return false;
        }
        self.state = WorkerState::Detaching;
        true
    }

    /// The worker released its engine: `Detaching` → `Idle`, with the memory it has now.
    pub(super) fn detach_done(&mut self, incarnation: u64, memory: MemoryInfo) -> bool {
        if !self.holds(incarnation, &[WorkerState::Detaching]) {
            return false;
        }
        self.state = WorkerState::Idle;
        self.engine = None;
        self.memory = Some(memory.clone());
        self.idle_memory = Some(memory);
        true
    }

    /// The worker failed: from any live state to `Stopped` when `shutting_down`, `Failed` once
    /// more than `max_restarts` failures came in a row, else `Restarting`. Its engine (if any)
    /// is lost and its thread taken. A repeated or stale report is refused (`None`).
    pub(super) fn failed(
        &mut self,
        incarnation: u64,
        reason: &str,
        shutting_down: bool,
        max_restarts: u32,
    ) -> Option<Failed> {
        if !self.holds(incarnation, &LIVE) {
            return None;
        }
        self.failures += 1;
        self.consecutive_failures += 1;
        self.last_error = Some(reason.to_owned());
        self.addr = None;
        self.state = if shutting_down {
            WorkerState::Stopped
        } else if self.consecutive_failures > max_restarts {
            WorkerState::Failed
        } else {
            WorkerState::Restarting
        };
        Some(Failed {
            lost_engine: self.engine.take(),
            arbiter: self.arbiter.take(),
            next: self.state,
            consecutive: self.consecutive_failures,
        })
    }

    /// The backoff after a failure passed: `Restarting` → `Warming`, as the next incarnation.
    /// The caller starts its thread.
    pub(super) fn restarted(&mut self, incarnation: u64) -> bool {
        if !self.holds(incarnation, &[WorkerState::Restarting]) {
            return false;
        }
        self.incarnation += 1;
        self.restarts += 1;
        self.state = WorkerState::Warming;
        self.engine = None;
        true
    }

    /// The runtime shut down: any state → `Stopped`. Returns the worker's thread to stop.
    pub(super) fn stopped(&mut self) -> Option<Arbiter> {
        self.state = WorkerState::Stopped;
        self.addr = None;
        self.arbiter.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(free_bytes: u64) -> MemoryInfo {
        MemoryInfo {
            free_bytes,
            ..MemoryInfo::default()
        }
    }

    /// A prewarmed, idle worker, as the controller holds it after `ready`.
    fn idle_worker() -> WorkerSlot {
        let mut slot = WorkerSlot::new(0, DeviceSpec::Cpu, PrewarmOptions::default());
        assert!(slot.ready(0, PrewarmReport::default(), memory(100)));
        slot
    }

    #[test]
    fn ready_is_refused_for_an_older_start_or_a_worker_not_warming() {
        let mut slot = WorkerSlot::new(3, DeviceSpec::Cpu, PrewarmOptions::default());
        assert!(!slot.ready(1, PrewarmReport::default(), memory(5)));
        assert_eq!(slot.state(), WorkerState::Warming);
        assert!(slot.memory.is_none());
        assert!(slot.ready(0, PrewarmReport::default(), memory(5)));
        assert_eq!(slot.state(), WorkerState::Idle);
        assert_eq!(slot.idle_memory, Some(memory(5)));
        // A second ready (a duplicate event) changes nothing.
        assert!(!slot.ready(0, PrewarmReport::default(), memory(9)));
        assert_eq!(slot.memory, Some(memory(5)));
    }

    #[test]
    fn an_attach_runs_idle_attaching_serving_and_a_detach_back_to_idle() {
        let mut slot = idle_worker();
        let engine = EngineId(7);
        let incarnation = slot
            .attach_begun(engine)
            .expect("idle worker takes an attach");
        assert_eq!(slot.state(), WorkerState::Attaching);
        assert_eq!(slot.engine(), Some(engine));
        assert_eq!(slot.attach_begun(EngineId(8)), None, "one attach at a time");
        assert!(!slot.detach_begun(incarnation), "nothing to detach yet");
        assert!(slot.attach_done(incarnation, memory(40)));
        assert_eq!(slot.state(), WorkerState::Serving);
        assert!(!slot.attach_done(incarnation, memory(1)), "done once");
        assert_eq!(slot.memory, Some(memory(40)));
        assert!(slot.detach_begun(incarnation));
        assert_eq!(slot.state(), WorkerState::Detaching);
        assert!(slot.detach_done(incarnation, memory(95)));
        assert_eq!(slot.state(), WorkerState::Idle);
        assert_eq!(slot.engine(), None);
        assert_eq!(slot.idle_memory, Some(memory(95)));
    }

    #[test]
    fn a_failed_load_gives_the_worker_back_unless_it_moved_on() {
        let mut slot = idle_worker();
        let incarnation = slot.attach_begun(EngineId(1)).unwrap();
        assert!(slot.attach_abandoned(incarnation, None));
        assert_eq!(slot.state(), WorkerState::Idle);
        assert_eq!(slot.memory, Some(memory(100)), "kept when none reported");
        assert_eq!(slot.engine(), None);
        // A load answered after the worker failed: the failure stands.
        let incarnation = slot.attach_begun(EngineId(2)).unwrap();
        assert!(slot.failed(incarnation, "boom", false, 3).is_some());
        assert!(!slot.attach_abandoned(incarnation, Some(memory(1))));
        assert!(!slot.attach_done(incarnation, memory(1)));
        assert_eq!(slot.state(), WorkerState::Restarting);
    }

    #[test]
    fn events_of_an_older_start_are_ignored_after_a_restart() {
        let mut slot = idle_worker();
        let old = slot.attach_begun(EngineId(1)).unwrap();
        let failed = slot.failed(old, "killed", false, 3).unwrap();
        assert_eq!(failed.lost_engine, Some(EngineId(1)));
        assert_eq!(failed.next, WorkerState::Restarting);
        assert_eq!(failed.consecutive, 1);
        assert!(slot.restarted(old));
        assert_eq!(slot.state(), WorkerState::Warming);
        assert_eq!((slot.incarnation(), slot.restarts), (old + 1, 1));
        // The old start's late events: none applies to the new one.
        assert!(!slot.ready(old, PrewarmReport::default(), memory(1)));
        assert!(slot.failed(old, "late", false, 3).is_none());
        assert!(!slot.restarted(old));
        assert_eq!(slot.state(), WorkerState::Warming);
        assert_eq!(slot.failures, 1);
        assert!(slot.ready(old + 1, PrewarmReport::default(), memory(50)));
        assert_eq!(slot.state(), WorkerState::Idle);
    }

    #[test]
    fn a_failure_is_counted_once_and_restarts_are_bounded() {
        let mut slot = WorkerSlot::new(0, DeviceSpec::Cpu, PrewarmOptions::default());
        for round in 0..2u64 {
            let failed = slot.failed(round, "prewarm failed", false, 2).unwrap();
            assert_eq!(failed.next, WorkerState::Restarting);
            assert!(
                slot.failed(round, "again", false, 2).is_none(),
                "a repeated report"
            );
            assert!(slot.restarted(round));
        }
        let failed = slot.failed(2, "prewarm failed", false, 2).unwrap();
        assert_eq!(failed.next, WorkerState::Failed, "out of restarts");
        assert_eq!(slot.state(), WorkerState::Failed);
        assert!(!slot.restarted(2), "a failed worker is not restarted");
        assert_eq!((slot.failures, slot.restarts), (3, 2));
        assert_eq!(slot.last_error.as_deref(), Some("prewarm failed"));
    }

    #[test]
    fn a_successful_attach_resets_the_failures_in_a_row() {
        let mut slot = idle_worker();
        assert!(slot.failed(0, "one", false, 1).is_some());
        assert!(slot.restarted(0));
        assert!(slot.ready(1, PrewarmReport::default(), memory(10)));
        let incarnation = slot.attach_begun(EngineId(4)).unwrap();
        assert!(slot.attach_done(incarnation, memory(5)));
        // One more failure: the first in a row again, so it restarts though max_restarts is 1.
        let failed = slot.failed(incarnation, "two", false, 1).unwrap();
        assert_eq!(failed.next, WorkerState::Restarting);
        assert_eq!(failed.consecutive, 1);
    }

    #[test]
    fn shutting_down_stops_instead_of_restarting() {
        let mut slot = idle_worker();
        let failed = slot.failed(0, "gone", true, 3).unwrap();
        assert_eq!(failed.next, WorkerState::Stopped);
        assert!(!slot.restarted(0));
        let mut other = idle_worker();
        assert!(other.stopped().is_none(), "no thread was started");
        assert_eq!(other.state(), WorkerState::Stopped);
        assert!(other.attach_begun(EngineId(1)).is_none());
        assert!(other.failed(0, "after stop", false, 3).is_none());
    }
}
