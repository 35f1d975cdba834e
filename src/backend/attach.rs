//! Attaching an inspected checkpoint to a worker's device, as free functions over
//! [`CandleDevice`]: fit check first (before any read), weights uploaded through the pinned ring
//! and host cache on CUDA or read on the CPU (each file's header the inspected one, its identity
//! re-checked on open), then the engine built by its family while the last copies run; what was
//! read is kept in the host caches once the load has succeeded.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use tokenizers::Tokenizer;
use wc_actors::{Anchor, Engine, Timeline};

use super::device::lock;
use super::inspect::{inspect, Inspected};
pub use super::load_as::LoadAs;
use super::parking::ParkKey;
use super::CandleDevice;
use crate::load::cuda::{self, CacheInserts, CopiesInFlight, PinnedPool};
use crate::load::dtype::candle_dtype;
use crate::load::shared_cache::{CachePlan, SharedCache, SharedRegion};
use crate::load::{DeviceError, DeviceWeights, FileKey, LoadError, WeightFile};
use crate::models::layers::decode_graph::{reserve_bytes, GraphMode};
use crate::models::layers::fused::fused_on;
use crate::models::FamilyConfig;

/// Loads an inspected checkpoint of any family in the table as a runtime engine, marking the
/// anchors on `timeline`; returns it with the number of weight bytes read.
pub(super) fn load_engine(
    device: &mut CandleDevice,
    inspected: &Inspected,
    park: bool,
    timeline: &mut Timeline,
) -> Result<(Box<dyn Engine>, u64), LoadError> {
    let kv_cache_tokens = device.kv_cache_tokens;
    load_with(
        device,
        inspected,
        park,
        timeline,
        |config, weights, tokenizer, dir| {
            config.build_engine(weights, tokenizer, dir, kv_cache_tokens)
        },
    )
}

/// Loads an inspected checkpoint as the concrete engine `E`; another family's checkpoint is
/// refused before any weight is read.
pub(super) fn load_as<E: LoadAs>(
    device: &mut CandleDevice,
    inspected: &Inspected,
    park: bool,
    timeline: &mut Timeline,
) -> Result<(E, u64), LoadError> {
    let kv_cache_tokens = device.kv_cache_tokens;
    let wrong_family = |config: &FamilyConfig| LoadError::WrongFamily {
        expected: E::FAMILY,
        found: config.model_type().to_string(),
    };
    if inspected.config.get::<E::Config>().is_none() {
        return Err(wrong_family(&inspected.config));
    }
    load_with(
        device,
        inspected,
        park,
        timeline,
        |config, weights, tokenizer, dir| {
            let config = config
                .get::<E::Config>()
                .ok_or_else(|| wrong_family(config))?;
            E::build(config, weights, tokenizer, dir, kv_cache_tokens)
        },
    )
}

/// Loads the inspected checkpoint and builds it with `build`. An inspection whose weight files
/// changed since (a checkpoint replaced between inspection and attach) is done again first.
/// With `park`, the weights stay on the device once the engine is gone (until the room is
/// needed).
fn load_with<E>(
    device: &mut CandleDevice,
    inspected: &Inspected,
    park: bool,
    timeline: &mut Timeline,
    build: impl Build<E>,
) -> Result<(E, u64), LoadError> {
    // Taken first, so that no plan outlives the attach it was sent with (its grant ends then).
    let given = device.plan.take();
    let again;
    let inspected = if inspected.files_unchanged() {
        inspected
    } else {
        again = inspect(&wc_actors::ModelSpec {
            model: inspected.checkpoint.dir.display().to_string(),
            dtype: Some(inspected.dtype),
            canonical: true,
            park: None,
        })?;
        &again
    };
    let mut read = ReadForCache::default();
    // The shared cache's plan: sent with the attach, else made here (thread mode), and then
    // ended here once the load has.
    let machine_cache = device.shared.clone();
    let planned_here = match (&given, &machine_cache) {
        (None, Some(cache)) => cache.plan(&inspected.files),
        _ => None,
    };
    let plan = given.or(planned_here.clone());
    let cached = machine_cache.as_deref().zip(plan.as_ref());
    // The device's pinned pool is this load's from the first read to the last copy.
    let shared = device.pinned.clone();
    let mut pool = shared
        .as_ref()
        .map(|p| p.lock().map_err(|_| pool_poisoned()))
        .transpose()?;
    let loaded = load_inspected(
        device,
        inspected,
        park,
        timeline,
        &mut read,
        Caches {
            pool: pool.as_deref_mut(),
            shared: cached,
        },
        build,
    );
    if let Some(pool) = pool.as_mut() {
        pool.finish_load(read.pinned, loaded.is_ok());
    }
    drop(pool);
    if let (Some(cache), Some(plan)) = (&machine_cache, &planned_here) {
        let used = loaded.is_ok() && !device.source_report.is_peer(); // a peer copy: no hit
        cache.finish(plan.ticket, used);
    }
    let loaded = loaded.map_err(|e| e.relative_to(&inspected.checkpoint.dir))?;
    for file in read.files {
        device.host_cache.keep(file);
    }
    if let Some((key, tokenizer)) = read.tokenizer {
        device.host_cache.keep_tokenizer(key, tokenizer);
    }
    Ok(loaded)
}

