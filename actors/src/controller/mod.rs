//! The controller actor: owns the worker pool, places attaches, routes requests, restarts workers.
//!
//! Everything the controller answers about (worker states, memory, engines, counters) it keeps
//! itself, updated from replies and events, so listing never waits on a busy worker.

mod handlers;
mod placement;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::backend::{
    Backend, DType, DeviceSpec, Footprint, MemoryInfo, ModelSpec, PrewarmOptions, PrewarmReport,
};
use crate::engine::EngineActor;
use crate::errors::AttachError;
use crate::messages::{LoadEngine, LoadFailed, Loaded};
use crate::reports::{
    AttachReport, EngineId, EngineInfo, EngineRef, RuntimeStats, WorkerInfo, WorkerState,
};
use crate::runtime::RuntimeConfig;
use crate::timeline::{Anchor, Timeline};
use crate::worker::{WorkerActor, WorkerEvents, MAILBOX_CAPACITY};
use placement::{place, Candidate, Placement};

/// How long a failed worker's thread may take to finish before its restart goes ahead anyway.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How many lost engines are remembered (to answer `EngineLost` rather than `EngineNotFound`).
const LOST_ENGINES_KEPT: usize = 1024;

type AttachReply = oneshot::Sender<Result<AttachReport, AttachError>>;

/// Supervises the workers and knows every engine.
pub struct ControllerActor {
    /// Builds devices and inspects models.
    backend: Arc<dyn Backend>,
    /// Timeouts and restart policy.
    config: RuntimeConfig,
    /// One slot per worker, in configuration order; a slot outlives restarts.
    workers: Vec<WorkerSlot>,
    /// Attached engines.
    engines: BTreeMap<EngineId, EngineEntry>,
    /// Engines lost with their worker, newest last.
    lost: VecDeque<LostEngine>,
    /// Attaches waiting for a free worker, oldest first.
    pending: VecDeque<PendingAttach>,
    /// Names of attaches in progress (not yet engines), so two cannot take one name.
    reserved_names: HashSet<String>,
    /// The next engine id (also the next pending ticket).
    next_id: u64,
    /// `WaitReady` callers to answer once no worker is warming or restarting.
    ready_waiters: Vec<oneshot::Sender<Vec<WorkerInfo>>>,
    /// Set by `Shutdown`: no new attaches, no restarts.
    shutting_down: bool,
    /// Runtime-wide counters.
    stats: RuntimeStats,
}

/// What the controller knows about one worker.
struct WorkerSlot {
    index: usize,
    device: DeviceSpec,
    options: PrewarmOptions,
    state: WorkerState,
    /// Counts starts of this worker; events from older starts are ignored.
    incarnation: u64,
    addr: Option<Addr<WorkerActor>>,
    /// The worker's thread; stopped on failure and shutdown.
    arbiter: Option<Arbiter>,
    prewarm: Option<PrewarmReport>,
    memory: Option<MemoryInfo>,
    /// Memory when holding no engine: the capacity an attach can count on.
    idle_memory: Option<MemoryInfo>,
    /// The engine held or being attached.
    engine: Option<EngineId>,
    failures: u32,
    restarts: u32,
    /// Failures since the last successful attach; bounds restarts.
    consecutive_failures: u32,
    last_error: Option<String>,
}

/// An attached engine and its counters.
struct EngineEntry {
    id: EngineId,
    name: String,
    worker: usize,
    incarnation: u64,
    model: String,
    dtype: DType,
    addr: Addr<EngineActor>,
    device_bytes: u64,
    attach_ms: f64,
    memory_before: MemoryInfo,
    memory_attached: MemoryInfo,
    last_used: Instant,
    in_flight: usize,
    total_requests: u64,
    total_tokens: u64,
}

/// An engine that went down with its worker.
struct LostEngine {
    id: EngineId,
    name: String,
    reason: String,
}

/// An attach that has been inspected and waits for (or is being given) a worker.
struct PendingAttach {
    engine_id: EngineId,
    name: String,
    spec: ModelSpec,
    footprint: Footprint,
    worker: Option<usize>,
    device: Option<DeviceSpec>,
    timeline: Timeline,
    received: Instant,
    reply: AttachReply,
}

