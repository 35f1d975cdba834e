//! Loading a checkpoint onto a worker's device: checked first (fit before read), weights uploaded
//! through the pinned ring and host cache on CUDA or read on the CPU, then the engine built while
//! the last copies run; what was read is kept in the host caches once the load has succeeded.

use std::sync::Arc;

use candle_core::Device;
use tokenizers::Tokenizer;
use wc_actors::{Anchor, Engine, ModelSpec, Timeline, WorkerDevice};

use super::{CandleDevice, CheckedCheckpoint};
use crate::cuda::{self, CacheInserts, CopiesInFlight, PinnedPool};
use crate::device::candle_dtype;
use crate::error::{DeviceError, LoadError};
use crate::host_cache::check_cached;
use crate::models::ModelConfig;
use crate::opt::{OptEngine, OptModel};
use crate::weights::DeviceWeights;

impl CandleDevice {
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
        let build_began = std::time::Instant::now();
        let built = self.tokenizer(checked, read).and_then(|tokenizer| {
            build(
                &checked.checkpoint.config,
                &weights,
                tokenizer,
                &checked.checkpoint.dir,
            )
        });
        let build_us = build_began.elapsed().as_micros() as u64;
        if let Some(in_flight) = in_flight {
            in_flight.wait()?;
            timeline.mark(Anchor::WeightsOnDevice);
        }
        tracing::debug!(
            target: "wc::attach",
            build_us,
            build_and_copies_us = build_began.elapsed().as_micros() as u64,
            "engine built"
        );
        let engine = built?;
        self.device.synchronize()?;
        timeline.mark(Anchor::EngineReady);
        Ok((engine, checked.footprint.file_bytes))
    }
}

pub(super) fn pool_poisoned() -> LoadError {
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
    Option<Arc<Tokenizer>>,
    &std::path::Path,
) -> Result<E, LoadError>
{
}

impl<E, F> Build<E> for F where
    F: FnOnce(
        &ModelConfig,
        &DeviceWeights,
        Option<Arc<Tokenizer>>,
        &std::path::Path,
    ) -> Result<E, LoadError>
{
}

/// What a load read that the host caches may keep once the load has succeeded.
#[derive(Default)]
struct ReadForCache {
    files: Vec<Arc<crate::checkpoint::WeightFile>>,
    tokenizer: Option<(crate::host_cache::FileKey, Arc<Tokenizer>)>,
    /// Files read into the pinned host cache.
    pinned: CacheInserts,
}

impl CandleDevice {
    /// The checkpoint's tokenizer, from the host cache when the same file is still there.
    fn tokenizer(
        &mut self,
        checked: &CheckedCheckpoint,
        read: &mut ReadForCache,
    ) -> Result<Option<Arc<Tokenizer>>, LoadError> {
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
        let mut free = self
            .memory()
            .map_err(|e| LoadError::Device(DeviceError::other(e.message)))?
            .free_bytes;
        if matches!(self.device, Device::Cpu) {
            // The worker's own count says what it holds; the host says what is left after
            // every other worker, process and cgroup limit.
            free = free.min(crate::device::host_available_bytes());
        }
        if needed > free {
            return Err(LoadError::DoesNotFit {
                needed_bytes: needed,
                free_bytes: free,
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
        let began = std::time::Instant::now();
        let uploaded = cuda::upload_checkpoint(cuda, pool, files, dtype, &mut read.pinned)?;
        timeline.mark_at(Anchor::WeightsRead, uploaded.read_done_ns);
        tracing::debug!(
            from_host_cache = uploaded.from_host_cache(),
            bytes = uploaded.bytes,
            cached_bytes = uploaded.cached_bytes,
            queued_us = began.elapsed().as_micros() as u64,
            "pinned upload"
        );
        Ok(Some((
            DeviceWeights::from_tensors(uploaded.tensors),
            uploaded.in_flight,
        )))
    }
}
