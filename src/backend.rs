//! The model layer as a runtime backend: inspects checkpoints, opens and prewarms candle devices,
//! loads engines of every supported family (OPT and the Llama family).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use wc_actors::{
    Anchor, DType, DeviceSpec, Engine, EngineError, Footprint, GenerateOutput, GenerateRequest,
    MemoryInfo, ModelSpec, PrewarmOptions, PrewarmReport, Timeline, TokenEvent, WorkerDevice,
};

use crate::checkpoint::{Checkpoint, TensorHeader};
use crate::cuda::{self, CacheInserts, CopiesInFlight, PinnedPool, SharedPool};
use crate::device::{candle_dtype, host_memory};
use crate::error::{DeviceError, LoadError};
use crate::host_cache::{check_cached, HostCache};
use crate::models::ModelConfig;
use crate::opt::presets::{preset, random_weights};
use crate::opt::{KvCache, OptEngine, OptModel};
use crate::weights::DeviceWeights;

/// Runs checkpoints of every supported family on candle devices.
#[derive(Clone, Debug, Default)]
pub struct CandleBackend;

/// A checkpoint checked against its config, with the dtype it will be held in.
pub struct CheckedCheckpoint {
    pub checkpoint: Checkpoint,
    pub dtype: DType,
    pub footprint: Footprint,
}

/// Resolves `spec` and checks every tensor's presence, shape and dtype from the headers alone
/// (each weight file's header checked against the file's length; no tensor data is read).
/// Errors name files relative to the checkpoint directory.
pub fn check(spec: &ModelSpec) -> Result<CheckedCheckpoint, LoadError> {
    let checkpoint = Checkpoint::resolve(&spec.model)?;
    check_headers(spec, checkpoint.clone()).map_err(|e| e.relative_to(&checkpoint.dir))
}

fn check_headers(spec: &ModelSpec, checkpoint: Checkpoint) -> Result<CheckedCheckpoint, LoadError> {
    let headers = checkpoint.headers()?;
    let mut by_name = HashMap::with_capacity(headers.len());
    for header in &headers {
        crate::weights::candle_dtype(&header.name, header.dtype)?;
        if by_name.insert(header.name.as_str(), header).is_some() {
            return Err(LoadError::DuplicateTensor(header.name.clone()));
        }
    }
    for (name, shape) in checkpoint.config.expected_tensors() {
        let header = by_name
            .get(name.as_str())
            .ok_or_else(|| LoadError::MissingTensor(name.clone()))?;
        if header.shape != shape {
            return Err(LoadError::WrongShape {
                name,
                expected: shape,
                found: header.shape.clone(),
            });
        }
    }
    let dtype = spec
        .dtype
        .or_else(|| Checkpoint::stored_dtype(&headers))
        .unwrap_or(DType::F32);
    let elements: u64 = headers.iter().map(TensorHeader::elements).sum();
    let footprint = Footprint {
        device_bytes: elements * dtype.size(),
        kv_bytes_per_token: checkpoint.config.kv_bytes_per_token(dtype.size()),
        file_bytes: headers.iter().map(|h| h.data_bytes).sum(),
        dtype,
    };
    Ok(CheckedCheckpoint {
        checkpoint,
        dtype,
        footprint,
    })
}

impl wc_actors::Backend for CandleBackend {
    fn inspect(&self, spec: &ModelSpec) -> Result<Footprint, EngineError> {
        Ok(check_cached(spec)?.footprint.clone())
    }

    fn open_device(
        &self,
        device: &DeviceSpec,
        options: &PrewarmOptions,
    ) -> Result<(Box<dyn WorkerDevice>, PrewarmReport), EngineError> {
        let (opened, report) = CandleDevice::open(device, Some(options))?;
        Ok((Box::new(opened), report))
    }
}

/// One worker's candle device, with the bytes its engines hold.
pub struct CandleDevice {
    pub device: Device,
    pub spec: DeviceSpec,
    /// Cap on what this worker may use (0: the device's size).
    memory_limit: u64,
    /// The KV-cache budget of each engine loaded here, in tokens.
    kv_cache_tokens: usize,
    /// Bytes held by engines loaded here; each engine gives its share back when dropped.
    held: Arc<AtomicU64>,
    /// Weight bytes and tokenizers of recently loaded models (empty for the standard path).
    host_cache: HostCache,
    /// Pinned staging ring and host cache for uploads (CUDA), allocated at prewarm and shared
    /// by the workers of the device in this process.
    pinned: Option<SharedPool>,
    /// The pinned cache's `(used, capacity)` bytes when last read.
    pinned_usage: std::sync::Mutex<(u64, u64)>,
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

