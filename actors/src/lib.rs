//! Worker Controller's actor runtime: a controller, prewarmed workers and engines attached by message.
//!
//! Start it with [`Runtime::start`] (inside an actix system) or [`Runtime::start_in_background`]
//! (anywhere), then use the returned [`Handle`]: attach models, generate, detach.
//!
//! # Layout
//! - [`timeline`]: timing anchors shared by every path.
//! - [`duration`]: durations written as text ("30s", "500ms").
//! - [`quantity`]: durations and byte sizes as every config type reads them.
//! - [`device_spec`]: where a worker runs and in what precision (`cpu`, `cuda:0`, `bf16`).
//! - [`backend`]: the contract an engine implementation fulfils (devices, loading, generation).
//! - [`source`]: where an attach's weights come from (host, parked, a peer worker's copy).
//! - [`runtime`]: configuration, starting the runtime, and the [`Handle`] to use it.
//! - [`messages`]: every message, grouped by the actor that receives it.
//! - [`reports`]: what comes back: attach/detach reports, worker and engine listings, stats.
//! - [`errors`]: typed failures with their HTTP status and type name.
//! - [`controller`]: the controller actor: placement, routing, supervision and restarts.
//! - [`worker`]: the worker actor: one prewarmed device on its own thread.
//! - [`engine`]: the engine actor: one attached model serving requests (batched when it can).
//! - [`load`]: an engine's live load (batch, waiting, KV cache), shared with the controller.
//! - `guard`: the catch-unwind boundary around backend code.

pub mod backend;
pub mod batch;
pub mod controller;
pub mod device_spec;
pub mod duration;
pub mod engine;
pub mod errors;
mod guard;
pub mod messages;
pub mod occupancy;
pub mod prewarm;
pub mod process;
pub mod quantity;
pub mod reports;
pub mod request;
pub mod runtime;
pub mod source;
pub mod timeline;
pub mod worker;

pub use backend::*;
pub use batch::{Admission, BatchEngine, KvUsage, SeqEvent, SeqId};
pub use controller::ControllerActor;
pub use duration::parse_duration;
pub use errors::{AttachError, DetachError, GenerateError};
pub use messages::{
    Attach, CallerAlive, Detach, Drain, Generate, GetStats, Inspect, ListEngines, ListWorkers,
    Shutdown, WaitReady, WorkerFailed, WorkerReady,
};
pub use occupancy::{EngineLoad, LoadNow};
pub use reports::{
    check_engine_name, AttachReport, DetachReport, EngineId, EngineInfo, EngineRef, RuntimeStats,
    WorkerInfo, WorkerState,
};
pub use runtime::{
    GenerateStream, Handle, Isolation, Runtime, RuntimeConfig, RuntimeOptions, RuntimeStopped,
    WorkerConfig,
};
pub use timeline::{monotonic_ns, Anchor, Phase, Timeline};
