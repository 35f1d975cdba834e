//! One worker's candle device: opened and prewarmed (kernels of every family per dtype, pinned
//! staging and host cache), its memory as the worker reports it, and the engines it lends out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use candle_core::Device;
use wc_actors::{
    DeviceSpec, Engine, EngineError, Handoff, MemoryInfo, ModelSpec, PrewarmOptions, PrewarmReport,
    SourceReport, TierEntry, Timeline, WarmEngine, WeightsSource, WorkerDevice,
};

use super::attach::{self, pool_poisoned, LoadAs};
use super::host_tier::{self, HostCacheUsage};
use super::inspect::{inspect, Inspected};
use super::lease::LeasedEngine;
use super::parking::{ParkKey, Parking};
use super::peers::Membership;
use crate::load::cuda::{self, PinnedPools, SharedPool, UploadCounts};
use crate::load::device::host_memory;
use crate::load::dtype::candle_dtype;
use crate::load::host_cache::HostCache;
use crate::load::shared_cache::{CachePlan, SharedCache};
use crate::load::{DeviceError, LoadError};
use crate::models::family::FAMILIES;

/// Host memory the shared cache's background pinning leaves available to everything else.
const PIN_RESERVE: u64 = 4 << 30;

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
    /// What the pinned cache held when last read.
    pub(super) pinned_usage: std::sync::Mutex<HostCacheUsage>,
    /// The machine's host weight cache shared by every worker, when this worker uses it
    /// (instead of a cache of its own).
    pub(super) shared: Option<Arc<SharedCache>>,
    /// The shared cache's plan for the next load, sent with its attach by the serving process
    /// (a worker process); a load without one plans itself when this process keeps the book.
    pub(super) plan: Option<CachePlan>,
    /// Weights of the engines loaded here that may be parked, and of detached ones kept
    /// resident (`[prewarm] park_detached`, or a model's own `park`; empty when off).
    pub(super) parking: Arc<Mutex<Parking>>,
    /// Whether a model that says nothing (`ModelSpec::park` unset) is parked once detached.
    pub(super) park_detached: bool,
    /// The weights the last load lent its engine, for the lease that gives them back, and
    /// whether they stay parked once it goes.
    pub(super) lent: Option<(ParkKey, bool)>,
    /// This device's place among the backend's devices that copy each other's resident
    /// weights (a worker's device; `None` opened on its own).
    pub(super) peer: Option<Membership>,
    /// The load in progress lends its engine through a lease, which gives the weights back:
    /// only then are weights in use held for peers to copy.
    pub(super) leased: bool,
    /// The source the controller planned for the next load (taken by it).
    pub(super) source: WeightsSource,
    /// Where the last load's weights came from.
    pub(super) source_report: SourceReport,
}

impl CandleDevice {
    /// Opens the device; with `prewarm`, also runs every kernel the engine uses in each dtype
    /// and allocates its own pinned pool (CUDA).
    pub fn open(
        spec: &DeviceSpec,
        prewarm: Option<&PrewarmOptions>,
    ) -> Result<(Self, PrewarmReport), LoadError> {
        Self::open_in(spec, prewarm, &PinnedPools::default())
    }

    /// Opens the device for a fresh process's one load (`generate`, the bench's standard path):
    /// no kernel prewarm and no host cache, but on CUDA a pinned staging ring, so that the load
    /// streams through the same parallel reader as a worker's instead of pageable copies.
    pub fn open_fresh(spec: &DeviceSpec) -> Result<Self, LoadError> {
        let options = PrewarmOptions {
            dtypes: Vec::new(),
            host_cache_bytes: 0,
            ..PrewarmOptions::default()
        };
        Ok(Self::open(spec, Some(&options))?.0)
    }

    /// [`Self::open`], the pinned pool shared with the other devices opened from `pools` with
    /// the same GPU and sizes.
    pub fn open_in(
        spec: &DeviceSpec,
        prewarm: Option<&PrewarmOptions>,
        pools: &PinnedPools,
    ) -> Result<(Self, PrewarmReport), LoadError> {
        Self::open_shared(spec, prewarm, pools, None)
    }

