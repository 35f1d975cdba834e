//! Engine types that can be loaded as themselves, not boxed (for tests and tools): each names
//! its family's config and how it is built from weights on a device.

use std::path::Path;
use std::sync::Arc;

use tokenizers::Tokenizer;

use crate::load::{DeviceWeights, LoadError};
use crate::models::family::Config;
use crate::models::{LlamaConfig, LlamaEngine, LlamaModel};
use crate::models::{OptConfig, OptEngine, OptModel};

/// An engine type that can be loaded as itself, not boxed (for tests and tools).
pub trait LoadAs: Sized {
    /// The family config it is built from.
    type Config: Config + Clone;
    /// The family's name, for [`LoadError::WrongFamily`].
    const FAMILY: &'static str;

    fn build(
        config: &Self::Config,
        weights: &DeviceWeights,
        tokenizer: Option<Arc<Tokenizer>>,
        dir: &Path,
        kv_cache_tokens: usize,
    ) -> Result<Self, LoadError>;
}

impl LoadAs for OptEngine {
    type Config = OptConfig;
    const FAMILY: &'static str = "opt";

    fn build(
        config: &OptConfig,
        weights: &DeviceWeights,
        tokenizer: Option<Arc<Tokenizer>>,
        dir: &Path,
        kv_cache_tokens: usize,
    ) -> Result<Self, LoadError> {
        let model = OptModel::new(config.clone(), weights)?;
        OptEngine::attached(model, tokenizer, weights.device_bytes, kv_cache_tokens, dir)
    }
}

impl LoadAs for LlamaEngine {
    type Config = LlamaConfig;
    const FAMILY: &'static str = "llama";

    fn build(
        config: &LlamaConfig,
        weights: &DeviceWeights,
        tokenizer: Option<Arc<Tokenizer>>,
        dir: &Path,
        kv_cache_tokens: usize,
    ) -> Result<Self, LoadError> {
        let model = LlamaModel::new(config.clone(), weights)?;
        LlamaEngine::attached(model, tokenizer, weights.device_bytes, kv_cache_tokens, dir)
    }
}
