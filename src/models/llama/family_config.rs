//! The Llama family's row of the family table, read from a parsed [`LlamaConfig`]: what the
//! floors above ask of any family's config (tensors, fused groups, KV size, engine build).

use std::path::Path;
use std::sync::Arc;

use tokenizers::Tokenizer;

use super::config::LlamaConfig;
use super::{LlamaEngine, LlamaModel};
use crate::load::{DeviceWeights, LoadError};
use crate::models::family::Config;

/// The family table's parse: `config.json`'s text read as the Llama family's and checked.
pub fn parse(text: &str) -> Result<Box<dyn Config>, LoadError> {
    Ok(Box::new(LlamaConfig::from_json(text)?))
}

impl Config for LlamaConfig {
    fn model_type(&self) -> &str {
        &self.model_type
    }

    fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        LlamaConfig::expected_tensors(self)
    }

    fn fused_groups(&self) -> Vec<crate::load::weights::FusedGroup> {
        super::fused::fused_groups(self)
    }

    fn kv_elements_per_token(&self) -> u64 {
        2 * (self.num_key_value_heads * self.head_dim * self.num_hidden_layers) as u64
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn max_positions(&self) -> usize {
        self.max_position_embeddings
    }

    fn build_engine(
        &self,
        weights: &DeviceWeights,
        tokenizer: Option<Arc<Tokenizer>>,
        dir: &Path,
        kv_cache_tokens: usize,
    ) -> Result<Box<dyn wc_actors::Engine>, LoadError> {
        let model = LlamaModel::new(self.clone(), weights)?;
        let engine =
            LlamaEngine::attached(model, tokenizer, weights.device_bytes, kv_cache_tokens, dir)?;
        Ok(Box::new(engine))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
