//! The Llama family (Llama 2/3, Mistral, Qwen2/2.5, Qwen3): one decoder (`model.rs`, its
//! attention in `attention.rs`, the weights it reads fused in `fused.rs`) parameterised by the config, the engine, a prewarm run,
//! `make-model` presets, and its row of the family table ([`FAMILY`]). The per-sequence KV cache
//! is every family's [`crate::models::layers::kv_cache`].

pub mod attention;
pub mod config;
mod family_config;
pub mod fused;
mod layer;
pub mod model;
pub mod presets;
pub mod prewarm;
pub mod rope;

pub use crate::models::layers::kv_cache::KvCache;
pub use config::LlamaConfig;
pub use model::{LlamaModel, SequenceInput};
pub use prewarm::prewarm;

use crate::models::family::Family;

/// A loaded Llama-family model, ready to generate.
pub type LlamaEngine = crate::models::TextEngine<LlamaModel>;

/// The Llama family's row of the family table.
pub const FAMILY: Family = Family {
    name: "llama",
    model_types: &config::MODEL_TYPES,
    parse: family_config::parse,
    prewarm,
    presets: || presets::PRESETS.iter().map(|p| p.name).collect(),
    preset: presets::info,
    write_preset: presets::write_preset,
};