    /// [`Self::open_in`], with the machine's shared host cache instead of one of its own when
    /// `shared` is given: its pinned pool is then the staging ring alone, and the shared
    /// cache's memory is registered with the driver in the background (CUDA), after prewarm.
    pub fn open_shared(
        spec: &DeviceSpec,
        prewarm: Option<&PrewarmOptions>,
        pools: &PinnedPools,
        shared: Option<Arc<SharedCache>>,
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
        let device = crate::load::device::open(spec)?;
        device.synchronize()?;
        step("context".into(), t);
        if let Some(options) = prewarm {
            for dtype in &options.dtypes {
                for family in &FAMILIES {
                    let t = Instant::now();
                    (family.prewarm)(&device, candle_dtype(*dtype))?;
                    step(format!("kernels {dtype} {}", family.name), t);
                }
            }
        }
        let pinned = match (&device, spec, prewarm) {
            (Device::Cuda(cuda), DeviceSpec::Cuda(ordinal), Some(options)) => {
                cuda::keep_pool_memory(cuda)?;
                let t = Instant::now();
                let own_cache = match shared {
                    Some(_) => 0,
                    None => options.host_cache_bytes,
                };
                let staging = options.staging_bytes;
                if let Some(cache) = &shared {
                    cache
                        .region
                        .register_in_background(cuda::host_registrar(cuda), PIN_RESERVE);
                }
                let shared = pools.get(cuda, *ordinal, staging, own_cache)?;
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
            host_cache: HostCache::new(match shared {
                Some(_) => 0,
                None => prewarm.map(|p| p.host_cache_bytes).unwrap_or(0),
            }),
            pinned,
            pinned_usage: Default::default(),
            shared,
            plan: None,
            parking: Default::default(),
            park_detached: prewarm.is_some_and(|p| p.park_detached),
            lent: None,
            peer: None,
            leased: false,
            source: WeightsSource::Host,
            source_report: SourceReport::host(),
        };
        report.total_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok((opened, report))
    }

    /// Whether `spec`'s weights stay parked once its engine is detached: its own `park`, else
    /// this device's `park_detached`.
    fn parks(&self, spec: &ModelSpec) -> bool {
        spec.park.unwrap_or(self.park_detached)
    }

    /// Whether the host cache holds a version of the weight file `path` (for tests and reports).
    pub fn host_cache_holds(&self, path: &std::path::Path) -> bool {
        self.host_cache.holds(path)
    }

    /// Device bytes of parked weights (detached models kept resident).
    pub fn parked_bytes(&self) -> u64 {
        lock(&self.parking).parked_bytes()
    }

    /// The parked models (checkpoint directory, device bytes), most recently used first.
    pub fn parked_models(&self) -> Vec<(std::path::PathBuf, u64)> {
        lock(&self.parking).parked()
    }

    /// Uploads through this device's pinned pool so far, and host-cache hits among them (for
    /// tests and reports: which path an attach took); zero without one.
    pub fn pinned_upload_counts(&self) -> UploadCounts {
        self.pinned
            .as_ref()
            .and_then(|p| p.lock().ok().map(|p| p.upload_counts()))
            .unwrap_or_default()
    }

    /// Test hook: the next read from disk into this device's pinned pool fails once `offset`
    /// bytes of a file's data section are read (see `PinnedPool::fail_next_read_at`).
    #[doc(hidden)]
    pub fn fail_next_read_at(&self, offset: u64) {
        if let Some(Ok(mut pool)) = self.pinned.as_ref().map(|p| p.lock()) {
            pool.fail_next_read_at(offset);
        }
    }

    /// Inspects `spec` and loads it as a runtime engine, marking the anchors on `timeline`;
    /// returns it with the number of weight bytes read.
    pub fn load_engine(
        &mut self,
        spec: &ModelSpec,
        timeline: &mut Timeline,
    ) -> Result<(Box<dyn Engine>, u64), LoadError> {
        let park = self.parks(spec);
        attach::load_engine(self, &inspect(spec)?, park, timeline)
    }

    /// Loads an inspected checkpoint as a runtime engine (see [`Self::load_engine`]), parked
    /// once detached as the device's `park_detached` says.
    pub fn load_inspected(
        &mut self,
        inspected: &Inspected,
        timeline: &mut Timeline,
    ) -> Result<(Box<dyn Engine>, u64), LoadError> {
        attach::load_engine(self, inspected, self.park_detached, timeline)
    }

    /// Inspects `spec` and loads it as the concrete engine `E` (for tests and tools that need
    /// the model itself); a checkpoint of another family is a typed
    /// [`LoadError::WrongFamily`], refused before any weight is read.
    pub fn load_as<E: LoadAs>(
        &mut self,
        spec: &ModelSpec,
        timeline: &mut Timeline,
    ) -> Result<(E, u64), LoadError> {
        let park = self.parks(spec);
        attach::load_as(self, &inspect(spec)?, park, timeline)
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
        // The shared cache is the machine's: reported once (`/workers`' `host_cache`), not per
        // worker; a worker reports how much of it its process has pinned.
        let host_cache = match &self.shared {
            Some(_) => HostCacheUsage::default(),
            None => host_tier::usage(self),
        };
        let host_cache_pinned_bytes = self
            .shared
            .as_ref()
            .map_or(0, |c| c.region.registered_bytes());
        // Parked weights are free for anyone who needs the room (an attach frees them first);
        // on the CPU they were never counted as held.
        let parked_bytes = self.parked_bytes();
        let device_free = match &self.device {
            Device::Cuda(_) => device_free.saturating_add(parked_bytes),
            _ => device_free,
        };
        let (total_bytes, free_bytes) = match self.memory_limit {
            0 => (device_total, device_free),
            limit => (limit, limit.saturating_sub(held).min(device_free)),
        };
        let parked = self
            .parked_models()
            .into_iter()
            .map(|(model, bytes)| TierEntry {
                model: model.display().to_string(),
                bytes,
            })
            .collect();
        Ok(MemoryInfo {
            total_bytes,
            free_bytes,
            host_cache_used_bytes: host_cache.used_bytes,
            host_cache_capacity_bytes: host_cache.capacity_bytes,
            host_cache_pinned_bytes,
            parked_bytes,
            parked,
            host_cache: host_cache.models,
            resident: lock(&self.parking).resident(),
        })
    }

    /// Loads the inspection `handoff` carries (inspecting `spec` here when it carries none).
    fn load(
        &mut self,
        spec: &ModelSpec,
        handoff: &Handoff,
        timeline: &mut Timeline,
    ) -> Result<(Box<dyn Engine>, u64), EngineError> {
        let (handoff, plan) = CachePlan::split(handoff)?;
        let inspected = match handoff.is_empty() {
            true => inspect(spec)?,
            false => Inspected::from_handoff(&handoff)?,
        };
        self.plan = plan;
        let park = self.parks(spec);
        self.leased = true;
        let loaded = attach::load_engine(self, &inspected, park, timeline);
        self.leased = false;
        let (engine, bytes) = loaded?;
        self.held.fetch_add(engine.device_bytes(), Ordering::SeqCst);
        let weights = self
            .lent
            .take()
            .map(|(key, park)| (self.parking.clone(), key, park));
        Ok((
            Box::new(LeasedEngine {
                engine,
                held: self.held.clone(),
                weights,
            }),
            bytes,
        ))
    }

    /// The attach, from the source planned: a peer's resident copy when it is still there.
    fn attach_from(
        &mut self,
        spec: &ModelSpec,
        handoff: &Handoff,
        source: &WeightsSource,
        timeline: &mut Timeline,
    ) -> Result<WarmEngine, EngineError> {
        self.source = source.clone();
        let attached = self.attach(spec, handoff, timeline);
        self.source = WeightsSource::Host;
        let mut warm = attached?;
        warm.source = std::mem::take(&mut self.source_report);
        Ok(warm)
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

/// The parking, whatever a panic while it was held left (its bookkeeping stays consistent).
pub(super) fn lock(parking: &Mutex<Parking>) -> MutexGuard<'_, Parking> {
    parking
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
