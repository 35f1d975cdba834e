//! One worker's candle device: opened and prewarmed (kernels of every family per dtype, pinned
//! staging and host cache), its memory as the worker reports it, and the engines it lends out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use wc_actors::{
    DeviceSpec, Engine, EngineError, GenerateOutput, GenerateRequest, MemoryInfo, ModelSpec,
    PrewarmOptions, PrewarmReport, Timeline, TokenEvent, WorkerDevice,
};

use super::load::pool_poisoned;
use crate::cuda::{self, SharedPool};
use crate::device::{candle_dtype, host_memory};
use crate::error::{DeviceError, LoadError};
use crate::host_cache::HostCache;
use crate::opt::presets::{preset, random_weights};
use crate::opt::{KvCache, OptModel};
use crate::weights::DeviceWeights;

/// One worker's candle device, with the bytes its engines hold.
pub struct CandleDevice {
    pub device: Device,
    pub spec: DeviceSpec,
    /// Cap on what this worker may use (0: the device's size).
    pub(super) memory_limit: u64,
    /// The KV-cache budget of each engine loaded here, in tokens.
    pub(super) kv_cache_tokens: usize,
    /// Bytes held by engines loaded here; each engine gives its share back when dropped.
    pub(super) held: Arc<AtomicU64>,
    /// Weight bytes and tokenizers of recently loaded models (empty for the standard path).
    pub(super) host_cache: HostCache,
    /// Pinned staging ring and host cache for uploads (CUDA), allocated at prewarm and shared
    /// by the workers of the device in this process.
    pub(super) pinned: Option<SharedPool>,
    /// The pinned cache's `(used, capacity)` bytes when last read.
    pub(super) pinned_usage: std::sync::Mutex<(u64, u64)>,
}

impl CandleDevice {
    /// Opens the device; with `prewarm`, also runs every kernel the engine uses in each dtype.
    pub fn open(
        spec: &DeviceSpec,
        prewarm: Option<&PrewarmOptions>,
    ) -> Result<(Self, PrewarmReport), LoadError> {
        let started = Instant::now();
        let mut report = PrewarmReport::default();
        let mut step = |name: String, since: Instant| {
            report
                .steps
                .push((name, since.elapsed().as_secs_f64() * 1e3));
        };
        if let Some(options) = prewarm.filter(|p| !p.cpus.is_empty()) {
            super::affinity::keep_thread_on(&options.cpus, spec)?;
            step(format!("kept on CPUs {:?}", options.cpus), Instant::now());
        }
        let t = Instant::now();
        let device = crate::device::open(spec)?;
        device.synchronize()?;
        step("context".into(), t);
        if let Some(options) = prewarm {
            for dtype in &options.dtypes {
                let t = Instant::now();
                run_tiny_forward(&device, candle_dtype(*dtype))?;
                step(format!("kernels {dtype}"), t);
                let t = Instant::now();
                crate::models::llama::prewarm(&device, candle_dtype(*dtype))?;
                step(format!("kernels {dtype} llama"), t);
            }
        }
        let pinned = match (&device, spec, prewarm) {
            (Device::Cuda(cuda), DeviceSpec::Cuda(ordinal), Some(options)) => {
                cuda::keep_pool_memory(cuda)?;
                let t = Instant::now();
                let (staging, cache) = (options.staging_bytes, options.host_cache_bytes);
                let shared = cuda::device_pool(cuda, *ordinal, staging, cache)?;
                let (staging, total) = shared
                    .lock()
                    .map(|p| (p.staging_bytes(), p.bytes()))
                    .map_err(|_| pool_poisoned())?;
                step(
                    format!(
                        "pinned staging {} MiB, host cache {} MiB",
                        staging >> 20,
                        (total - staging) >> 20
                    ),
                    t,
                );
                Some(shared)
            }
            _ => None,
        };
        let opened = Self {
            device,
            spec: spec.clone(),
            memory_limit: prewarm.map(|p| p.memory_limit_bytes).unwrap_or(0),
            kv_cache_tokens: prewarm
                .map(|p| p.kv_cache_tokens)
                .unwrap_or(PrewarmOptions::default().kv_cache_tokens),
            held: Arc::new(AtomicU64::new(0)),
            host_cache: HostCache::new(prewarm.map(|p| p.host_cache_bytes).unwrap_or(0)),
            pinned,
            pinned_usage: Default::default(),
        };
        report.total_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok((opened, report))
    }

