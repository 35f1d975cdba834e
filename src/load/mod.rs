//! The load path's device-independent parts: chunked parallel reads and the host cache's bookkeeping.

pub mod block_cache;
pub mod chunks;
