//! The controller actor: owns the worker pool, places attaches, routes requests, restarts workers.
//!
//! Everything the controller answers about (worker states, memory, engines, counters) it keeps
//! itself, updated from replies and events, so listing never waits on a busy worker. A worker's
//! state changes only through the transitions of `slot_state`, which refuse stale events.

mod attach;
mod detach;
mod handlers;
mod placement;
mod slot_state;
mod source;
mod supervision;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::backend::{Backend, DType, DeviceSpec, Footprint, MemoryInfo, ModelSpec, PromptEncoder};
use crate::batch::KvUsage;
use crate::engine::EngineActor;
use crate::errors::AttachError;
use crate::occupancy::EngineLoad;
use crate::reports::{
    AttachReport, EngineId, EngineInfo, EngineRef, RuntimeStats, WorkerInfo, WorkerState,
};
use crate::runtime::RuntimeConfig;
use crate::source::{LinkKind, PeerLink};
use crate::timeline::Timeline;
use slot_state::WorkerSlot;

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
    /// Set by `Drain` (and `Shutdown`): no new attaches, none left waiting.
    refusing_attaches: bool,
    /// Runtime-wide counters.
    stats: RuntimeStats,
    /// `links[a][b]`: the link from worker `a`'s device to worker `b`'s, asked of the backend
    /// once (devices do not change).
    links: Vec<Vec<LinkKind>>,
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
    /// Encodes text and chat prompts before they are queued on the engine.
    encoder: Option<Arc<dyn PromptEncoder>>,
    /// The engine's batch, queue and KV cache, as its engine actor last wrote them.
    load: Arc<EngineLoad>,
    device_bytes: u64,
    attach_ms: f64,
    memory_before: MemoryInfo,
    memory_attached: MemoryInfo,
    last_used: Instant,
    /// Requests sent to the engine and not answered yet (running, waiting, or being encoded).
    in_flight: usize,
    total_requests: u64,
    total_tokens: u64,
}

/// An engine's requests now: in its batch, and the rest of those sent to it.
struct EngineRequests {
    running: usize,
    waiting: usize,
    kv: KvUsage,
}

impl EngineEntry {
    /// `running` is the engine's batch; `waiting` every other request sent to it and not
    /// answered: being encoded, in the engine's mailbox, or queued for KV-cache room. The two
    /// add up to `in_flight` (the engine writes its load before it answers a request).
    fn requests(&self) -> EngineRequests {
        let now = self.load.now();
        let running = now.running.min(self.in_flight);
        EngineRequests {
            running,
            waiting: self.in_flight - running,
            kv: now.kv,
        }
    }
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
    /// Whether anyone still waits for the report.
    caller: crate::messages::CallerAlive,
    /// Placed again once already, after the worker it was placed on was lost.
    retried: bool,
}

impl ControllerActor {
    pub(crate) fn new(config: RuntimeConfig, backend: Arc<dyn Backend>) -> Self {
        let workers = config
            .workers
            .iter()
            .flat_map(|w| std::iter::repeat_n(w, w.count))
            .enumerate()
            .map(|(index, w)| WorkerSlot::new(index, w.device.clone(), w.prewarm.clone()))
            .collect::<Vec<_>>();
        let links = workers
            .iter()
            .map(|a| {
                let row = workers
                    .iter()
                    .map(|b| backend.peer_link(&a.device, &b.device));
                row.collect()
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
            refusing_attaches: false,
            stats: RuntimeStats::default(),
            links,
        }
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
                state: w.state(),
                engine: w.engine(),
                prewarm: w.prewarm.clone(),
                memory: w.memory.clone(),
                failures: w.failures,
                restarts: w.restarts,
                last_error: w.last_error.clone(),
                peers: self.peer_links(w.index),
            })
            .collect()
    }

    /// From every other worker to `to`: the link and whether a peer copy can be planned.
    fn peer_links(&self, to: usize) -> Vec<PeerLink> {
        let endpoint = |w: &WorkerSlot| {
            let prewarm = w.prewarm.as_ref()?;
            prewarm.peer.map(|peer| source::Endpoint {
                peer,
                pid: prewarm.pid,
            })
        };
        let target = endpoint(&self.workers[to]);
        self.workers
            .iter()
            .filter(|w| w.index != to)
            .map(|w| {
                let reachable = source::reachable(endpoint(w), target);
                PeerLink {
                    peer: w.index,
                    device: w.device.clone(),
                    link: self.links[w.index][to],
                    copy: reachable.is_ok(),
                    reason: reachable.err(),
                }
            })
            .collect()
    }

    fn engine_infos(&self) -> Vec<EngineInfo> {
        self.engines
            .values()
            .map(|e| (e, e.requests()))
            .map(|(e, requests)| EngineInfo {
                engine_id: e.id,
                name: e.name.clone(),
                worker: e.worker,
                device: self.workers[e.worker].device.clone(),
                model: e.model.clone(),
                dtype: e.dtype,
                device_bytes: e.device_bytes,
                idle_ms: e.last_used.elapsed().as_millis() as u64,
                requests_running: requests.running,
                requests_waiting: requests.waiting,
                kv_cache_usage: requests.kv.fraction(),
                kv_cache_tokens_reserved: requests.kv.reserved_tokens,
                kv_cache_tokens_budget: requests.kv.budget_tokens,
                total_requests: e.total_requests,
                total_tokens: e.total_tokens,
                attach_ms: e.attach_ms,
            })
            .collect()
    }

    fn runtime_stats(&self) -> RuntimeStats {
        let count = |state: WorkerState| self.workers.iter().filter(|w| w.state() == state).count();
        let requests: Vec<EngineRequests> = self.engines.values().map(|e| e.requests()).collect();
        let sum = |f: fn(&EngineRequests) -> usize| requests.iter().map(f).sum::<usize>();
        RuntimeStats {
            workers: self.workers.len(),
            workers_idle: count(WorkerState::Idle),
            workers_serving: count(WorkerState::Serving),
            workers_failed: count(WorkerState::Failed),
            engines: self.engines.len(),
            attaches_waiting: self.pending.len(),
            requests_running: sum(|r| r.running),
            requests_waiting: sum(|r| r.waiting),
            kv_cache_tokens_reserved: sum(|r| r.kv.reserved_tokens),
            kv_cache_tokens_budget: sum(|r| r.kv.budget_tokens),
            ..self.stats.clone()
        }
    }
}
