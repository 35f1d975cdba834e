//! One decoder for the Llama family, parameterised by [`LlamaConfig`]: RMSNorm, rotary
//! embeddings (default or Llama 3 scaled), grouped-query attention with optional q/k/v biases,
//! per-head q/k RMSNorm and a sliding window, a SwiGLU MLP, and a tied or untied `lm_head`,
//! computed as transformers' `LlamaForCausalLM` / `MistralForCausalLM` / `Qwen2ForCausalLM` /
//! `Qwen3ForCausalLM` do.
//!
//! Tokens of all sequences in a pass are packed along one axis (`[tokens, hidden]`); only
//! attention looks at each sequence separately, against that sequence's own [`KvCache`] (its
//! slots in the model's [`KvSlab`]).

use candle_core::{DType, Device, Tensor};

use super::attention::Pass;
use super::config::LlamaConfig;
use super::layer::{Builder, DecoderLayer};
use crate::load::weights::DeviceWeights;
use crate::load::LoadError;
use crate::models::layers::decode_graph::{DecodeGraphs, DecodeInputs, GraphMode};
use crate::models::layers::fused::rms_norm;
use crate::models::layers::kv_cache::KvCache;
use crate::models::layers::kv_pass::KvPass;
use crate::models::layers::kv_slab::KvSlab;
use crate::models::layers::matmul::times_transposed;
use crate::models::layers::packing::{packing_order, Span};
use crate::models::{CausalLm, TokenCache};

/// A Llama-family causal language model with its weights on one device.
pub struct LlamaModel {
    pub config: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: Tensor,
    /// `[head_dim / 2]`, f32: angles are `position * inv_freq`, computed in f32 as transformers does.
    inv_freq: Tensor,
    /// Keys and values of every sequence.
    kv: KvSlab,
    /// Passes of decodes only, replayed as CUDA graphs.
    graphs: DecodeGraphs,
    device: Device,
    dtype: DType,
}

/// One sequence's part of a forward pass: its new tokens and its cache.
pub struct SequenceInput<'a> {
    pub ids: &'a [u32],
    pub cache: &'a mut KvCache,
}

