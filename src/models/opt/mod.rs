//! OPT, the model family of facebook/opt-125m: config, decoder, engine and presets.

pub mod config;
pub mod engine;
pub mod model;
pub mod presets;

pub use crate::models::sampler;
pub use config::OptConfig;
pub use engine::OptEngine;
pub use model::{KvCache, OptModel};
