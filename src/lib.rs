//! Worker Controller: prewarmed workers that attach LLM engines (OPT and the Llama family) in milliseconds.
//!
//! # Layout
//! - [`models`]: the model layer: family chosen by `model_type`, one engine and generation loop
//!   for all; [`models::opt`] (OPT, also at [`opt`]) and [`models::llama`] (Llama, Mistral, Qwen2, Qwen3).
//! - [`checkpoint`]: finding a checkpoint (directory or hub cache) and reading its files.
//! - [`weights`]: tensors on a device, looked up by name with shapes checked.
//! - [`device`]: opening candle devices from a [`DeviceSpec`].
//! - [`backend`]: the OPT engine as a backend of the actor runtime ([`wc_actors`]).
//! - [`host_cache`]: what a worker keeps from the disk for fast re-attach.
//! - [`error`]: typed errors for loading and generating.
//! - [`bench`]: the cold-start benchmark (standard path vs controller).
//! - [`loadgen`]: concurrent streaming clients against a running server (throughput, latency).
//! - [`config`]: the standalone server's TOML configuration.
//! - [`server`]: the HTTP server (control API, OpenAI completions, metrics, graceful shutdown).
//! - [`cli`]: the `worker-controller` command line.

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod cuda;
pub mod device;
pub mod error;
pub mod host_cache;
pub mod load;
pub mod loadgen;
pub mod models;
pub mod server;
pub mod weights;

/// OPT, at its historical path.
pub use models::opt;

pub use backend::{CandleBackend, CandleDevice};
pub use wc_actors::{DType, DeviceSpec, GenerateRequest, ModelSpec, Prompt};
