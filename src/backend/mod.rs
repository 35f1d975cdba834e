//! The backend floor: the only place that sees `load`, `models` and the `wc_actors` traits.
//!
//! # Layout
//! - [`inspect`](mod@inspect): a spec → its checkpoint, family config, every weight file's
//!   identity and parsed header, the footprint; kept while the files are unchanged
//!   ([`CheckCache`], a field of the backend) and handed down to the attach.
//! - `device`: [`CandleDevice`], one worker's device: open, prewarm (every family of the table),
//!   memory, the engines it lends out.
//! - `attach`: fit check → upload via `load` (or the parked weights) → build via the family
//!   table, as free functions.
//! - `lease`: an engine lent out, giving its bytes and weights back when dropped; `host_tier`:
//!   a worker's own host cache in its memory report; `load_as`: engines loadable unboxed.
//! - `peers`, `peer_copy`: the workers' devices that copy each other's resident weights (a
//!   peer clone) instead of reading them from the host.
//! - `parking`: the device tier: detached models' weights kept resident while no one needs the
//!   room (`[prewarm] park_detached`).
//! - [`affinity`]: keeping a worker's threads on its CPUs.

pub mod affinity;
mod attach;
mod device;
mod host_tier;
pub mod inspect;
mod lease;
mod load_as;
mod parking;
mod peer_copy;
mod peers;

use std::sync::Arc;

use wc_actors::{
    AttachGrant, DeviceSpec, EngineError, Footprint, Handoff, LinkKind, ModelSpec, PrewarmOptions,
    PrewarmReport, WorkerDevice,
};

pub use attach::LoadAs;
pub use device::CandleDevice;
pub use inspect::{inspect, CheckCache, Inspected};

use crate::load::cuda::{P2pLink, PinnedPools};
use crate::load::host_cache::read_tokenizer;
use crate::load::shared_cache::SharedCache;
use crate::load::LoadError;
use crate::models::text::text_files::TextFiles;
use peers::PeerRegistry;

/// Runs checkpoints of every family in the table on candle devices.
#[derive(Clone, Debug, Default)]
pub struct CandleBackend {
    /// Inspections kept while their files are unchanged.
    checks: Arc<CheckCache>,
    /// The pinned pools of this backend's workers (CUDA), one per GPU and sizes.
    pools: Arc<PinnedPools>,
    /// The machine's host weight cache shared by every worker (`serve`); without it each
    /// worker keeps its own (the pinned pool's on CUDA, a pageable one on the CPU).
    shared: Option<Arc<SharedCache>>,
    /// This backend's workers' devices, which copy each other's resident weights.
    peers: Arc<PeerRegistry>,
}

impl CandleBackend {
    /// A backend whose workers share `cache` (in the serving process: with its bookkeeping; in
    /// a worker process: the region it inherited).
    pub fn with_shared_cache(cache: Arc<SharedCache>) -> Self {
        Self {
            shared: Some(cache),
            ..Self::default()
        }
    }

    /// The machine's shared host cache, if this backend's workers use one.
    pub fn shared_cache(&self) -> Option<&Arc<SharedCache>> {
        self.shared.as_ref()
    }

    /// Opens and prewarms a device as this backend's workers are (sharing their pinned pool of
    /// that GPU and sizes, and the shared host cache), as the concrete type: for tests and
    /// tools.
    pub fn open(
        &self,
        device: &DeviceSpec,
        options: &PrewarmOptions,
    ) -> Result<(CandleDevice, PrewarmReport), LoadError> {
        let shared = self.shared.clone().filter(|_| options.host_cache_bytes > 0);
        let (mut opened, mut report) =
            CandleDevice::open_shared(device, Some(options), &self.pools, shared)?;
        let began = std::time::Instant::now();
        let (endpoint, steps) = peers::join(&mut opened, &self.peers);
        let ms = began.elapsed().as_secs_f64() * 1e3;
        report
            .steps
            .extend(steps.into_iter().map(|step| (step, ms)));
        report.peer = Some(endpoint);
        Ok((opened, report))
    }

    /// Test hook: the next peer copy between this backend's workers fails once `tensors`
    /// tensors are copied, as when the peer's device fails mid-copy.
    #[doc(hidden)]
    pub fn fail_next_peer_copy_after(&self, tensors: usize) {
        self.peers.fail_next_copy_after(tensors);
    }

    /// The whole check of an attach short of a device: the headers ([`inspect`]), the
    /// tokenizer parsed, the side files read and checked against the model ([`TextFiles`]).
    /// Errors name files relative to the checkpoint directory.
    pub fn preflight(&self, spec: &ModelSpec) -> Result<Footprint, LoadError> {
        let inspected = self.checks.inspect(spec)?;
        let checkpoint = &inspected.checkpoint;
        let text = || {
            let tokenizer = checkpoint
                .tokenizer
                .as_deref()
                .map(read_tokenizer)
                .transpose()?;
            TextFiles::read(
                &checkpoint.dir,
                tokenizer.map(Arc::new),
                inspected.config.vocab_size(),
                inspected.config.max_positions(),
            )
        };
        text().map_err(|e| e.relative_to(&checkpoint.dir))?;
        Ok(inspected.footprint.clone())
    }
}

impl wc_actors::Backend for CandleBackend {
    /// The footprint, with the inspection handed down to the attach.
    fn inspect(&self, spec: &ModelSpec) -> Result<Footprint, EngineError> {
        let inspected = self.checks.inspect(spec)?;
        Ok(Footprint {
            handoff: inspected.handoff(),
            ..inspected.footprint.clone()
        })
    }

    fn preflight(&self, spec: &ModelSpec) -> Result<Footprint, EngineError> {
        Ok(CandleBackend::preflight(self, spec)?)
    }

    /// With a shared host cache: the attach's plan (which files it reads from the cache, which
    /// it fills), appended to the handoff; the plan's fills are kept only if it succeeds.
    fn grant_attach(&self, handoff: &Handoff) -> Result<AttachGrant, EngineError> {
        let Some(cache) = self.shared.clone().filter(|c| c.plans()) else {
            return Ok(AttachGrant::plain(handoff.clone()));
        };
        if handoff.is_empty() {
            return Ok(AttachGrant::plain(handoff.clone()));
        }
        let files = Inspected::files_of(handoff)?;
        let Some(plan) = cache.plan(&files) else {
            return Ok(AttachGrant::plain(handoff.clone()));
        };
        let ticket = plan.ticket;
        Ok(AttachGrant::new(plan.attach_to(handoff), move |ok| {
            cache.finish(ticket, ok)
        }))
    }

    /// Between GPUs, as the driver reports it (unknown when it cannot say); on the CPU, none.
    fn peer_link(&self, from: &DeviceSpec, to: &DeviceSpec) -> LinkKind {
        let (DeviceSpec::Cuda(a), DeviceSpec::Cuda(b)) = (from, to) else {
            return LinkKind::None;
        };
        match crate::load::cuda::p2p_link(*a, *b) {
            Ok(P2pLink::SameDevice) => LinkKind::SameDevice,
            Ok(P2pLink::Nvlink) => LinkKind::Nvlink,
            Ok(P2pLink::Pcie) => LinkKind::Pcie,
            Ok(P2pLink::None) | Err(_) => LinkKind::None,
        }
    }

    fn open_device(
        &self,
        device: &DeviceSpec,
        options: &PrewarmOptions,
    ) -> Result<(Box<dyn WorkerDevice>, PrewarmReport), EngineError> {
        let (opened, report) = self.open(device, options)?;
        Ok((Box::new(opened), report))
    }
}
