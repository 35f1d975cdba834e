//! Worker Controller: prewarmed workers that attach LLM engines (OPT and the Llama family) in milliseconds.
//!
//! # Layout
//! Everything between a model spec and a running engine lives on three floors, each importing
//! only the ones before it (`load` → `models` → `backend`); the runtime crate [`wc_actors`] is
//! below them all, and the rest of the crate stands on `backend`:
//! - [`load`]: bytes on disk → tensors on a device (checkpoints, confined reads, the one
//!   safetensors header reader, host and pinned caches, the CUDA upload); knows no family.
//! - [`models`]: the families (one folder each, one row each in `models::family`), the text
//!   engine they share (`models::text`) and the layers they are built of (`models::layers`).
//! - [`backend`]: the floors as a runtime backend: inspect a spec once, open and prewarm a
//!   device, attach (fit check, upload, build).
//! - [`config`]: the standalone server's TOML configuration.
//! - [`server`]: the HTTP server (control API, OpenAI endpoints, metrics, graceful shutdown).
//! - [`bench`]: the cold-start benchmark (standard path vs controller).
//! - [`loadgen`]: concurrent streaming clients against a running server (throughput, latency).
//! - [`cli`]: the `worker-controller` command line.

pub mod backend;
pub mod bench;
pub mod cli;
pub mod config;
pub mod load;
pub mod loadgen;
pub mod models;
pub mod server;

pub use backend::{inspect, CandleBackend, CandleDevice};
pub use load::LoadError;
pub use models::family::{model_types, FAMILIES};
pub use wc_actors::{DType, DeviceSpec, GenerateRequest, ModelSpec, Prompt};
