//! The contract between the runtime and an engine implementation: devices, loaders and engines.
//!
//! The runtime never knows which model family it runs. A [`Backend`] opens a [`WorkerDevice`] on
//! a worker's own thread; the device loads models into [`Engine`]s that live on that thread too.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::device_spec::{DType, DeviceSpec};
pub use crate::prewarm::{PrewarmOptions, PrewarmReport};
pub use crate::request::{
    ChatMessage, FinishReason, GenerateOutput, GenerateRequest, Prompt, TokenEvent, TokenLogprobs,
};
pub use crate::source::{LinkKind, PeerLink, PeerSource, SourceReport, WeightsSource};
use crate::timeline::Timeline;

/// A model to attach: a checkpoint directory or hub id, and the dtype to hold it in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// A directory in the Hugging Face layout, or a hub id resolved from the local cache.
    pub model: String,
    /// The dtype on the device; `None` keeps the checkpoint's own.
    pub dtype: Option<DType>,
    /// `model` is the canonical directory a server admitted under its model roots: it is opened
    /// as exactly that path, and a symlink found on the way (swapped in since) is refused.
    #[serde(default)]
    pub canonical: bool,
    /// Whether the device keeps this model's weights resident ("parked") once its engine is
    /// detached (a configured model's `park`); `None` follows the worker's
    /// [`PrewarmOptions::park_detached`].
    #[serde(default)]
    pub park: Option<bool>,
}

/// What attaching a model will cost, read from its headers without loading it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Footprint {
    /// Device bytes the weights take at the requested dtype.
    pub device_bytes: u64,
    /// Device bytes one token takes in the KV cache (keys and values, every layer): an engine
    /// may hold its worker's `kv_cache_tokens` of them beside its weights.
    #[serde(default)]
    pub kv_bytes_per_token: u64,
    /// Bytes of weight data in the checkpoint files.
    pub file_bytes: u64,
    /// The dtype the engine will use.
    pub dtype: DType,
    /// What the inspection read, handed to the attach that follows it.
    #[serde(default)]
    pub handoff: Handoff,
    /// The identity of the weights on a device: the same for two specs whose weight files
    /// (by identity, not path) and dtype are the same, so that a copy resident on one worker
    /// can stand in for a read on another (see [`MemoryInfo::resident`]); empty: unknown.
    #[serde(default)]
    pub weights: String,
}

/// What a backend's inspection read (for a checkpoint: every weight file's identity and parsed
/// header), handed unchanged to the attach that follows it, in this process or serialised to a
/// worker process, so that nothing is parsed twice. Opaque to the runtime; empty when the
/// backend hands nothing down (the device then inspects on its own).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Handoff(pub std::sync::Arc<Vec<u8>>);

impl Handoff {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Handoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handoff({} bytes)", self.0.len())
    }
}

impl Footprint {
    /// Device bytes an engine of this model needs on a worker whose KV-cache budget is
    /// `kv_cache_tokens`: its weights and a full KV cache.
    pub fn needed_bytes(&self, kv_cache_tokens: usize) -> u64 {
        self.device_bytes.saturating_add(
            self.kv_bytes_per_token
                .saturating_mul(kv_cache_tokens as u64),
        )
    }
}

/// A device's memory, in bytes, and what the worker's host cache holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Host memory the worker's cache of recently loaded models holds now (pinned on CUDA).
    #[serde(default)]
    pub host_cache_used_bytes: u64,
    /// Host memory the cache may hold (0: no cache, or the machine's shared cache, reported
    /// once for the machine rather than per worker).
    #[serde(default)]
    pub host_cache_capacity_bytes: u64,
    /// Bytes of the machine's shared host cache this worker's process has registered with its
    /// device driver (pinned) so far: registration runs in the background after prewarm, and a
    /// file whose blocks are not registered yet streams through the staging ring.
    #[serde(default)]
    pub host_cache_pinned_bytes: u64,
    /// Device memory held by parked weights (models detached but kept resident, see
    /// [`PrewarmOptions::park_detached`]): counted in `free_bytes`, since an attach that needs
    /// the room frees them first.
    #[serde(default)]
    pub parked_bytes: u64,
    /// The models whose weights are parked on the device (together `parked_bytes`), most
    /// recently used first.
    #[serde(default)]
    pub parked: Vec<TierEntry>,
    /// The models whose weight files the host cache holds (together `host_cache_used_bytes`,
    /// less the pinned cache's block rounding), most recently used first.
    #[serde(default)]
    pub host_cache: Vec<TierEntry>,
    /// The identities ([`Footprint::weights`]) of the weights resident on the device, parked
    /// or lent to the live engine, that another worker of this process may copy from.
    #[serde(default)]
    pub resident: Vec<String>,
}

