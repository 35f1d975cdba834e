//! The Llama family (Llama 2/3, Mistral, Qwen2/2.5, Qwen3): one decoder parameterised by the
//! config, the engine, a prewarm run and `make-model` presets (the per-sequence KV cache is
//! every family's [`crate::models::kv_cache`]).

pub mod config;
pub mod model;
pub mod presets;
pub mod prewarm;

pub use crate::models::kv_cache::KvCache;
pub use config::LlamaConfig;
pub use model::{LlamaModel, SequenceInput};
pub use prewarm::prewarm;

/// A loaded Llama-family model, ready to generate.
pub type LlamaEngine = crate::models::TextEngine<LlamaModel>;
