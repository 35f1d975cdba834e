//! An OPT model with its tokenizer: the shared [`TextEngine`] over [`OptModel`].

use candle_core::{Device, Tensor};

use super::model::{KvCache, OptModel};
use crate::models::layers::kv_slab::KvSlab;
use crate::models::{CausalLm, TextEngine};

/// A loaded OPT model, ready to generate.
pub type OptEngine = TextEngine<OptModel>;

impl CausalLm for OptModel {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        KvCache::default()
    }

    fn forward_tokens(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        all_positions: bool,
    ) -> candle_core::Result<Tensor> {
        let input = Tensor::new(ids, self.device())?.unsqueeze(0)?;
        self.forward(&input, cache, all_positions)?.squeeze(0)
    }

    fn forward_batch(&self, seqs: &mut [(&[u32], &mut KvCache)]) -> candle_core::Result<Tensor> {
        self.forward_sequences(seqs, false)
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn eos_ids(&self) -> Vec<u32> {
        vec![self.config.eos_token_id]
    }

    fn warm_up_token(&self) -> u32 {
        self.config.bos_token_id
    }

    fn device(&self) -> &Device {
        OptModel::device(self)
    }

    fn kv_slab(&self) -> &KvSlab {
        OptModel::kv_slab(self)
    }
}
