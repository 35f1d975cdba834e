//! The CUDA API for builds without feature `cuda`: nothing can be made of these types, so every
//! branch that would use a device is unreachable, yet compiled and type-checked.

use std::collections::HashMap;
use std::convert::Infallible;

use candle_core::{CudaDevice, DType, Tensor};

use crate::load::block_cache::CacheContents;
use crate::load::error::{DeviceFault, LoadError};
use crate::load::safetensors::InspectedFile;
use crate::load::shared_cache::{CachePlan, SharedRegion};

/// This build drives no CUDA device.
pub const COMPILED: bool = false;

/// Bytes of each pinned block (the same as the CUDA build's).
pub const BLOCK_BYTES: usize = 16 << 20;

/// Without CUDA no error comes from a driver.
pub fn fault_of(_error: &candle_core::Error) -> DeviceFault {
    DeviceFault::Other
}

fn not_compiled() -> LoadError {
    LoadError::CudaNotCompiled("cuda".into())
}

pub fn device_count() -> Result<usize, String> {
    Err(not_compiled().to_string())
}

pub fn keep_pool_memory(_device: &CudaDevice) -> Result<(), LoadError> {
    Err(not_compiled())
}

pub fn single_stream(_device: &CudaDevice) {}

pub fn memory_info(_device: &CudaDevice) -> Result<(u64, u64), String> {
    Err(not_compiled().to_string())
}

pub fn pinned_h2d_bandwidth(_index: usize, _bytes: usize) -> Result<f64, String> {
    Err(not_compiled().to_string())
}

pub fn fault_illegal_address(_device: &CudaDevice) -> LoadError {
    not_compiled()
}

pub fn p2p_link(_from: usize, _to: usize) -> Result<super::P2pLink, String> {
    Err(not_compiled().to_string())
}

pub fn enable_peer_access(_device: &CudaDevice, _peer: &CudaDevice) -> Result<bool, LoadError> {
    Err(not_compiled())
}

pub fn copy_from_peer(_device: &CudaDevice, _source: &Tensor) -> Result<Tensor, LoadError> {
    Err(not_compiled())
}

/// Never made without CUDA.
pub struct PinnedPool(Infallible);

impl PinnedPool {
    pub fn new(
        _device: &CudaDevice,
        _staging_bytes: u64,
        _host_cache_bytes: u64,
    ) -> Result<Self, LoadError> {
        Err(not_compiled())
    }

    pub fn bytes(&self) -> u64 {
        match self.0 {}
    }

    pub fn staging_bytes(&self) -> u64 {
        match self.0 {}
    }

    pub fn contents(&self) -> Option<CacheContents> {
        match self.0 {}
    }

    pub fn finish_load(&mut self, _inserts: CacheInserts, _succeeded: bool) {
        match self.0 {}
    }

    pub fn upload_counts(&self) -> UploadCounts {
        match self.0 {}
    }

    pub fn fail_next_read_at(&mut self, _offset: u64) {
        match self.0 {}
    }
}

/// Uploads through a pool (none without CUDA).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadCounts {
    pub uploads: u64,
    pub hits: u64,
}

/// A device's pinned pool, shared by its workers.
pub type SharedPool = std::sync::Arc<std::sync::Mutex<PinnedPool>>;

/// A backend's pinned pools (never any without CUDA).
#[derive(Debug, Default)]
pub struct PinnedPools(());

impl PinnedPools {
    pub fn get(
        &self,
        _device: &CudaDevice,
        _ordinal: usize,
        _staging_bytes: u64,
        _host_cache_bytes: u64,
    ) -> Result<SharedPool, LoadError> {
        Err(not_compiled())
    }
}

/// Files a load read into host-cache blocks (always none without CUDA).
#[derive(Default)]
pub struct CacheInserts;

/// Never made without CUDA.
pub struct CopiesInFlight(Infallible);

impl CopiesInFlight {
    pub fn wait(self) -> Result<(), LoadError> {
        match self.0 {}
    }
}

/// Never made without CUDA.
pub struct Uploaded {
    pub tensors: HashMap<String, Tensor>,
    pub in_flight: CopiesInFlight,
    pub read_done_ns: u64,
    pub bytes: u64,
    pub cached_bytes: u64,
}

impl Uploaded {
    pub fn from_host_cache(&self) -> bool {
        match self.in_flight.0 {}
    }
}

pub fn upload_checkpoint(
    _device: &CudaDevice,
    pool: &mut PinnedPool,
    _files: &[InspectedFile],
    _dtype: DType,
    _inserts: &mut CacheInserts,
    _shared: Option<(&SharedRegion, &CachePlan)>,
    _fused: &[crate::load::weights::FusedGroup],
) -> Result<Uploaded, LoadError> {
    match pool.0 {}
}

/// Registers host memory with the driver of `device`'s context (never reached without CUDA).
pub fn host_registrar(
    _device: &CudaDevice,
) -> impl Fn(*mut u8, usize) -> Result<(), String> + Send + 'static {
    |_, _| Err(not_compiled().to_string())
}
