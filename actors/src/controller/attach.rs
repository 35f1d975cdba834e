//! Attaching: accepting a request, placing it on a worker (or queueing it), and reporting.

use std::collections::VecDeque;
use std::time::Instant;

use actix::prelude::*;

use super::placement::{place, ready_now, suitable, Candidate, Placement};
use super::source::{plan, Endpoint, Holder, Plan};
use super::{AttachReply, ControllerActor, EngineEntry, PendingAttach, WorkerSlot};
use crate::errors::AttachError;
use crate::messages::{LoadEngine, LoadFailed, Loaded};
use crate::reports::{check_engine_name, AttachReport, EngineId};
use crate::source::WeightsSource;
use crate::timeline::Anchor;

impl ControllerActor {
    /// Checks an attach on receipt and reserves its id and name.
    pub(super) fn accept_attach(
        &mut self,
        name: Option<String>,
    ) -> Result<(EngineId, String), AttachError> {
        if self.refusing_attaches {
            return Err(AttachError::ShuttingDown);
        }
        let id = EngineId(self.next_id);
        let name = name.unwrap_or_else(|| format!("engine-{id}"));
        check_engine_name(&name).map_err(|reason| AttachError::InvalidName { reason })?;
        let taken =
            self.reserved_names.contains(&name) || self.engines.values().any(|e| e.name == name);
        if taken {
            return Err(AttachError::NameInUse { name });
        }
        self.next_id += 1;
        self.reserved_names.insert(name.clone());
        Ok((id, name))
    }

    /// Places an inspected attach now, fails it, or queues it until its timeout.
    pub(super) fn enqueue_attach(&mut self, pending: PendingAttach, ctx: &mut Context<Self>) {
        if self.refusing_attaches {
            return self.fail_attach(pending, AttachError::ShuttingDown);
        }
        if !pending.caller.is_alive() {
            return self.fail_attach(pending, abandoned_error());
        }
        match self.placement_for(&pending) {
            Placement::Now(worker) => self.start_attach(pending, worker, ctx),
            Placement::Fail(error) => self.fail_attach(pending, error),
            Placement::Wait => {
                self.drop_abandoned();
                if self.pending.len() >= self.config.options.max_waiting_attaches {
                    let waiting = self.pending.len();
                    return self.fail_attach(pending, AttachError::TooManyWaiting { waiting });
                }
                let deadline = pending.received + self.config.options.attach_timeout;
                let ticket = pending.engine_id;
                self.pending.push_back(pending);
                ctx.run_later(
                    deadline.saturating_duration_since(Instant::now()),
                    move |act, _| act.expire_attach(ticket),
                );
            }
        }
    }