/// One model in a tier of a worker's weight cache: its checkpoint directory and the bytes of it
/// that the tier holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierEntry {
    pub model: String,
    pub bytes: u64,
}

impl MemoryInfo {
    pub fn used_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.free_bytes)
    }
}

/// The category of an engine failure; decides HTTP status and whether the worker survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad parameters in a request (unknown dtype, prompt too long, ...).
    InvalidRequest,
    /// The model or a file of it does not exist.
    NotFound,
    /// The checkpoint exists but cannot be loaded (corrupt, wrong shapes, unknown type).
    InvalidModel,
    /// The device has no room for it.
    OutOfMemory,
    /// The device is unusable; the worker must be restarted.
    DeviceFatal,
    /// Anything else.
    Internal,
}

/// A typed failure from a backend or engine, carried in replies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub kind: ErrorKind,
    pub message: String,
}

impl EngineError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Builds devices for workers. Shared by every worker; lives as long as the runtime.
pub trait Backend: Send + Sync + 'static {
    /// Resolves and checks a model from its headers alone, on the caller's thread, and says how
    /// much device memory it needs. Cheap: no weights are read.
    fn inspect(&self, spec: &ModelSpec) -> Result<Footprint, EngineError>;

    /// Everything [`Self::inspect`] checks and every other check an attach makes without a
    /// device (tokenizer, chat template, side files, ids against the vocabulary): what a caller
    /// runs before it frees room for the model by evicting a live engine. Slower than `inspect`
    /// (it parses the tokenizer); by default, `inspect`.
    fn preflight(&self, spec: &ModelSpec) -> Result<Footprint, EngineError> {
        self.inspect(spec)
    }

    /// In the serving process, before an attach is sent to a worker process: what this attach
    /// may use of state the backend shares among all its worker processes (e.g. blocks of a
    /// host weight cache), added to the handoff it is sent with. The grant ends when the
    /// attach has (succeeded or failed, its process alive or not). By default: nothing added.
    fn grant_attach(&self, handoff: &Handoff) -> Result<AttachGrant, EngineError> {
        Ok(AttachGrant::plain(handoff.clone()))
    }

    /// The physical link between two devices of this machine, for `/workers` and for placing
    /// peer copies; by default: the same device, or none.
    fn peer_link(&self, from: &DeviceSpec, to: &DeviceSpec) -> LinkKind {
        match (from, to) {
            (DeviceSpec::Cuda(a), DeviceSpec::Cuda(b)) if a == b => LinkKind::SameDevice,
            _ => LinkKind::None,
        }
    }

    /// Opens the device on the calling thread (the worker's own) and prewarms it. The returned
    /// device stays on this thread for its whole life.
    fn open_device(
        &self,
        device: &DeviceSpec,
        options: &PrewarmOptions,
    ) -> Result<(Box<dyn WorkerDevice>, PrewarmReport), EngineError>;
}

/// What [`Backend::grant_attach`] lent one attach: the handoff to send it with, and what to do
/// once it has ended (called with whether it succeeded; with `false` when dropped unended).
pub struct AttachGrant {
    pub handoff: Handoff,
    end: Option<Box<dyn FnOnce(bool) + Send>>,
}

impl AttachGrant {
    /// A grant of nothing: the handoff as it was.
    pub fn plain(handoff: Handoff) -> Self {
        Self { handoff, end: None }
    }

    /// A grant whose end runs `end(succeeded)`.
    pub fn new(handoff: Handoff, end: impl FnOnce(bool) + Send + 'static) -> Self {
        Self {
            handoff,
            end: Some(Box::new(end)),
        }
    }

    /// The attach has ended.
    pub fn finish(mut self, succeeded: bool) {
        if let Some(end) = self.end.take() {
            end(succeeded);
        }
    }
}

impl Drop for AttachGrant {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            end(false);
        }
    }
}

/// One worker's device context (CPU, or a CUDA context with its stream and staging memory).
pub trait WorkerDevice {
    /// Free and total memory now, as this worker may use it; a failed query is an error, never a
    /// made-up figure.
    fn memory(&self) -> Result<MemoryInfo, EngineError>;

    /// Reads the weights, puts them on the device and builds an engine. Marks `weights_read`,
    /// `weights_on_device` and `engine_ready` on `timeline` (each after a device sync) and
    /// returns the number of weight bytes moved to the device.
    /// `handoff` is what the backend's inspection of `spec` handed down (maybe empty).
    fn load(
        &mut self,
        spec: &ModelSpec,
        handoff: &Handoff,
        timeline: &mut Timeline,
    ) -> Result<(Box<dyn Engine>, u64), EngineError>;

