//! Supervision: starting workers on their own threads, and stopping and restarting failed ones.

use actix::prelude::*;

use super::{ControllerActor, LostEngine, JOIN_TIMEOUT, LOST_ENGINES_KEPT};
use crate::backend::{MemoryInfo, PrewarmReport};
use crate::reports::WorkerState;
use crate::worker::{WorkerActor, WorkerEvents, MAILBOX_CAPACITY};

impl ControllerActor {
    /// Starts worker `index` on a fresh thread; it prewarms there and reports back.
    pub(super) fn spawn_worker(&mut self, index: usize, ctx: &mut Context<Self>) {
        let events = WorkerEvents {
            ready: ctx.address().recipient(),
            failed: ctx.address().recipient(),
        };
        let backend = self.backend.clone();
        let slot = &mut self.workers[index];
        let (device, options, incarnation) = (
            slot.device.clone(),
            slot.options.clone(),
            slot.incarnation(),
        );
        let arbiter = Arbiter::new();
        let addr = WorkerActor::start_in_arbiter(&arbiter.handle(), move |ctx| {
            ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
            WorkerActor::new(index, incarnation, device, options, backend, events)
        });
        slot.addr = Some(addr);
        slot.arbiter = Some(arbiter);
    }

    /// A worker finished prewarming.
    pub(super) fn worker_ready(
        &mut self,
        index: usize,
        incarnation: u64,
        prewarm: PrewarmReport,
        memory: MemoryInfo,
        ctx: &mut Context<Self>,
    ) {
        let Some(slot) = self.workers.get_mut(index) else {
            return;
        };
        if !slot.ready(incarnation, prewarm, memory) {
            return;
        }
        self.dispatch_pending(ctx);
        self.answer_ready_waiters();
    }

    /// A worker failed: its engine is lost, its thread stopped, and a restart is scheduled
    /// (with exponential backoff) unless it is out of restarts. Repeated reports are ignored.
    pub(super) fn worker_failed(
        &mut self,
        index: usize,
        incarnation: u64,
        reason: String,
        ctx: &mut Context<Self>,
    ) {
        let (shutting_down, max_restarts) = (self.shutting_down, self.config.options.max_restarts);
        let Some(slot) = self.workers.get_mut(index) else {
            return;
        };
        let Some(failed) = slot.failed(incarnation, &reason, shutting_down, max_restarts) else {
            return;
        };
        let failures = slot.failures;
        self.stats.worker_failures += 1;
        if let Some(id) = failed.lost_engine {
            if let Some(entry) = self.engines.remove(&id) {
                self.lost.push_back(LostEngine {
                    id,
                    name: entry.name,
                    reason: format!("worker {index} failed: {reason}"),
                });
                if self.lost.len() > LOST_ENGINES_KEPT {
                    self.lost.pop_front();
                }
            }
        }
        let arbiter = failed.arbiter;
        if let Some(arbiter) = &arbiter {
            arbiter.stop();
        }
        match failed.next {
            WorkerState::Failed => tracing::error!(
                worker = index,
                failures,
                %reason,
                "worker failed and is out of restarts; it stays failed"
            ),
            WorkerState::Restarting => {
                let factor = 1u32 << (failed.consecutive - 1).min(16);
                let backoff = self.config.options.restart_backoff.saturating_mul(factor);
                tracing::warn!(
                    worker = index,
                    %reason,
                    backoff_ms = backoff.as_millis() as u64,
                    "worker failed; restarting it on a fresh thread"
                );
                let joined = arbiter.map(|a| actix_rt::task::spawn_blocking(move || a.join()));
                let wait = async move {
                    if let Some(joined) = joined {
                        let _ = tokio::time::timeout(JOIN_TIMEOUT, joined).await;
                    }
                    tokio::time::sleep(backoff).await;
                };
                ctx.spawn(
                    wait.into_actor(self)
                        .map(move |(), act, ctx| act.restart_worker(index, incarnation, ctx)),
                );
            }
            _ => {}
        }
        self.dispatch_pending(ctx);
        self.answer_ready_waiters();
    }

    /// Starts a failed worker again, unless it was restarted or stopped meanwhile.
    pub(super) fn restart_worker(
        &mut self,
        index: usize,
        incarnation: u64,
        ctx: &mut Context<Self>,
    ) {
        if self.shutting_down || !self.workers[index].restarted(incarnation) {
            return;
        }
        self.stats.worker_restarts += 1;
        self.spawn_worker(index, ctx);
    }

    pub(super) fn answer_ready_waiters(&mut self) {
        let settled = self
            .workers
            .iter()
            .all(|w| !matches!(w.state(), WorkerState::Warming | WorkerState::Restarting));
        if settled {
            let infos = self.worker_infos();
            for waiter in self.ready_waiters.drain(..) {
                let _ = waiter.send(infos.clone());
            }
        }
    }
}
