//! The models floor: every family and the text engine they share. Imports `load`, never
//! `backend` or `server`.
//!
//! # Layout
//! - [`causal_lm`]: [`CausalLm`], what every family's model implements.
//! - [`family`]: THE table (`model_type` → config parse, expected tensors, KV bytes per token,
//!   parameter count, engine build, prewarm, presets).
//! - [`opt`], [`llama`]: one folder a family, each with its row of the table.
//! - [`text`]: the engine, batch, sequence, prompt, chat template, detokenizer, sampler and
//!   generation config every family shares; [`RunError`], what can fail while it runs a request.
//! - [`layers`]: KV cache, slab and pass, packing, attention, matmul.
//!
//! Adding a family is a folder here and one row in [`family::FAMILIES`].

pub mod causal_lm;
pub mod family;
pub mod layers;
pub mod llama;
pub mod opt;
pub mod text;

pub use causal_lm::CausalLm;
pub use family::{FamilyConfig, MAX_PARAMETERS};
pub use layers::kv_cache::TokenCache;
pub use llama::{LlamaConfig, LlamaEngine, LlamaModel};
pub use opt::{OptConfig, OptEngine, OptModel};
pub use text::RunError;
pub use text::TextEngine;