/// Parked weights of the same files (parked by this model or another of the same files) are
/// used whatever `park` says; `park` decides whether they stay once the engine is gone.
fn load_inspected<E>(
    device: &mut CandleDevice,
    inspected: &Inspected,
    park: bool,
    timeline: &mut Timeline,
    read: &mut ReadForCache,
    caches: Caches<'_>,
    build: impl Build<E>,
) -> Result<(E, u64), LoadError> {
    let Caches {
        pool,
        shared: cached,
    } = caches;
    device.lent = None;
    device.source_report = wc_actors::SourceReport::host();
    let key = ParkKey::of(inspected);
    let parked = lock(&device.parking).lend(&key);
    if let Some(weights) = parked {
        device.source_report = wc_actors::SourceReport::parked();
        let attached = attach_parked(device, inspected, timeline, read, &weights, build);
        match attached {
            Ok(_) => device.lent = Some((key, park)),
            Err(_) => lock(&device.parking).give_back(&key, park),
        }
        return attached;
    }
    let dtype = candle_dtype(inspected.dtype);
    check_fits(device, inspected, false)?;
    let shared = cached.map(|(cache, plan)| (&*cache.region, plan));
    let copied = super::peer_copy::from_planned_peer(device, inspected, &key, timeline)?;
    let moved = copied.as_ref().map(|w| w.device_bytes);
    let uploaded = match copied {
        Some(_) => None,
        None => upload_pinned(device, pool, inspected, dtype, timeline, read, shared)?,
    };
    let (mut weights, in_flight) = match (copied, uploaded) {
        (Some(weights), _) => (weights, None),
        (None, Some((weights, in_flight))) => (weights, Some(in_flight)),
        (None, None) => {
            let files = inspected
                .files
                .iter()
                .map(|file| match cached {
                    Some((cache, plan)) => Ok(Arc::new(cache.read_file(plan, file)?.0)),
                    None => Ok(device.host_cache.file(file)?.0),
                })
                .collect::<Result<Vec<_>, LoadError>>()?;
            timeline.mark(Anchor::WeightsRead);
            let weights = DeviceWeights::upload(&files, &device.device, dtype)?;
            device.device.synchronize()?;
            timeline.mark(Anchor::WeightsOnDevice);
            read.files = files;
            (weights, None)
        }
    };
    // With fused layers (CUDA, WC_FUSED=1) the weights a family reads as one are stored so
    // before anything, parking
    // included, holds them: placed so by the pinned upload, else stacked here (a device copy,
    // queued behind the upload's).
    if fused_on(&device.device) {
        weights.fuse(&inspected.config.fused_groups())?;
    }
    // On the pinned path the copies are still running: building the model now queues its
    // kernels behind them on the same stream, so the build's host work overlaps the DMA.
    let build_began = std::time::Instant::now();
    let built = tokenizer(device, inspected, read).and_then(|tokenizer| {
        build(
            &inspected.config,
            &weights,
            tokenizer,
            &inspected.checkpoint.dir,
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
    device.device.synchronize()?;
    timeline.mark(Anchor::EngineReady);
    // A worker's weights in use are held for peers to copy too (freed with it unless parked).
    if park || (device.leased && device.peer.is_some()) {
        let model = inspected.checkpoint.dir.clone();
        lock(&device.parking).record(key.clone(), model, &weights, park);
        device.lent = Some((key, park));
    } else {
        lock(&device.parking).forget_other_versions(&key);
    }
    Ok((engine, moved.unwrap_or(inspected.footprint.file_bytes)))
}

/// Builds the engine on weights parked on the device: nothing is read or copied.
fn attach_parked<E>(
    device: &mut CandleDevice,
    inspected: &Inspected,
    timeline: &mut Timeline,
    read: &mut ReadForCache,
    weights: &DeviceWeights,
    build: impl Build<E>,
) -> Result<(E, u64), LoadError> {
    check_fits(device, inspected, true)?;
    timeline.mark(Anchor::WeightsRead);
    timeline.mark(Anchor::WeightsOnDevice);
    let tokenizer = tokenizer(device, inspected, read)?;
    let engine = build(
        &inspected.config,
        weights,
        tokenizer,
        &inspected.checkpoint.dir,
    )?;
    device.device.synchronize()?;
    timeline.mark(Anchor::EngineReady);
    tracing::debug!(target: "wc::attach", "engine built on parked weights");
    Ok((engine, 0))
}

pub(super) fn pool_poisoned() -> LoadError {
    LoadError::Device(DeviceError::other(
        "the device's pinned pool is unusable: a load panicked while holding it",
    ))
}

/// Builds what a load returns from the checkpoint's config, its weights on the device, its
/// tokenizer and its directory (for the side files).
trait Build<E>:
    FnOnce(&FamilyConfig, &DeviceWeights, Option<Arc<Tokenizer>>, &Path) -> Result<E, LoadError>
{
}

impl<E, F> Build<E> for F where
    F: FnOnce(&FamilyConfig, &DeviceWeights, Option<Arc<Tokenizer>>, &Path) -> Result<E, LoadError>
{
}

/// The host memory a load reads through: the device's pinned pool (CUDA), and the machine's
/// shared cache with this load's plan.
struct Caches<'a> {
    pool: Option<&'a mut PinnedPool>,
    shared: Option<(&'a SharedCache, &'a CachePlan)>,
}

/// What a load read that the host caches may keep once the load has succeeded.
#[derive(Default)]
struct ReadForCache {
    files: Vec<Arc<WeightFile>>,
    tokenizer: Option<(FileKey, Arc<Tokenizer>)>,
    /// Files read into the pinned host cache.
    pinned: CacheInserts,
}

/// The checkpoint's tokenizer, from the host cache when the same file is still there.
fn tokenizer(
    device: &mut CandleDevice,
    inspected: &Inspected,
    read: &mut ReadForCache,
) -> Result<Option<Arc<Tokenizer>>, LoadError> {
    let Some(path) = &inspected.checkpoint.tokenizer else {
        return Ok(None);
    };
    let (key, tokenizer) = device.host_cache.tokenizer(path)?;
    read.tokenizer = Some((key, tokenizer.clone()));
    Ok(Some(tokenizer))
}

/// Refuses, before any weight is read, a model whose weights (unless `weights_resident`) and
/// full KV cache (this worker's `kv_cache_tokens`) cannot fit the memory this worker has free;
/// parked weights are freed, least recently used first, to make the room when they stand in
/// the way.
fn check_fits(
    device: &CandleDevice,
    inspected: &Inspected,
    weights_resident: bool,
) -> Result<(), LoadError> {
    let mut needed = inspected.footprint.needed_bytes(device.kv_cache_tokens);
    if weights_resident {
        needed = needed.saturating_sub(inspected.footprint.device_bytes);
    }
    // Decode graphs keep their buffers and working memory while the engine lives.
    if GraphMode::for_device(&device.device) == GraphMode::Captured {
        let dtype_bytes = candle_dtype(inspected.dtype).size_in_bytes();
        needed += reserve_bytes(inspected.config.vocab_size(), dtype_bytes);
    }
    let free_now = || -> Result<(u64, u64), LoadError> {
        let memory = wc_actors::WorkerDevice::memory(device)
            .map_err(|e| LoadError::Device(DeviceError::other(e.message)))?;
        let mut free = memory.free_bytes.saturating_sub(memory.parked_bytes);
        if matches!(device.device, Device::Cpu) {
            // The worker's own count says what it holds; the host says what is left after
            // every other worker, process and cgroup limit.
            free = free.min(crate::load::device::host_available_bytes());
        }
        Ok((free, memory.parked_bytes))
    };
    let (mut free, parked) = free_now()?;
    if needed > free && parked > 0 {
        lock(&device.parking).free(needed - free);
        device.device.synchronize()?;
        free = free_now()?.0;
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
    device: &CandleDevice,
    pool: Option<&mut PinnedPool>,
    inspected: &Inspected,
    dtype: candle_core::DType,
    timeline: &mut Timeline,
    read: &mut ReadForCache,
    shared: Option<(&SharedRegion, &CachePlan)>,
) -> Result<Option<(DeviceWeights, CopiesInFlight)>, LoadError> {
    let (Device::Cuda(cuda), Some(pool)) = (&device.device, pool) else {
        return Ok(None);
    };
    let files = &inspected.files;
    let began = std::time::Instant::now();
    // The weights the family reads as one are placed so by the upload (no device copy).
    let fused = match fused_on(&device.device) {
        true => inspected.config.fused_groups(),
        false => Vec::new(),
    };
    let uploaded =
        cuda::upload_checkpoint(cuda, pool, files, dtype, &mut read.pinned, shared, &fused)?;
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
