//! What a worker does before any model is known ([`PrewarmOptions`], the `[prewarm]` section of
//! `serve`'s config) and what it reports having done ([`PrewarmReport`]).

use serde::{Deserialize, Serialize};

use crate::device_spec::DType;

/// What a worker does before any model is known. The `[prewarm]` section of `serve`'s config
/// file deserializes into this type: sizes are bytes or text ("256MiB"), keys without `_bytes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrewarmOptions {
    /// Dtypes whose kernels are loaded by running a tiny forward pass in each.
    pub dtypes: Vec<DType>,
    /// Bytes of pinned host staging memory every upload streams through, allocated up front
    /// (CUDA only; bounded whatever the model size).
    #[serde(rename = "staging", with = "crate::quantity::byte_size")]
    pub staging_bytes: u64,
    /// Host memory kept for recently loaded models so that attaching them again skips the disk
    /// (on CUDA: pinned, allocated up front; LRU by bytes).
    #[serde(rename = "host_cache", with = "crate::quantity::byte_size")]
    pub host_cache_bytes: u64,
    /// Cap on the device memory this worker may use (0: the device's own size).
    #[serde(rename = "memory_limit", with = "crate::quantity::byte_size")]
    pub memory_limit_bytes: u64,
    /// KV-cache tokens an engine on this worker reserves for the requests it runs at once;
    /// each reserves its prompt plus `max_new_tokens`, and one larger than all of it is refused.
    pub kv_cache_tokens: usize,
    /// CPUs the thread that drives the worker's device is kept on (Linux): the worker thread,
    /// or a worker process's main thread. Empty: wherever the scheduler puts it. Decode of a
    /// small model is bound by that thread's kernel launches, so on a machine whose CPUs run
    /// at different speeds (a VM's vCPUs, a far NUMA node) this decides its tokens/s.
    pub cpus: Vec<usize>,
    /// Keep a detached model's weights on the device ("parked", no engine, no KV cache) while
    /// no one needs the room, so that attaching the same files again skips the read and the
    /// copy. Parked weights are freed, least recently used first, the moment an attach needs
    /// the room: they never make an attach fail or wait that would have fit without them.
    pub park_detached: bool,
}

impl Default for PrewarmOptions {
    fn default() -> Self {
        Self {
            dtypes: vec![DType::F32],
            staging_bytes: 256 << 20,
            host_cache_bytes: 512 << 20,
            memory_limit_bytes: 0,
            kv_cache_tokens: 32768,
            cpus: Vec::new(),
            park_detached: false,
        }
    }
}

/// What prewarming a worker did and how long each step took.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrewarmReport {
    /// `(step, milliseconds)`, in order: e.g. `("context", 210.0)`, `("kernels f16", 12.5)`.
    pub steps: Vec<(String, f64)>,
    pub total_ms: f64,
    /// The worker's process id, when it runs in its own process.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Where other workers of the same process reach this device's resident weights for a
    /// peer copy (unique within its process); `None`: it lends none.
    #[serde(default)]
    pub peer: Option<u64>,
}
