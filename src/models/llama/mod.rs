//! The Llama family (Llama 2/3, Mistral, Qwen2/2.5, Qwen3): one decoder parameterised by the
//! config, its per-sequence KV cache, the engine, a prewarm run and `make-model` presets.

pub mod cache;
pub mod config;
pub mod model;
pub mod presets;
pub mod prewarm;

pub use cache::KvCache;
pub use config::LlamaConfig;
pub use model::{LlamaModel, SequenceInput};
pub use prewarm::prewarm;

/// A loaded Llama-family model, ready to generate.
pub type LlamaEngine = crate::models::TextEngine<LlamaModel>;