impl LlamaModel {
    /// Assembles the model from weights already on the device, checking every name and shape.
    pub fn new(config: LlamaConfig, weights: &DeviceWeights) -> Result<Self, LoadError> {
        let b = Builder {
            weights,
            config: &config,
        };
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embed_tokens = weights.get("embed_tokens.weight", &[v, h])?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| b.layer(i))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = weights.get("norm.weight", &[h])?;
        let lm_head = if config.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            weights.get("lm_head.weight", &[v, h])?
        };
        let device = embed_tokens.device().clone();
        let inv_freq = Tensor::new(config.inv_freq(), &device)?;
        let kv = KvSlab::new(
            config.num_hidden_layers,
            config.num_key_value_heads,
            config.head_dim,
            embed_tokens.dtype(),
            &device,
        );
        Ok(Self {
            kv,
            graphs: DecodeGraphs::new(GraphMode::for_device(&device)),
            dtype: embed_tokens.dtype(),
            device,
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs decode passes as `mode` says (the default: captured graphs on CUDA, off elsewhere).
    pub fn with_decode_graphs(mut self, mode: GraphMode) -> Self {
        self.graphs = DecodeGraphs::new(mode);
        self
    }

    /// Decode buckets made and graphs captured so far.
    pub fn decode_graph_counts(&self) -> (usize, usize) {
        self.graphs.counts()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Runs `ids` after the tokens in `cache` and returns f32 logits: `[ids.len(), vocab]` when
    /// `all_positions`, else `[vocab]` for the last token.
    pub fn forward(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        all_positions: bool,
    ) -> candle_core::Result<Tensor> {
        let logits = self.forward_sequences(&mut [SequenceInput { ids, cache }], all_positions)?;
        if all_positions {
            Ok(logits)
        } else {
            logits.squeeze(0)
        }
    }

    /// Runs several sequences, each with its own cache and length, in one pass. Returns f32
    /// logits `[total new tokens, vocab]` when `all_positions` (sequences in order), else
    /// `[sequences, vocab]` for each sequence's last token.
    pub fn forward_sequences(
        &self,
        seqs: &mut [SequenceInput<'_>],
        all_positions: bool,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let order = packing_order(seqs.iter().map(|s| s.ids.len()), all_positions);
        let mut spans: Vec<Option<Span>> = (0..seqs.len()).map(|_| None).collect();
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for &index in &order.order {
            let seq = &mut seqs[index];
            let past = seq.cache.len();
            if seq.ids.is_empty() {
                candle_core::bail!("a sequence in the pass has no new tokens");
            }
            if past + seq.ids.len() > c.max_position_embeddings {
                candle_core::bail!(
                    "{} tokens exceed the model's {} positions",
                    past + seq.ids.len(),
                    c.max_position_embeddings
                );
            }
            if let Some(&id) = seq.ids.iter().find(|&&id| id as usize >= c.vocab_size) {
                candle_core::bail!("token id {id} is outside the vocabulary ({})", c.vocab_size);
            }
            seq.cache.reserve(seq.ids.len(), &self.kv)?;
            spans[index] = Some(Span {
                offset: ids.len(),
                len: seq.ids.len(),
                past,
            });
            ids.extend_from_slice(seq.ids);
            positions.extend((past..past + seq.ids.len()).map(|p| p as f32));
        }
        let spans: Vec<Span> = spans.into_iter().flatten().collect();
        let windows: Vec<Option<usize>> = self.layers.iter().map(|l| l.self_attn.window).collect();
        if !all_positions && order.decode_count == seqs.len() {
            let caches: Vec<&KvCache> = seqs.iter().map(|s| &*s.cache).collect();
            let forward = |inputs: &DecodeInputs<'_>| {
                let rows = inputs.positions.dim(0)?;
                let positions = inputs.positions.to_dtype(DType::F32)?.reshape((rows, 1))?;
                let (cos, sin) = self.rotary(&positions)?;
                let pass = Pass {
                    kv: inputs.kv,
                    spans: inputs.spans,
                    order: inputs.order,
                    cos: &cos,
                    sin: &sin,
                };
                self.forward_packed(inputs.ids, &pass, None)
            };
            let (vocab, dtype) = (c.vocab_size, self.dtype);
            let graphed = self.graphs.run(
                &self.kv,
                &caches,
                &ids,
                &windows,
                vocab,
                dtype,
                &self.device,
                &forward,
            )?;
            if let Some(logits) = graphed {
                for seq in seqs.iter_mut() {
                    seq.cache.advance(1);
                }
                return Ok(logits);
            }
        }
        let total = ids.len();
        let ids = Tensor::new(ids, &self.device)?;
        let positions = Tensor::from_vec(positions, (total, 1), &self.device)?;
        let (cos, sin) = self.rotary(&positions)?;
        let caches: Vec<&KvCache> = seqs.iter().map(|s| &*s.cache).collect();
        let new: Vec<usize> = spans.iter().map(|s| s.len).collect();
        let kv = KvPass::new(
            &self.kv,
            &caches,
            &new,
            &order,
            &windows,
            self.dtype,
            &self.device,
        )?;
        let pass = Pass {
            kv: &kv,
            spans: &spans,
            order: &order,
            cos: &cos,
            sin: &sin,
        };
        let last = (!all_positions).then(|| {
            spans
                .iter()
                .map(|s| (s.offset + s.len - 1) as u32)
                .collect::<Vec<u32>>()
        });
        let logits = self.forward_packed(&ids, &pass, last)?;
        for (seq, span) in seqs.iter_mut().zip(&spans) {
            seq.cache.advance(span.len);
        }
        Ok(logits)
    }

    /// The layers over packed tokens `ids` (`[tokens]` u32), then the final norm and the head
    /// over the rows `last` names (every row when `None`): f32 logits `[rows, vocab]`.
    fn forward_packed(
        &self,
        ids: &Tensor,
        pass: &Pass<'_>,
        last: Option<Vec<u32>>,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let eps = c.rms_norm_eps;
        let mut hidden = self.embed_tokens.index_select(ids, 0)?;
        let first_norm = self
            .layers
            .first()
            .map_or(&self.norm, |l| &l.input_layernorm);
        // Each residual add is fused with the norm after it: the next layer's input norm, or
        // the final norm after the last layer.
        let mut normed = rms_norm(&hidden, first_norm, eps)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let next_norm = self
                .layers
                .get(index + 1)
                .map_or(&self.norm, |l| &l.input_layernorm);
            (hidden, normed) = layer.forward(&hidden, &normed, next_norm, index, pass, eps)?;
        }
        // The norm is per row: selecting rows after it is selecting them before.
        if let Some(last) = last {
            normed = normed.index_select(&Tensor::new(last, &self.device)?, 0)?;
        }
        times_transposed(&normed, &self.lm_head)?.to_dtype(DType::F32)
    }

    /// `cos` and `sin` (`[tokens, head_dim / 2]`, model dtype) of each token's position
    /// (`positions`: `[tokens, 1]` f32).
    fn rotary(&self, positions: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let angles = positions.broadcast_mul(&self.inv_freq.unsqueeze(0)?)?;
        Ok((
            angles.cos()?.to_dtype(self.dtype)?,
            angles.sin()?.to_dtype(self.dtype)?,
        ))
    }
}

impl CausalLm for LlamaModel {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        KvCache::new()
    }

    fn forward_tokens(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        all_positions: bool,
    ) -> candle_core::Result<Tensor> {
        self.forward(ids, cache, all_positions)
    }

    fn forward_batch(&self, seqs: &mut [(&[u32], &mut KvCache)]) -> candle_core::Result<Tensor> {
        let mut inputs: Vec<SequenceInput<'_>> = seqs
            .iter_mut()
            .map(|(ids, cache)| SequenceInput { ids, cache })
            .collect();
        self.forward_sequences(&mut inputs, false)
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn eos_ids(&self) -> Vec<u32> {
        self.config.eos_token_ids.clone()
    }

    fn warm_up_token(&self) -> u32 {
        self.config.bos_token_id.unwrap_or(0)
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn kv_slab(&self) -> &KvSlab {
        &self.kv
    }
}
