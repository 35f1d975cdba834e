//! The load floor: bytes on disk → tensors on a device. Knows no model family, no actor, no HTTP.
//!
//! # Layout
//! - [`checkpoint`]: finding a checkpoint (a directory or a hub id in the local cache) and its
//!   files; it knows its `model_type` and its config text, never a family's parsed config.
//! - [`files`] and `confined`: every open beneath the checkpoint's root, regular files only,
//!   small files within a size limit; [`FileKey`], a file's identity.
//! - [`safetensors`]: the one safetensors header reader; [`WeightFile`], a file read whole.
//! - [`dtype`]: the dtype maps (stored, runtime, candle).
//! - [`device`]: opening a candle device; the host's memory.
//! - [`weights`]: [`DeviceWeights`], named tensors on a device.
//! - [`host_cache`], [`block_cache`], [`chunks`], [`cuda`]: what a worker keeps for re-attach
//!   and the pinned, chunked upload (CUDA pieces behind one API in every build).
//! - [`writer`]: random-weight checkpoints (`make-model`, fixtures).
//! - [`error`]: [`LoadError`] and the device errors.

pub mod block_cache;
pub mod checkpoint;
pub mod chunks;
mod confined;
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod error;
pub mod files;
pub mod host_cache;
pub mod safetensors;
pub mod shared_cache;
pub mod weights;
pub mod writer;

pub use checkpoint::{cached_snapshot, hub_cache_dirs, is_hub_id};
pub use checkpoint::{Checkpoint, MAX_CONFIG_BYTES, MAX_HEADER_BYTES, MAX_TOKENIZER_BYTES};
pub use error::{candle_message, shorten, shorten_to, DeviceError, DeviceFault, LoadError};
pub use files::{ensure_regular, io_error};
pub use files::{open_regular, read_bounded, FileKey};
pub use safetensors::{canonical_name, parse_header, read_header};
pub use safetensors::{SafetensorsHeader, TensorHeader, WeightFile};
pub use weights::DeviceWeights;
