//! A worker's pinned host memory, allocated once at prewarm and cut into equal blocks: a ring of
//! staging blocks that uploads stream through, and the host cache's blocks, which keep recently
//! loaded weight files for the next attach.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use candle_core::cuda_backend::cudarc::driver::PinnedHostSlice;
use candle_core::CudaDevice;

use super::fault::driver;
use crate::load::block_cache::{BlockCache, CacheContents};
use crate::load::chunks::BlockMemory;
use crate::load::error::LoadError;

/// Bytes of each block: a chunk of a file is read into one block and copied from it.
pub const BLOCK_BYTES: usize = 16 << 20;
/// Pinned memory is allocated in slabs of at most this many bytes, cut into blocks.
const SLAB_BYTES: usize = 1 << 30;
/// Fewest staging blocks: one being filled while another drains.
const MIN_RING_BLOCKS: usize = 2;

/// The start address of every block; shared with the reader threads.
pub(super) struct PinnedBlocks {
    starts: Vec<usize>,
}

impl BlockMemory for PinnedBlocks {
    fn block_bytes(&self) -> usize {
        BLOCK_BYTES
    }

    fn block_ptr(&self, index: usize) -> *mut u8 {
        self.starts[index] as *mut u8
    }
}

/// The pinned memory of one worker: staging ring and host cache.
pub struct PinnedPool {
    /// Owns the memory the blocks point into.
    _slabs: Vec<PinnedHostSlice<u8>>,
    pub(super) blocks: PinnedBlocks,
    /// The staging blocks.
    pub(super) ring: Vec<usize>,
    /// The host cache over the other blocks; `None` when it is off.
    pub(super) cache: Option<BlockCache>,
    /// Uploads through this pool so far, and how many came wholly from its host cache.
    pub(super) counts: UploadCounts,
    /// Test hook ([`Self::fail_next_read_at`]): the data-section offset at which the next
    /// read from disk fails.
    pub(super) fail_read_at: Option<u64>,
}

/// Uploads through a pool, and how many came wholly from its host cache (for tests and
/// reports: which path an attach took).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadCounts {
    pub uploads: u64,
    pub hits: u64,
}

impl PinnedPool {
    /// Allocates `staging_bytes` of staging blocks (at least two) and `host_cache_bytes` of
    /// cache blocks, each rounded down to whole blocks.
    pub fn new(
        device: &CudaDevice,
        staging_bytes: u64,
        host_cache_bytes: u64,
    ) -> Result<Self, LoadError> {
        let ring_blocks = (staging_bytes as usize / BLOCK_BYTES).max(MIN_RING_BLOCKS);
        let cache_blocks = host_cache_bytes as usize / BLOCK_BYTES;
        let total = ring_blocks + cache_blocks;
        let context = device.cuda_stream().context().clone();
        let per_slab = SLAB_BYTES / BLOCK_BYTES;
        let mut slabs = Vec::new();
        let mut starts = Vec::with_capacity(total);
        while starts.len() < total {
            let count = per_slab.min(total - starts.len());
            // SAFETY: a block is only read after a chunk of a file has been written into it.
            let mut slab = unsafe { context.alloc_pinned_with_flags::<u8>(count * BLOCK_BYTES, 0) }
                .map_err(driver)?;
            let base = slab.as_mut_slice().map_err(driver)?.as_mut_ptr() as usize;
            starts.extend((0..count).map(|i| base + i * BLOCK_BYTES));
            slabs.push(slab);
        }
        let cache =
            (cache_blocks > 0).then(|| BlockCache::new(ring_blocks..total, BLOCK_BYTES as u64));
        Ok(Self {
            _slabs: slabs,
            blocks: PinnedBlocks { starts },
            ring: (0..ring_blocks).collect(),
            cache,
            counts: UploadCounts::default(),
            fail_read_at: None,
        })
    }

    /// Total pinned bytes held (staging and cache).
    pub fn bytes(&self) -> u64 {
        (self.blocks.starts.len() * BLOCK_BYTES) as u64
    }

    /// Pinned bytes of the staging ring.
    pub fn staging_bytes(&self) -> u64 {
        (self.ring.len() * BLOCK_BYTES) as u64
    }

    /// What the host cache holds; `None` when it is off.
    pub fn contents(&self) -> Option<CacheContents> {
        self.cache.as_ref().map(BlockCache::contents)
    }

    /// Uploads through this pool so far, and host-cache hits among them.
    pub fn upload_counts(&self) -> UploadCounts {
        self.counts
    }

    /// Test hook: the next read of a file from disk fails once `offset` bytes of its data
    /// section have been read and their copies queued (a read error in the middle of an
    /// upload, made deterministic). Applies once.
    #[doc(hidden)]
    pub fn fail_next_read_at(&mut self, offset: u64) {
        self.fail_read_at = Some(offset);
    }

    /// Ends a load: on success the files it read into cache blocks are kept; on failure those
    /// blocks go back. Either way the files it used become evictable again.
    pub fn finish_load(&mut self, inserts: CacheInserts, succeeded: bool) {
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        for (key, header, blocks) in inserts.0 {
            if succeeded {
                cache.insert(key, header, blocks);
            } else {
                cache.release(blocks);
            }
        }
        cache.end_load();
    }
}

/// Files a load read into host-cache blocks, to keep once it has succeeded
/// ([`PinnedPool::finish_load`]).
#[derive(Default)]
pub struct CacheInserts(
    pub(super)  Vec<(
        crate::load::files::FileKey,
        std::sync::Arc<crate::load::safetensors::SafetensorsHeader>,
        Vec<usize>,
    )>,
);

/// A device's pinned pool, shared by the workers of that device in this process.
pub type SharedPool = Arc<Mutex<PinnedPool>>;

/// The pinned pools of one backend's workers, by device and sizes: a pool is made by the first
/// worker that opens a device with its sizes, shared by every worker of that device prewarmed
/// with the same ones (a worker configured otherwise, e.g. without a host cache, gets its own),
/// and freed when the last one goes. Loads hold a pool's lock from the first read to the last
/// copy, so workers of one GPU take turns on its PCIe link and never evict a file another
/// worker's copies still read.
#[derive(Default)]
pub struct PinnedPools {
    pools: Mutex<HashMap<PoolKey, Weak<Mutex<PinnedPool>>>>,
}

/// Device ordinal, staging bytes, host-cache bytes.
type PoolKey = (usize, u64, u64);

impl std::fmt::Debug for PinnedPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = self.pools.lock().map(|p| p.len()).unwrap_or(0);
        write!(f, "PinnedPools({live} kept)")
    }
}

impl PinnedPools {
    /// The pool of CUDA device `ordinal` with these sizes: the one a worker of this backend
    /// holds, else a new one.
    pub fn get(
        &self,
        device: &CudaDevice,
        ordinal: usize,
        staging_bytes: u64,
        host_cache_bytes: u64,
    ) -> Result<SharedPool, LoadError> {
        let key = (ordinal, staging_bytes, host_cache_bytes);
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pools.retain(|_, pool| pool.strong_count() > 0);
        if let Some(pool) = pools.get(&key).and_then(Weak::upgrade) {
            return Ok(pool);
        }
        let pool = Arc::new(Mutex::new(PinnedPool::new(
            device,
            staging_bytes,
            host_cache_bytes,
        )?));
        pools.insert(key, Arc::downgrade(&pool));
        Ok(pool)
    }
}
