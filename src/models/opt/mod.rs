//! OPT, the model family of facebook/opt-125m: config, decoder (its attention in `attention.rs`),
//! engine, prewarm and presets, and its row of the family table ([`FAMILY`]).

pub mod attention;
pub mod config;
pub mod engine;
pub mod model;
pub mod presets;
pub mod prewarm;

pub use config::OptConfig;
pub use engine::OptEngine;
pub use model::{KvCache, OptModel};

use crate::models::family::Family;

/// OPT's row of the family table.
pub const FAMILY: Family = Family {
    name: "opt",
    model_types: &["opt"],
    parse: config::parse,
    prewarm: prewarm::prewarm,
    presets: || presets::PRESETS.to_vec(),
    preset: presets::info,
    write_preset: presets::write_preset,
};
