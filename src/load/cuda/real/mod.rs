//! The CUDA build's device pieces (see the parent module for the API every build shares).

mod copy_sink;
mod fault;
mod fused_placement;
mod memory;
mod peer;
mod pinned;
mod upload;

pub use fault::{fault_illegal_address, fault_of};
pub use memory::{
    device_count, host_registrar, keep_pool_memory, memory_info, pinned_h2d_bandwidth, pool_usage,
    single_stream, PoolUsage,
};
pub use peer::{copy_from_peer, enable_peer_access, p2p_link};
pub use pinned::{CacheInserts, PinnedPool, PinnedPools, SharedPool, UploadCounts, BLOCK_BYTES};
pub use upload::{upload_checkpoint, CopiesInFlight, Uploaded};

/// This build drives CUDA devices.
pub const COMPILED: bool = true;