impl ControllerActor {
    pub(crate) fn new(config: RuntimeConfig, backend: Arc<dyn Backend>) -> Self {
        let workers = config
            .workers
            .iter()
            .flat_map(|w| std::iter::repeat_n(w, w.count))
            .enumerate()
            .map(|(index, w)| WorkerSlot {
                index,
                device: w.device.clone(),
                options: w.prewarm.clone(),
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
            })
            .collect();
        Self {
            backend,
            config,
            workers,
            engines: BTreeMap::new(),
            lost: VecDeque::new(),
            pending: VecDeque::new(),
            reserved_names: HashSet::new(),
            next_id: 1,
            ready_waiters: Vec::new(),
            shutting_down: false,
            stats: RuntimeStats::default(),
        }
    }

    // ----- workers -----------------------------------------------------------------------------

    /// Starts worker `index` on a fresh thread; it prewarms there and reports back.
    fn spawn_worker(&mut self, index: usize, ctx: &mut Context<Self>) {
        let events = WorkerEvents {
            ready: ctx.address().recipient(),
            failed: ctx.address().recipient(),
        };
        let backend = self.backend.clone();
        let slot = &mut self.workers[index];
        let (device, options, incarnation) =
            (slot.device.clone(), slot.options.clone(), slot.incarnation);
        let arbiter = Arbiter::new();
        let addr = WorkerActor::start_in_arbiter(&arbiter.handle(), move |ctx| {
            ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
            WorkerActor::new(index, incarnation, device, options, backend, events)
        });
        slot.addr = Some(addr);
        slot.arbiter = Some(arbiter);
        slot.state = WorkerState::Warming;
        slot.engine = None;
    }

    /// A worker finished prewarming.
    fn worker_ready(
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
        if slot.incarnation != incarnation || slot.state != WorkerState::Warming {
            return;
        }
        slot.state = WorkerState::Idle;
        slot.prewarm = Some(prewarm);
        slot.memory = Some(memory);
        slot.idle_memory = Some(memory);
        self.dispatch_pending(ctx);
        self.answer_ready_waiters();
    }