    /// Waits until all queued device work is done.
    fn synchronize(&self) -> Result<(), EngineError>;

    /// [`Self::attach`] with the source the controller planned for the weights. By default
    /// the plan is not followed: the device reads as it always does and says why when the plan
    /// named a peer.
    fn attach_from(
        &mut self,
        spec: &ModelSpec,
        handoff: &Handoff,
        source: &WeightsSource,
        timeline: &mut Timeline,
    ) -> Result<WarmEngine, EngineError> {
        let mut warm = self.attach(spec, handoff, timeline)?;
        if let WeightsSource::Peer(peer) = source {
            warm.source = warm.source.with_fallback(format!(
                "this device cannot copy from worker {}'s device",
                peer.worker
            ));
        }
        Ok(warm)
    }

    /// The whole of an attach on this device: memory read, [`Self::load`], the engine warmed
    /// up to a first token and the device synchronized, the engine's size, memory read again.
    /// One call, so that a device in a worker process answers an attach in one round trip
    /// instead of one per step. An engine that fails to warm up is dropped before the error
    /// returns; a panic while dropping it is a fatal error.
    fn attach(
        &mut self,
        spec: &ModelSpec,
        handoff: &Handoff,
        timeline: &mut Timeline,
    ) -> Result<WarmEngine, EngineError> {
        let memory_before = self.memory()?;
        let (mut engine, bytes_moved) = self.load(spec, handoff, timeline)?;
        let warmed = crate::guard::call("warming up the engine", || engine.warm_up())
            .map_err(crate::guard::Failure::into_error)
            .and_then(|_| self.synchronize())
            .map(|()| engine.device_bytes());
        let device_bytes = match warmed {
            Ok(bytes) => bytes,
            Err(e) => {
                crate::guard::drop_guarded("dropping the engine", engine)
                    .map_err(|reason| EngineError::new(ErrorKind::DeviceFatal, reason))?;
                return Err(e);
            }
        };
        Ok(WarmEngine {
            engine,
            bytes_moved,
            device_bytes,
            memory_before,
            memory_attached: self.memory()?,
            source: SourceReport::default(),
        })
    }

    /// Whatever holds the device (a worker process) is still there; polled while the worker
    /// is idle. An error fails the worker, which is then restarted.
    fn check_alive(&self) -> Result<(), EngineError> {
        Ok(())
    }

    /// For the supervision tests only: make the device fail as a faulting kernel does (on CUDA,
    /// a kernel writing to an invalid address, a sticky error). Devices without one say so.
    fn inject_fault(&self) -> Result<(), EngineError> {
        Err(EngineError::new(
            ErrorKind::InvalidRequest,
            "this device has no fault to inject",
        ))
    }
}

/// An engine attached by [`WorkerDevice::attach`]: loaded, warmed up to its first token.
pub struct WarmEngine {
    pub engine: Box<dyn Engine>,
    /// Weight bytes moved to the device.
    pub bytes_moved: u64,
    /// Device bytes the engine holds.
    pub device_bytes: u64,
    /// The device's memory before the load and once the engine was warm.
    pub memory_before: MemoryInfo,
    pub memory_attached: MemoryInfo,
    /// Where the weights came from; a device sets it after [`WorkerDevice::attach`].
    pub source: SourceReport,
}

/// Turns a prompt into token ids away from the engine's thread: tokenizing (and rendering a
/// chat template) is CPU work that would otherwise stall every request queued on the engine.
/// It refuses, before tokenizing, a prompt that cannot fit the model's context.
pub trait PromptEncoder: Send + Sync {
    fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError>;
}

impl fmt::Debug for dyn PromptEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PromptEncoder")
    }
}

/// A model on a device, ready to generate. Dropping it frees its device memory.
pub trait Engine {
    /// Generates for one request; calls `on_token` for each new token, and stops early (with
    /// [`FinishReason::Cancelled`]) when it returns `false`.
    fn generate(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<GenerateOutput, EngineError>;

    /// Runs one step to produce a first token (the warm-up after attach).
    fn warm_up(&mut self) -> Result<u32, EngineError>;

    /// Device bytes this engine holds.
    fn device_bytes(&self) -> u64;

    /// What encodes this engine's prompts off its thread; `None`: [`Engine::generate`] takes
    /// prompts as they come. The runtime asks once, after the attach.
    fn prompt_encoder(&self) -> Option<std::sync::Arc<dyn PromptEncoder>> {
        None
    }

    /// The step-based interface of an engine that batches requests at the iteration level;
    /// `None` (the default): requests run one at a time through [`Engine::generate`].
    fn batch(&mut self) -> Option<&mut dyn crate::batch::BatchEngine> {
        None
    }
}