    /// Loads a checkpoint of any supported family as a runtime engine, marking the anchors on
    /// `timeline`; returns it with the number of weight bytes read. What it read goes into the
    /// host cache only if the load succeeds.
    pub fn load_engine(
        &mut self,
        spec: &ModelSpec,
        timeline: &mut Timeline,
    ) -> Result<(Box<dyn Engine>, u64), LoadError> {
        let kv_cache_tokens = self.kv_cache_tokens;
        self.load_with(spec, timeline, |config, weights, tokenizer, dir| {
            config.build_engine(weights, tokenizer, dir, kv_cache_tokens)
        })
    }

    /// Loads an OPT checkpoint as a concrete [`OptEngine`] (for tests and tools that need the
    /// model itself); a checkpoint of another family is a typed [`LoadError::WrongFamily`],
    /// refused before any weight is read.
    pub fn load_opt(
        &mut self,
        spec: &ModelSpec,
        timeline: &mut Timeline,
    ) -> Result<(OptEngine, u64), LoadError> {
        let kv_cache_tokens = self.kv_cache_tokens;
        let checked = check_cached(spec)?;
        if checked.checkpoint.config.as_opt().is_none() {
            return Err(LoadError::WrongFamily {
                expected: "opt",
                found: checked.checkpoint.config.model_type().to_string(),
            });
        }
        self.load_with(spec, timeline, |config, weights, tokenizer, dir| {
            let config = config.as_opt().expect("checked above");
            OptEngine::new(
                OptModel::new(config.clone(), weights)?,
                tokenizer,
                weights.device_bytes,
            )
            .with_kv_cache_tokens(kv_cache_tokens)?
            .with_checkpoint_files(dir)
        })
    }

    /// Loads the checkpoint of `spec` and builds it with `build`.
    fn load_with<E>(
        &mut self,
        spec: &ModelSpec,
        timeline: &mut Timeline,
        build: impl Build<E>,
    ) -> Result<(E, u64), LoadError> {
        let checked = check_cached(spec)?;
        let mut read = ReadForCache::default();
        // The device's pinned pool is this load's from the first read to the last copy.
        let shared = self.pinned.clone();
        let mut pool = shared
            .as_ref()
            .map(|p| p.lock().map_err(|_| pool_poisoned()))
            .transpose()?;
        let loaded = self.load_checked(&checked, timeline, &mut read, pool.as_deref_mut(), build);
        if let Some(pool) = pool.as_mut() {
            pool.finish_load(read.pinned, loaded.is_ok());
        }
        drop(pool);
        let loaded = loaded.map_err(|e| e.relative_to(&checked.checkpoint.dir))?;
        for file in read.files {
            self.host_cache.keep(file);
        }
        if let Some((key, tokenizer)) = read.tokenizer {
            self.host_cache.keep_tokenizer(key, tokenizer);
        }
        Ok(loaded)
    }