    /// `(used, capacity)` bytes of the host cache: the pinned one on CUDA (as last seen when
    /// another worker's load holds it), the pageable one elsewhere.
    fn host_cache_usage(&self) -> (u64, u64) {
        let Some(shared) = &self.pinned else {
            return (self.host_cache.bytes(), self.host_cache.budget_bytes());
        };
        let mut last = self
            .pinned_usage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Ok(pool) = shared.try_lock() {
            if let Some(contents) = pool.contents() {
                *last = (contents.used_bytes, contents.capacity_bytes);
            }
        }
        *last
    }

    /// Whether the host cache holds a version of the weight file `path` (for tests and reports).
    pub fn host_cache_holds(&self, path: &std::path::Path) -> bool {
        self.host_cache.holds(path)
    }
}

/// Builds a tiny random OPT in `dtype` and runs a prefill and a decode step, so that every
/// kernel module and BLAS path the engine uses is loaded before any model is known.
fn run_tiny_forward(device: &Device, dtype: candle_core::DType) -> Result<(), LoadError> {
    let mut config = preset("tiny").expect("tiny preset exists");
    config.hidden_size = 64;
    config.ffn_dim = 128;
    config.vocab_size = 64;
    config.word_embed_proj_dim = Some(64);
    let host = random_weights(&config, &Device::Cpu, candle_core::DType::F32, 0)?;
    let on_device = host
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_device(device)?.to_dtype(dtype)?)))
        .collect::<Result<_, candle_core::Error>>()?;
    let model = OptModel::new(config, &DeviceWeights::from_tensors(on_device))?;
    let mut cache = KvCache::default();
    let prompt = Tensor::new(&[[2u32, 5, 7, 9]], device)?;
    model.forward(&prompt, &mut cache, false)?;
    let next = Tensor::new(&[[11u32]], device)?;
    model.forward(&next, &mut cache, false)?.to_vec2::<f32>()?;
    Ok(())
}

/// An engine that gives its bytes back to its device's account when dropped.
struct LeasedEngine {
    engine: Box<dyn Engine>,
    held: Arc<AtomicU64>,
}

impl Drop for LeasedEngine {
    fn drop(&mut self) {
        self.held
            .fetch_sub(self.engine.device_bytes(), Ordering::SeqCst);
    }
}

impl Engine for LeasedEngine {
    fn generate(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<GenerateOutput, EngineError> {
        self.engine.generate(request, on_token)
    }

    fn warm_up(&mut self) -> Result<u32, EngineError> {
        self.engine.warm_up()
    }

    fn device_bytes(&self) -> u64 {
        self.engine.device_bytes()
    }

    fn prompt_encoder(&self) -> Option<Arc<dyn wc_actors::PromptEncoder>> {
        self.engine.prompt_encoder()
    }

    fn batch(&mut self) -> Option<&mut dyn wc_actors::BatchEngine> {
        self.engine.batch()
    }
}

impl WorkerDevice for CandleDevice {
    fn memory(&self) -> Result<MemoryInfo, EngineError> {
        let held = self.held.load(Ordering::SeqCst);
        let (device_total, device_free) = match &self.device {
            Device::Cuda(cuda) => cuda::memory_info(cuda).map_err(|e| {
                EngineError::from(LoadError::Device(DeviceError::other(format!(
                    "reading device memory: {e}"
                ))))
            })?,
            _ => {
                let (total, _) = host_memory();
                (total, total.saturating_sub(held))
            }
        };
        let (host_cache_used_bytes, host_cache_capacity_bytes) = self.host_cache_usage();
        let (total_bytes, free_bytes) = match self.memory_limit {
            0 => (device_total, device_free),
            limit => (limit, limit.saturating_sub(held).min(device_free)),
        };
        Ok(MemoryInfo {
            total_bytes,
            free_bytes,
            host_cache_used_bytes,
            host_cache_capacity_bytes,
        })
    }

    fn load(
        &mut self,
        spec: &ModelSpec,
        timeline: &mut Timeline,
    ) -> Result<(Box<dyn Engine>, u64), EngineError> {
        let (engine, bytes) = self.load_engine(spec, timeline)?;
        self.held.fetch_add(engine.device_bytes(), Ordering::SeqCst);
        Ok((
            Box::new(LeasedEngine {
                engine,
                held: self.held.clone(),
            }),
            bytes,
        ))
    }

    fn synchronize(&self) -> Result<(), EngineError> {
        self.device
            .synchronize()
            .map_err(|e| EngineError::from(LoadError::from(e)))
    }

    fn inject_fault(&self) -> Result<(), EngineError> {
        match &self.device {
            Device::Cuda(cuda) => Err(EngineError::from(cuda::fault_illegal_address(cuda))),
            _ => Err(EngineError::new(
                wc_actors::ErrorKind::InvalidRequest,
                "only a CUDA device has a fault to inject",
            )),
        }
    }
}
