//! What every family implements: [`CausalLm`], the model the shared text engine drives (its
//! cache a [`TokenCache`], defined with the KV cache in `layers`).

use candle_core::{Device, Tensor};

pub use super::layers::kv_cache::TokenCache;
use super::layers::kv_slab::KvSlab;

/// A causal language model the shared generation loop can drive.
pub trait CausalLm {
    /// The keys and values of one sequence's tokens so far.
    type Cache: TokenCache;

    /// An empty cache for one sequence.
    fn new_cache(&self) -> Self::Cache;

    /// Runs `ids` after the tokens already in `cache` (appending them to it) and returns f32
    /// logits: `[ids.len(), vocab]` when `all_positions`, else `[vocab]` for the last token.
    fn forward_tokens(
        &self,
        ids: &[u32],
        cache: &mut Self::Cache,
        all_positions: bool,
    ) -> candle_core::Result<Tensor>;

    /// Runs several sequences in one pass, each's new tokens after those in its own cache
    /// (appending them to it); returns f32 logits `[sequences, vocab]` of each one's last token.
    fn forward_batch(&self, seqs: &mut [(&[u32], &mut Self::Cache)])
        -> candle_core::Result<Tensor>;

    fn vocab_size(&self) -> usize;

    /// The most positions (prompt plus generated tokens) one sequence may use.
    fn max_positions(&self) -> usize;

    /// End-of-sequence ids from `config.json` (the engine adds `generation_config.json`'s).
    fn eos_ids(&self) -> Vec<u32>;

    /// A token to run the one-step warm-up after attach with.
    fn warm_up_token(&self) -> u32;

    fn device(&self) -> &Device;

    /// The keys and values of every sequence of this model (reserved when an engine attaches).
    fn kv_slab(&self) -> &KvSlab;
}
