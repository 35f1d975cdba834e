//! What the runtime reports back: engine ids, worker and engine listings, attach/detach reports.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::backend::{DType, DeviceSpec, MemoryInfo, PrewarmReport};
use crate::timeline::{Phase, Timeline};

/// The runtime-wide id of one attached engine; never reused while the runtime runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EngineId(pub u64);

impl fmt::Display for EngineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An engine named by its id or by its name (as an HTTP path segment would give it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EngineRef {
    Id(EngineId),
    /// A name; also matches an engine whose id, written in decimal, equals it.
    Name(String),
}

impl EngineRef {
    /// Whether this reference names the engine with `id` and `name`. A reference made only of
    /// digits is an id: names never are (see [`check_engine_name`]).
    pub fn matches(&self, id: EngineId, name: &str) -> bool {
        match self {
            EngineRef::Id(i) => *i == id,
            EngineRef::Name(n) => match n.parse::<u64>() {
                Ok(number) if n.bytes().all(|b| b.is_ascii_digit()) => number == id.0,
                _ => n == name,
            },
        }
    }
}

/// Longest engine name accepted.
pub const MAX_ENGINE_NAME_LEN: usize = 128;

/// The rule for engine names: 1 to 128 of `A-Z a-z 0-9 . _ -`, not only digits (those are
/// engine ids), not `.` or `..`. Such a name is safe in a URL path segment, a log line and a
/// metric label as it is.
pub fn check_engine_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_ENGINE_NAME_LEN {
        return Err(format!(
            "an engine name has 1 to {MAX_ENGINE_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "an engine name may use only letters, digits, `.`, `_` and `-`; found {bad:?}"
        ));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "an engine name may not be only digits (`{name}` would read as an engine id)"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a usable engine name"));
    }
    Ok(())
}

impl fmt::Display for EngineRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineRef::Id(id) => write!(f, "#{id}"),
            EngineRef::Name(name) => write!(f, "`{name}`"),
        }
    }
}

impl From<EngineId> for EngineRef {
    fn from(id: EngineId) -> Self {
        EngineRef::Id(id)
    }
}

impl From<&str> for EngineRef {
    fn from(name: &str) -> Self {
        EngineRef::Name(name.to_owned())
    }
}

impl From<String> for EngineRef {
    fn from(name: String) -> Self {
        EngineRef::Name(name)
    }
}

/// Where a worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Its thread is opening and prewarming the device.
    Warming,
    /// Prewarmed, no engine: ready for an attach.
    Idle,
    /// Loading an engine.
    Attaching,
    /// Holding an engine that answers requests.
    Serving,
    /// Releasing its engine.
    Detaching,
    /// Failed, and out of restarts (or failing right now, before a restart is scheduled).
    Failed,
    /// Failed; a fresh thread will be started after a backoff.
    Restarting,
    /// Stopped by a runtime shutdown.
    Stopped,
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&name)
    }
}

/// One worker as the controller last heard of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Index of the worker, stable across restarts.
    pub worker: usize,
    pub device: DeviceSpec,
    pub state: WorkerState,
    /// The engine it holds (or is attaching).
    pub engine: Option<EngineId>,
    /// What the last successful prewarm did.
    pub prewarm: Option<PrewarmReport>,
    /// Device memory as last reported by the worker.
    pub memory: Option<MemoryInfo>,
    /// How many times the worker failed (panic, fatal device error, lost thread).
    pub failures: u32,
    /// How many times it was restarted on a fresh thread.
    pub restarts: u32,
    /// The last failure's description.
    pub last_error: Option<String>,
    /// Every other worker: the link between their devices and whether a peer copy from it to
    /// this one can be planned.
    #[serde(default)]
    pub peers: Vec<crate::source::PeerLink>,
}