    /// A worker failed: its engine is lost, its thread stopped, and a restart is scheduled
    /// (with exponential backoff) unless it is out of restarts. Repeated reports are ignored.
    fn worker_failed(
        &mut self,
        index: usize,
        incarnation: u64,
        reason: String,
        ctx: &mut Context<Self>,
    ) {
        let Some(slot) = self.workers.get_mut(index) else {
            return;
        };
        if slot.incarnation != incarnation
            || matches!(
                slot.state,
                WorkerState::Failed | WorkerState::Restarting | WorkerState::Stopped
            )
        {
            return;
        }
        slot.failures += 1;
        slot.consecutive_failures += 1;
        slot.last_error = Some(reason.clone());
        slot.addr = None;
        self.stats.worker_failures += 1;
        if let Some(id) = slot.engine.take() {
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
        let arbiter = slot.arbiter.take();
        if let Some(arbiter) = &arbiter {
            arbiter.stop();
        }
        let consecutive = slot.consecutive_failures;
        if self.shutting_down {
            slot.state = WorkerState::Stopped;
        } else if consecutive > self.config.max_restarts {
            slot.state = WorkerState::Failed;
            tracing::error!(
                worker = index,
                failures = slot.failures,
                %reason,
                "worker failed and is out of restarts; it stays failed"
            );
        } else {
            slot.state = WorkerState::Restarting;
            let factor = 1u32 << (consecutive - 1).min(16);
            let backoff = self.config.restart_backoff.saturating_mul(factor);
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
        self.dispatch_pending(ctx);
        self.answer_ready_waiters();
    }

    /// Starts a failed worker again, unless it was restarted or stopped meanwhile.
    fn restart_worker(&mut self, index: usize, incarnation: u64, ctx: &mut Context<Self>) {
        let slot = &mut self.workers[index];
        if self.shutting_down
            || slot.incarnation != incarnation
            || slot.state != WorkerState::Restarting
        {
            return;
        }
        slot.incarnation += 1;
        slot.restarts += 1;
        self.stats.worker_restarts += 1;
        self.spawn_worker(index, ctx);
    }

    fn answer_ready_waiters(&mut self) {
        let settled = self
            .workers
            .iter()
            .all(|w| !matches!(w.state, WorkerState::Warming | WorkerState::Restarting));
        if settled {
            let infos = self.worker_infos();
            for waiter in self.ready_waiters.drain(..) {
                let _ = waiter.send(infos.clone());
            }
        }
    }

    // ----- attach ------------------------------------------------------------------------------

    /// Checks an attach on receipt and reserves its id and name.
    fn accept_attach(&mut self, name: Option<String>) -> Result<(EngineId, String), AttachError> {
        if self.shutting_down {
            return Err(AttachError::ShuttingDown);
        }
        let id = EngineId(self.next_id);
        let name = name.unwrap_or_else(|| format!("engine-{id}"));
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
    fn enqueue_attach(&mut self, pending: PendingAttach, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return self.fail_attach(pending, AttachError::ShuttingDown);
        }
        match self.placement_for(&pending) {
            Placement::Now(worker) => self.start_attach(pending, worker, ctx),
            Placement::Fail(error) => self.fail_attach(pending, error),
            Placement::Wait => {
                let deadline = pending.received + self.config.attach_timeout;
                let ticket = pending.engine_id;
                self.pending.push_back(pending);
                ctx.run_later(
                    deadline.saturating_duration_since(Instant::now()),
                    move |act, _| act.expire_attach(ticket),
                );
            }
        }
    }

    fn placement_for(&self, pending: &PendingAttach) -> Placement {
        let candidates: Vec<Candidate<'_>> = self
            .workers
            .iter()
            .map(|w| Candidate {
                device: &w.device,
                state: w.state,
                idle_free: w.idle_memory.map(|m| m.free_bytes),
                free_now: w.memory.map(|m| m.free_bytes),
            })
            .collect();
        place(
            &candidates,
            pending.footprint.device_bytes,
            pending.worker,
            pending.device.as_ref(),
        )
    }

    /// Gives waiting attaches the workers that became idle, oldest first.
    fn dispatch_pending(&mut self, ctx: &mut Context<Self>) {
        let mut waiting = VecDeque::new();
        while let Some(pending) = self.pending.pop_front() {
            if self.shutting_down {
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

    /// Fails a waiting attach whose timeout passed (if it is still waiting).
    fn expire_attach(&mut self, ticket: EngineId) {
        if let Some(at) = self.pending.iter().position(|p| p.engine_id == ticket) {
            if let Some(pending) = self.pending.remove(at) {
                let waited_ms = pending.received.elapsed().as_millis() as u64;
                self.fail_attach(pending, AttachError::NoFreeWorker { waited_ms });
            }
        }
    }

    fn fail_attach(&mut self, pending: PendingAttach, error: AttachError) {
        self.refuse_attach(&pending.name, &pending.spec.model, pending.reply, error);
    }

    /// Answers an attach with `error` and frees its name.
    fn refuse_attach(&mut self, name: &str, model: &str, reply: AttachReply, error: AttachError) {
        self.reserved_names.remove(name);
        self.stats.attaches_failed += 1;
        tracing::info!(model, name, error = %error, "attach failed");
        let _ = reply.send(Err(error));
    }

    /// Sends the load to `worker` and finishes the attach when it replies.
    fn start_attach(&mut self, pending: PendingAttach, worker: usize, ctx: &mut Context<Self>) {
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
        slot.state = WorkerState::Attaching;
        slot.engine = Some(pending.engine_id);
        let incarnation = slot.incarnation;
        let load = addr.send(LoadEngine {
            engine_id: pending.engine_id,
            spec: pending.spec.clone(),
            timeline: pending.timeline.clone(),
        });
        ctx.spawn(load.into_actor(self).map(move |result, act, ctx| {
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

    fn finish_attach(
        &mut self,
        pending: PendingAttach,
        worker: usize,
        incarnation: u64,
        result: Result<Loaded, LoadFailed>,
        ctx: &mut Context<Self>,
    ) {
        let slot = &mut self.workers[worker];
        let current = slot.incarnation == incarnation && slot.state == WorkerState::Attaching;
        let loaded = match result {
            Ok(loaded) if current => loaded,
            Ok(_) => {
                let reason = slot.last_error.clone().unwrap_or_default();
                return self.fail_attach(pending, AttachError::WorkerFailed { worker, reason });
            }
            Err(LoadFailed {
                error: AttachError::WorkerFailed { reason, .. },
                ..
            }) => {
                self.worker_failed(worker, incarnation, reason.clone(), ctx);
                let error = if self.shutting_down {
                    AttachError::ShuttingDown
                } else {
                    AttachError::WorkerFailed { worker, reason }
                };
                return self.fail_attach(pending, error);
            }
            Err(LoadFailed { error, memory }) => {
                if current {
                    slot.state = WorkerState::Idle;
                    slot.engine = None;
                    slot.memory = memory.or(slot.memory);
                }
                self.fail_attach(pending, error);
                return self.dispatch_pending(ctx);
            }
        };
        slot.state = WorkerState::Serving;
        slot.memory = Some(loaded.memory_attached);
        slot.consecutive_failures = 0;
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

    // ----- lookups and listings ----------------------------------------------------------------

    /// The attached engine `engine` names, or the reason it is gone (`Err(Some(reason))`) or
    /// unknown (`Err(None)`).
    fn resolve(&self, engine: &EngineRef) -> Result<EngineId, Option<String>> {
        if let Some(e) = self
            .engines
            .values()
            .find(|e| engine.matches(e.id, &e.name))
        {
            return Ok(e.id);
        }
        let lost = self
            .lost
            .iter()
            .rev()
            .find(|l| engine.matches(l.id, &l.name));
        Err(lost.map(|l| l.reason.clone()))
    }

    fn worker_infos(&self) -> Vec<WorkerInfo> {
        self.workers
            .iter()
            .map(|w| WorkerInfo {
                worker: w.index,
                device: w.device.clone(),
                state: w.state,
                engine: w.engine,
                prewarm: w.prewarm.clone(),
                memory: w.memory,
                failures: w.failures,
                restarts: w.restarts,
                last_error: w.last_error.clone(),
            })
            .collect()
    }

    fn engine_infos(&self) -> Vec<EngineInfo> {
        self.engines
            .values()
            .map(|e| EngineInfo {
                engine_id: e.id,
                name: e.name.clone(),
                worker: e.worker,
                device: self.workers[e.worker].device.clone(),
                model: e.model.clone(),
                dtype: e.dtype,
                device_bytes: e.device_bytes,
                idle_ms: e.last_used.elapsed().as_millis() as u64,
                requests_running: e.in_flight.min(1),
                requests_waiting: e.in_flight.saturating_sub(1),
                total_requests: e.total_requests,
                total_tokens: e.total_tokens,
                attach_ms: e.attach_ms,
            })
            .collect()
    }

    fn runtime_stats(&self) -> RuntimeStats {
        let count = |state: WorkerState| self.workers.iter().filter(|w| w.state == state).count();
        let in_flight: Vec<usize> = self.engines.values().map(|e| e.in_flight).collect();
        RuntimeStats {
            workers: self.workers.len(),
            workers_idle: count(WorkerState::Idle),
            workers_serving: count(WorkerState::Serving),
            workers_failed: count(WorkerState::Failed),
            engines: self.engines.len(),
            attaches_waiting: self.pending.len(),
            requests_running: in_flight.iter().map(|n| (*n).min(1)).sum(),
            requests_waiting: in_flight.iter().map(|n| n.saturating_sub(1)).sum(),
            ..self.stats.clone()
        }
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
        memory_before: loaded.memory_before,
        memory_attached: loaded.memory_attached,
        prewarm: slot.prewarm.clone(),
    }
}