    /// Takes the waiting attaches whose caller went away out of the queue.
    fn drop_abandoned(&mut self) {
        let (wanted, abandoned): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.caller.is_alive());
        self.pending = wanted;
        for pending in abandoned {
            self.fail_attach(pending, abandoned_error());
        }
    }

    /// Where an attach goes now (preferring a worker whose device, or a peer's, holds its
    /// weights: see `source`), waits, or why it never can.
    pub(super) fn placement_for(&self, pending: &PendingAttach) -> Placement {
        let (candidates, needed) = self.candidates(pending);
        let placed = place(&candidates, needed, pending.worker, pending.device.as_ref());
        let Placement::Now(first) = placed else {
            return placed;
        };
        let suitable = suitable(&candidates, pending.worker, pending.device.as_ref());
        let ready = ready_now(&candidates, needed, &suitable);
        let planned = self.source_plan(pending, &ready);
        Placement::Now(planned.map_or(first, |p| p.target))
    }

    /// The source of the weights of `pending` on `target`.
    fn source_for(
        &self,
        pending: &PendingAttach,
        target: usize,
    ) -> (WeightsSource, Option<String>) {
        match self.source_plan(pending, &[target]) {
            Some(plan) if plan.target == target => (plan.source, plan.fallback),
            _ => (WeightsSource::Host, None),
        }
    }

    fn source_plan(&self, pending: &PendingAttach, ready: &[usize]) -> Option<Plan> {
        let holders: Vec<Holder<'_>> = self
            .workers
            .iter()
            .map(|w| Holder {
                device: &w.device,
                state: w.state(),
                resident: w.memory.as_ref().map_or(&[][..], |m| &m.resident[..]),
                endpoint: w
                    .prewarm
                    .as_ref()
                    .and_then(|p| p.peer.map(|peer| Endpoint { peer, pid: p.pid })),
            })
            .collect();
        plan(&pending.footprint.weights, ready, &holders, &self.links)
    }

    /// Every worker as placement sees it, and the bytes `pending` needs on one.
    fn candidates(&self, pending: &PendingAttach) -> (Vec<Candidate<'_>>, u64) {
        let candidates: Vec<Candidate<'_>> = self
            .workers
            .iter()
            .map(|w| Candidate {
                device: &w.device,
                state: w.state(),
                idle_free: w.idle_memory.as_ref().map(|m| m.free_bytes),
                free_now: w.memory.as_ref().map(|m| m.free_bytes),
            })
            .collect();
        // The smallest KV-cache budget of the workers: a worker with a larger one checks the
        // model against its own before reading any byte.
        let kv_cache_tokens = self
            .workers
            .iter()
            .map(|w| w.options.kv_cache_tokens)
            .min()
            .unwrap_or(0);
        (candidates, pending.footprint.needed_bytes(kv_cache_tokens))
    }

    /// Gives waiting attaches the workers that became idle, oldest first.
    pub(super) fn dispatch_pending(&mut self, ctx: &mut Context<Self>) {
        self.drop_abandoned();
        let mut waiting = VecDeque::new();
        while let Some(pending) = self.pending.pop_front() {
            if self.refusing_attaches {
                self.fail_attach(pending, AttachError::ShuttingDown);
                continue;
            }
            match self.placement_for(&pending) {
                Placement::Now(worker) => self.start_attach(pending, worker, ctx),
                Placement::Fail(error) => self.fail_attach(pending, error),
                Placement::Wait => waiting.push_back(pending),
            }
        }
        self.pending = waiting;
    }

    /// Places an attach whose worker was lost under it once more, on another worker that is
    /// idle now (a stopped worker not found yet must not cost the attach while another is
    /// free); fails it with `error` when none is, or when it was placed again already, so that
    /// a model that kills its worker costs at most two workers, never every one.
    fn place_elsewhere(
        &mut self,
        mut pending: PendingAttach,
        error: AttachError,
        ctx: &mut Context<Self>,
    ) {
        if pending.retried || !pending.caller.is_alive() {
            return self.fail_attach(pending, error);
        }
        match self.placement_for(&pending) {
            Placement::Now(other) => {
                tracing::info!(name = %pending.name, error = %error, worker = other,
                    "placing the attach again on another worker");
                pending.retried = true;
                self.start_attach(pending, other, ctx);
            }
            _ => self.fail_attach(pending, error),
        }
    }

    /// Fails a waiting attach whose timeout passed (if it is still waiting).
    pub(super) fn expire_attach(&mut self, ticket: EngineId) {
        if let Some(at) = self.pending.iter().position(|p| p.engine_id == ticket) {
            if let Some(pending) = self.pending.remove(at) {
                let waited_ms = pending.received.elapsed().as_millis() as u64;
                self.fail_attach(pending, AttachError::NoFreeWorker { waited_ms });
            }
        }
    }

    pub(super) fn fail_attach(&mut self, pending: PendingAttach, error: AttachError) {
        self.refuse_attach(&pending.name, &pending.spec.model, pending.reply, error);
    }

    /// Answers an attach with `error` and frees its name.
    pub(super) fn refuse_attach(
        &mut self,
        name: &str,
        model: &str,
        reply: AttachReply,
        error: AttachError,
    ) {
        self.reserved_names.remove(name);
        self.stats.attaches_failed += 1;
        tracing::info!(model, name, error = %error, "attach failed");
        let _ = reply.send(Err(error));
    }

    /// Sends the load to `worker` and finishes the attach when it replies.
    pub(super) fn start_attach(
        &mut self,
        pending: PendingAttach,
        worker: usize,
        ctx: &mut Context<Self>,
    ) {
        let slot = &mut self.workers[worker];
        let Some(addr) = slot.addr.clone() else {
            return self.fail_attach(
                pending,
                AttachError::WorkerFailed {
                    worker,
                    reason: "the worker has no thread".into(),
                },
            );
        };
        let (source, planned_fallback) = self.source_for(&pending, worker);
        let slot = &mut self.workers[worker];
        let Some(incarnation) = slot.attach_begun(pending.engine_id) else {
            let reason = format!("the worker is {}, not idle", slot.state());
            return self.fail_attach(pending, AttachError::WorkerFailed { worker, reason });
        };
        let load = addr.send(LoadEngine {
            engine_id: pending.engine_id,
            spec: pending.spec.clone(),
            handoff: pending.footprint.handoff.clone(),
            timeline: pending.timeline.clone(),
            source,
        });
        ctx.spawn(load.into_actor(self).map(move |result, act, ctx| {
            let result = result.map(|loaded| {
                loaded.map(|mut loaded| {
                    if let Some(reason) = planned_fallback {
                        loaded.source = loaded.source.with_fallback(reason);
                    }
                    loaded
                })
            });
            let result = result.unwrap_or_else(|_| {
                Err(LoadFailed {
                    error: AttachError::WorkerFailed {
                        worker,
                        reason: "the worker's thread stopped".into(),
                    },
                    memory: None,
                })
            });
            act.finish_attach(pending, worker, incarnation, result, ctx)
        }));
    }

    pub(super) fn finish_attach(
        &mut self,
        pending: PendingAttach,
        worker: usize,
        incarnation: u64,
        result: Result<Loaded, LoadFailed>,
        ctx: &mut Context<Self>,
    ) {
        let slot = &mut self.workers[worker];
        let loaded = match result {
            Ok(loaded) => loaded,
            Err(LoadFailed {
                error: AttachError::WorkerFailed { reason, .. },
                ..
            }) => {
                self.worker_failed(worker, incarnation, reason.clone(), ctx);
                if self.refusing_attaches {
                    return self.fail_attach(pending, AttachError::ShuttingDown);
                }
                return self.place_elsewhere(
                    pending,
                    AttachError::WorkerFailed { worker, reason },
                    ctx,
                );
            }
            Err(LoadFailed { error, memory }) => {
                slot.attach_abandoned(incarnation, memory.map(|m| *m));
                self.fail_attach(pending, error);
                return self.dispatch_pending(ctx);
            }
        };
        if self.shutting_down {
            // Shutdown detaches only the engines it knew of: one that lands now would be
            // reported attached and then never detached.
            slot.attach_abandoned(incarnation, None);
            return self.fail_attach(pending, AttachError::ShuttingDown);
        }
        if !slot.attach_done(incarnation, loaded.memory_attached.clone()) {
            // The worker failed (or the runtime stopped) while it loaded: the engine went with it.
            let reason = slot.last_error.clone().unwrap_or_default();
            return self.fail_attach(pending, AttachError::WorkerFailed { worker, reason });
        }
        let report = attach_report(&pending, slot, &loaded);
        tracing::info!(
            engine = %report.engine_id,
            name = %report.name,
            worker,
            model = %report.model,
            total_ms = report.total_ms,
            phases = %report.phases_summary(),
            bytes = report.bytes_moved,
            gb_per_s = report.bandwidth_gb_per_s,
            "engine attached"
        );
        self.reserved_names.remove(&pending.name);
        self.stats.attaches_succeeded += 1;
        self.engines.insert(
            pending.engine_id,
            EngineEntry {
                id: pending.engine_id,
                name: pending.name.clone(),
                worker,
                incarnation,
                model: pending.spec.model.clone(),
                dtype: pending.footprint.dtype,
                addr: loaded.engine,
                encoder: loaded.encoder,
                load: loaded.load,
                device_bytes: loaded.device_bytes,
                attach_ms: report.total_ms,
                memory_before: loaded.memory_before,
                memory_attached: loaded.memory_attached,
                last_used: Instant::now(),
                in_flight: 0,
                total_requests: 0,
                total_tokens: 0,
            },
        );
        let _ = pending.reply.send(Ok(report));
    }
}