/// One attached engine, with its request counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    pub engine_id: EngineId,
    pub name: String,
    pub worker: usize,
    pub device: DeviceSpec,
    pub model: String,
    pub dtype: DType,
    /// Device bytes its weights took when attached.
    pub device_bytes: u64,
    /// Milliseconds since it last finished (or started) a request, or since it was attached.
    pub idle_ms: u64,
    /// Sequences in the engine's running batch (0 or 1 for an engine that does not batch).
    pub requests_running: usize,
    /// Every other request sent to the engine and not answered: being encoded, queued in its
    /// mailbox, or waiting for room in its KV-cache budget. `requests_running +
    /// requests_waiting` is the engine's requests in flight.
    pub requests_waiting: usize,
    /// `kv_cache_tokens_reserved / kv_cache_tokens_budget`, 0 to 1 (0 without a budget).
    pub kv_cache_usage: f64,
    /// KV-cache tokens the running batch reserves (each sequence its prompt + `max_tokens`).
    pub kv_cache_tokens_reserved: usize,
    /// The engine's KV-cache budget in tokens (`[prewarm] kv_cache_tokens`); 0 for an engine
    /// that does not batch.
    pub kv_cache_tokens_budget: usize,
    /// Requests it received since attach.
    pub total_requests: u64,
    /// Tokens it generated since attach.
    pub total_tokens: u64,
    /// Milliseconds from `requested` to `first_token` of its attach.
    pub attach_ms: f64,
}

/// What an attach did and how long each step took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttachReport {
    pub engine_id: EngineId,
    pub name: String,
    pub worker: usize,
    pub device: DeviceSpec,
    pub model: String,
    pub dtype: DType,
    /// Every anchor marked, from `requested` (taken when the controller received the request).
    pub timeline: Timeline,
    /// One phase per anchor after `requested`; prewarmed steps are zero phases.
    pub phases: Vec<Phase>,
    /// From `requested` to `first_token`.
    pub total_ms: f64,
    /// Weight bytes moved onto the device.
    pub bytes_moved: u64,
    /// `bytes_moved` over the `weights_read -> weights_on_device` phase, in GB/s.
    pub bandwidth_gb_per_s: f64,
    pub memory_before: MemoryInfo,
    pub memory_attached: MemoryInfo,
    /// The prewarm of the worker it landed on (paid once, before this request).
    pub prewarm: Option<PrewarmReport>,
    /// Where the weights came from: `peer:<worker>` (copied from another worker's device),
    /// `parked` (resident on this one), or `host` (host cache, page cache or disk).
    #[serde(default = "host_source")]
    pub source: String,
    /// Why a faster source than `source` was passed over (a peer busy, failed, in another
    /// process, or gone mid-plan).
    #[serde(default)]
    pub source_fallback: Option<String>,
}

fn host_source() -> String {
    "host".into()
}

impl AttachReport {
    /// The phases as `name=ms` pairs, for a log line.
    pub fn phases_summary(&self) -> String {
        self.phases
            .iter()
            .map(|p| format!("{}={:.2}ms", p.anchor.name(), p.ms))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What a detach freed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetachReport {
    pub engine_id: EngineId,
    pub name: String,
    pub worker: usize,
    pub memory_before_attach: MemoryInfo,
    pub memory_attached: MemoryInfo,
    pub memory_after_detach: MemoryInfo,
    /// From the controller receiving `Detach` to the worker being idle again.
    pub detach_ms: f64,
}

/// Runtime-wide counters, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeStats {
    pub workers: usize,
    pub workers_idle: usize,
    pub workers_serving: usize,
    pub workers_failed: usize,
    pub engines: usize,
    /// Attach requests waiting for a free worker.
    pub attaches_waiting: usize,
    pub attaches_succeeded: u64,
    pub attaches_failed: u64,
    pub detaches: u64,
    pub requests_total: u64,
    pub requests_failed: u64,
    /// [`EngineInfo::requests_running`] summed over engines.
    pub requests_running: usize,
    /// [`EngineInfo::requests_waiting`] summed over engines.
    pub requests_waiting: usize,
    /// [`EngineInfo::kv_cache_tokens_reserved`] summed over engines.
    pub kv_cache_tokens_reserved: usize,
    /// [`EngineInfo::kv_cache_tokens_budget`] summed over engines.
    pub kv_cache_tokens_budget: usize,
    pub tokens_total: u64,
    pub worker_failures: u64,
    pub worker_restarts: u64,
}