    fn load_checked<E>(
        &mut self,
        checked: &CheckedCheckpoint,
        timeline: &mut Timeline,
        read: &mut ReadForCache,
        pool: Option<&mut PinnedPool>,
        build: impl Build<E>,
    ) -> Result<(E, u64), LoadError> {
        let dtype = candle_dtype(checked.dtype);
        self.check_fits(checked)?;
        let uploaded = self.upload_pinned(pool, checked, dtype, timeline, read)?;
        let (weights, in_flight) = match uploaded {
            Some((weights, in_flight)) => (weights, Some(in_flight)),
            None => {
                let files = checked
                    .checkpoint
                    .weight_files
                    .iter()
                    .map(|path| Ok(self.host_cache.file(path)?.0))
                    .collect::<Result<Vec<_>, LoadError>>()?;
                timeline.mark(Anchor::WeightsRead);
                let weights = DeviceWeights::upload(&files, &self.device, dtype)?;
                self.device.synchronize()?;
                timeline.mark(Anchor::WeightsOnDevice);
                read.files = files;
                (weights, None)
            }
        };
        // On the pinned path the copies are still running: building the model now queues its
        // kernels behind them on the same stream, so the build's host work overlaps the DMA.
        let built = self.tokenizer(checked, read).and_then(|tokenizer| {
            build(
                &checked.checkpoint.config,
                &weights,
                tokenizer,
                &checked.checkpoint.dir,
            )
        });
        if let Some(in_flight) = in_flight {
            in_flight.wait()?;
            timeline.mark(Anchor::WeightsOnDevice);
        }
        let engine = built?;
        self.device.synchronize()?;
        timeline.mark(Anchor::EngineReady);
        Ok((engine, checked.footprint.file_bytes))
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

fn pool_poisoned() -> LoadError {
    LoadError::Device(DeviceError::other(
        "the device's pinned pool is unusable: a load panicked while holding it",
    ))
}

/// Builds what a load returns from the checkpoint's config, its weights on the device, its
/// tokenizer and its directory (for the side files).
trait Build<E>:
    FnOnce(
    &ModelConfig,
    &DeviceWeights,
    Option<tokenizers::Tokenizer>,
    &std::path::Path,
) -> Result<E, LoadError>
{
}

impl<E, F> Build<E> for F where
    F: FnOnce(
        &ModelConfig,
        &DeviceWeights,
        Option<tokenizers::Tokenizer>,
        &std::path::Path,
    ) -> Result<E, LoadError>
{
}

/// What a load read that the host caches may keep once the load has succeeded.
#[derive(Default)]
struct ReadForCache {
    files: Vec<Arc<crate::checkpoint::WeightFile>>,
    tokenizer: Option<(crate::host_cache::FileKey, tokenizers::Tokenizer)>,
    /// Files read into the pinned host cache.
    pinned: CacheInserts,
}

impl CandleDevice {
    /// The checkpoint's tokenizer, from the host cache when the same file is still there.
    fn tokenizer(
        &mut self,
        checked: &CheckedCheckpoint,
        read: &mut ReadForCache,
    ) -> Result<Option<tokenizers::Tokenizer>, LoadError> {
        let Some(path) = &checked.checkpoint.tokenizer else {
            return Ok(None);
        };
        let (key, tokenizer) = self.host_cache.tokenizer(path)?;
        read.tokenizer = Some((key, tokenizer.clone()));
        Ok(Some(tokenizer))
    }

    /// Refuses, before any weight is read, a model whose weights and full KV cache (this
    /// worker's `kv_cache_tokens`) cannot fit the memory this worker has free.
    fn check_fits(&self, checked: &CheckedCheckpoint) -> Result<(), LoadError> {
        let needed = checked.footprint.needed_bytes(self.kv_cache_tokens);
        let free = self
            .memory()
            .map_err(|e| LoadError::Device(DeviceError::other(e.message)))?;
        if needed > free.free_bytes {
            return Err(LoadError::DoesNotFit {
                needed_bytes: needed,
                free_bytes: free.free_bytes,
            });
        }
        Ok(())
    }

    /// The CUDA path: every weight file through the pinned staging ring and host cache.
    /// Returns with the copies queued, not finished; `None` without pinned memory (CPU).
    fn upload_pinned(
        &self,
        pool: Option<&mut PinnedPool>,
        checked: &CheckedCheckpoint,
        dtype: candle_core::DType,
        timeline: &mut Timeline,
        read: &mut ReadForCache,
    ) -> Result<Option<(DeviceWeights, CopiesInFlight)>, LoadError> {
        let (Device::Cuda(cuda), Some(pool)) = (&self.device, pool) else {
            return Ok(None);
        };
        let files = &checked.checkpoint.weight_files;
        let uploaded = cuda::upload_checkpoint(cuda, pool, files, dtype, &mut read.pinned)?;
        timeline.mark_at(Anchor::WeightsRead, uploaded.read_done_ns);
        tracing::debug!(
            from_host_cache = uploaded.from_host_cache(),
            bytes = uploaded.bytes,
            cached_bytes = uploaded.cached_bytes,
            "pinned upload"
        );
        Ok(Some((
            DeviceWeights::from_tensors(uploaded.tensors),
            uploaded.in_flight,
        )))
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
