//! Every message of the runtime, grouped by the actor that receives it.

use actix::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use crate::backend::{
    DeviceSpec, Footprint, GenerateOutput, GenerateRequest, MemoryInfo, ModelSpec, PrewarmReport,
    TokenEvent,
};
use crate::engine::EngineActor;
use crate::errors::{AttachError, DetachError, GenerateError};
use crate::reports::{
    AttachReport, DetachReport, EngineId, EngineInfo, EngineRef, RuntimeStats, WorkerInfo,
};
use crate::timeline::Timeline;

// ---------------------------------------------------------------------------------------------
// Requests to the controller (the public surface)
// ---------------------------------------------------------------------------------------------

/// Load a model onto a free worker and start an engine for it.
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<AttachReport, AttachError>")]
pub struct Attach {
    pub model: ModelSpec,
    /// Attach to this worker only (waiting for it if it is busy).
    pub worker: Option<usize>,
    /// Attach to a worker on this device only.
    pub device: Option<DeviceSpec>,
    /// A unique name to address the engine by; defaults to `engine-<id>`.
    pub name: Option<String>,
    /// Alive while someone waits for the report (always, by default): an attach still waiting
    /// for a busy worker when its caller is gone leaves the queue, so it neither counts against
    /// `max_waiting_attaches` nor loads for nobody.
    pub caller: CallerAlive,
}

impl Attach {
    /// Attach `model` anywhere, under a generated name.
    pub fn new(model: ModelSpec) -> Self {
        Self {
            model,
            worker: None,
            device: None,
            name: None,
            caller: CallerAlive::default(),
        }
    }

    /// Wanted only while `token` (or a clone of it) is held; see [`Attach::caller`].
    pub fn wanted_while(mut self, token: &std::sync::Arc<()>) -> Self {
        self.caller = CallerAlive::tied_to(token);
        self
    }

    /// Asks for one worker.
    pub fn on_worker(mut self, worker: usize) -> Self {
        self.worker = Some(worker);
        self
    }

    /// Asks for a worker on one device.
    pub fn on_device(mut self, device: DeviceSpec) -> Self {
        self.device = Some(device);
        self
    }

    /// Names the engine.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// Free an engine; its worker becomes idle. Requests already sent to it are served first.
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<DetachReport, DetachError>")]
pub struct Detach {
    pub engine: EngineRef,
}

/// Generate with an engine; with `stream`, each token is also sent there as it is made.
#[derive(Debug, Message)]
#[rtype(result = "Result<GenerateOutput, GenerateError>")]
pub struct Generate {
    pub engine: EngineRef,
    pub request: GenerateRequest,
    /// Receives each token; generation stops early when its receiver is dropped.
    pub stream: Option<UnboundedSender<TokenEvent>>,
    /// Alive while the caller waits for the answer: a request whose caller is gone is skipped
    /// when its turn comes (and stopped early if it is running), so it frees its place.
    pub caller: CallerAlive,
}

/// A weak handle on the caller's interest in a request; see [`Generate::caller`] and
/// [`Attach::caller`].
#[derive(Clone, Debug, Default)]
pub struct CallerAlive(Option<std::sync::Weak<()>>);

impl CallerAlive {
    /// Tied to `token`: gone once every strong reference to it is dropped.
    pub fn tied_to(token: &std::sync::Arc<()>) -> Self {
        Self(Some(std::sync::Arc::downgrade(token)))
    }

