//! The layers every family is built of: the per-sequence KV cache and the slab its blocks live
//! in, one attention pass over packed sequences (with a CUDA kernel for the decodes), decode
//! passes replayed as CUDA graphs, and the matmul that picks its kernel.

pub mod attention;
#[cfg(feature = "cuda")]
pub mod cuda_launch;
pub mod decode_attention;
pub mod decode_graph;
pub mod fused;
pub mod gemv;
pub mod kv_cache;
pub mod kv_pass;
pub mod kv_slab;
pub mod matmul;
pub mod packing;
pub mod prefill_batch;