/// The answer (to nobody) of an attach whose caller went away while it waited.
fn abandoned_error() -> AttachError {
    AttachError::Unavailable {
        reason: "the caller went away before a worker was free".into(),
    }
}

/// The report of a finished attach, from its request, worker and load.
fn attach_report(pending: &PendingAttach, slot: &WorkerSlot, loaded: &Loaded) -> AttachReport {
    let timeline = loaded.timeline.clone();
    let mut transfer_ms = timeline.span_ms(Anchor::WeightsRead, Anchor::WeightsOnDevice);
    if transfer_ms <= 0.0 {
        transfer_ms = timeline.span_ms(Anchor::Requested, Anchor::WeightsOnDevice);
    }
    let bandwidth_gb_per_s = if transfer_ms > 0.0 {
        loaded.bytes_moved as f64 / (transfer_ms / 1e3) / 1e9
    } else {
        0.0
    };
    AttachReport {
        engine_id: pending.engine_id,
        name: pending.name.clone(),
        worker: slot.index,
        device: slot.device.clone(),
        model: pending.spec.model.clone(),
        dtype: pending.footprint.dtype,
        phases: timeline.phases(),
        total_ms: timeline.total_ms(),
        timeline,
        bytes_moved: loaded.bytes_moved,
        bandwidth_gb_per_s,
        memory_before: loaded.memory_before.clone(),
        memory_attached: loaded.memory_attached.clone(),
        prewarm: slot.prewarm.clone(),
        source: loaded.source.source.clone(),
        source_fallback: loaded.source.fallback.clone(),
    }
}