    /// Whether the caller still waits (always, when not tied to anything).
    pub fn is_alive(&self) -> bool {
        self.0.as_ref().is_none_or(|w| w.strong_count() > 0)
    }
}

/// Check a model without loading it: resolve it, read its headers, size its footprint. An
/// API calls this before it makes room for an attach, so a model that cannot load never costs
/// another engine its place.
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<Footprint, AttachError>")]
pub struct Inspect {
    pub model: ModelSpec,
}

/// Every worker with its state, as the controller last heard; never waits on a worker.
#[derive(Clone, Copy, Debug, Message)]
#[rtype(result = "Vec<WorkerInfo>")]
pub struct ListWorkers;

/// Every attached engine with its request counters.
#[derive(Clone, Copy, Debug, Message)]
#[rtype(result = "Vec<EngineInfo>")]
pub struct ListEngines;

/// Runtime-wide counters.
#[derive(Clone, Copy, Debug, Message)]
#[rtype(result = "RuntimeStats")]
pub struct GetStats;

/// Reply once no worker is warming or restarting (each is idle, busy or failed for good).
#[derive(Clone, Copy, Debug, Message)]
#[rtype(result = "Vec<WorkerInfo>")]
pub struct WaitReady;

/// Stop taking attaches (the server is draining): those waiting for a worker and every new one
/// are answered `ShuttingDown`; attached engines go on serving, loads under way finish.
#[derive(Clone, Copy, Debug, Message)]
#[rtype(result = "()")]
pub struct Drain;

/// Detach every engine, stop every worker's thread, refuse new attaches.
#[derive(Clone, Copy, Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

// ---------------------------------------------------------------------------------------------
// Events to the controller (sent by workers and engines)
// ---------------------------------------------------------------------------------------------

/// A worker opened and prewarmed its device.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub struct WorkerReady {
    pub worker: usize,
    /// Which start of the worker this is (a restart counts up), so stale events are ignored.
    pub incarnation: u64,
    pub prewarm: PrewarmReport,
    pub memory: MemoryInfo,
}

/// A worker (or an engine on it) hit a panic or a fatal device error; it must be restarted.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub struct WorkerFailed {
    pub worker: usize,
    pub incarnation: u64,
    pub reason: String,
}

// ---------------------------------------------------------------------------------------------
// Requests to a worker (sent by the controller)
// ---------------------------------------------------------------------------------------------

/// Load a model on this worker's device and start its engine actor on this thread.
#[derive(Debug, Message)]
#[rtype(result = "Result<Loaded, LoadFailed>")]
pub(crate) struct LoadEngine {
    pub engine_id: EngineId,
    pub spec: ModelSpec,
    /// What the controller's inspection of `spec` handed down.
    pub handoff: crate::backend::Handoff,
    /// Already holds `requested`; the worker marks the rest.
    pub timeline: Timeline,
    /// Where the controller planned the weights to come from.
    pub source: crate::source::WeightsSource,
}

/// What a successful load gives the controller.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub engine: Addr<EngineActor>,
    /// The engine's prompt encoder, run by the controller off the engine's thread.
    pub encoder: Option<std::sync::Arc<dyn crate::backend::PromptEncoder>>,
    /// The engine's live load, written by its engine actor.
    pub load: std::sync::Arc<crate::occupancy::EngineLoad>,
    pub timeline: Timeline,
    pub bytes_moved: u64,
    pub device_bytes: u64,
    pub memory_before: MemoryInfo,
    pub memory_attached: MemoryInfo,
    /// Where the weights came from, as the device reports it.
    pub source: crate::source::SourceReport,
}

/// Why a load failed, with the device's memory afterwards (when the worker survived).
#[derive(Debug)]
pub(crate) struct LoadFailed {
    pub error: AttachError,
    pub memory: Option<Box<MemoryInfo>>,
}

/// Drop this worker's engine after the requests queued to it; reply with memory afterwards.
/// `Err` carries the reason the worker failed while doing it.
#[derive(Debug, Message)]
#[rtype(result = "Result<MemoryInfo, String>")]
pub(crate) struct ReleaseEngine;

// ---------------------------------------------------------------------------------------------
// Requests to an engine (sent by the controller, and by its worker)
// ---------------------------------------------------------------------------------------------

/// Run one generation on the engine's thread.
#[derive(Debug, Message)]
#[rtype(result = "Result<GenerateOutput, GenerateError>")]
pub(crate) struct RunGenerate {
    pub request: GenerateRequest,
    pub stream: Option<UnboundedSender<TokenEvent>>,
    pub caller: CallerAlive,
}

/// Drop the engine (after every request queued before this one) and stop the actor.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), String>")]
pub(crate) struct DropEngine;
