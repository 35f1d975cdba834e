//! The OPT decoder on candle, computed exactly as transformers' `OPTForCausalLM` does.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear};

use super::attention::{Attention, Pass};
use super::config::{OptConfig, LAYER_NORM_EPS, POSITION_OFFSET};
use crate::load::weights::DeviceWeights;
use crate::load::LoadError;
use crate::models::layers::decode_graph::{DecodeGraphs, DecodeInputs, GraphMode};
pub use crate::models::layers::kv_cache::KvCache;
use crate::models::layers::kv_pass::KvPass;
use crate::models::layers::kv_slab::KvSlab;
use crate::models::layers::matmul::{linear, times_transposed};
use crate::models::layers::packing::{packing_order, Span};
use crate::models::TokenCache;

struct DecoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_layer_norm: LayerNorm,
}

/// An OPT causal language model with its weights on one device.
pub struct OptModel {
    pub config: OptConfig,
    embed_tokens: Tensor,
    embed_positions: Tensor,
    project_in: Option<Linear>,
    project_out: Option<Linear>,
    layers: Vec<DecoderLayer>,
    final_layer_norm: Option<LayerNorm>,
    lm_head: Tensor,
    /// Keys and values of every sequence.
    kv: KvSlab,
    /// Passes of decodes only, replayed as CUDA graphs.
    graphs: DecodeGraphs,
    device: Device,
    dtype: DType,
}

/// Builds the model's pieces from named weights, checking every name and shape.
struct Builder<'a> {
    weights: &'a DeviceWeights,
    config: &'a OptConfig,
}

impl Builder<'_> {
    fn layer_norm(&self, prefix: &str, like: &Tensor) -> Result<LayerNorm, LoadError> {
        let h = self.config.hidden_size;
        let (weight, bias) = if self.config.layer_norm_elementwise_affine {
            (
                self.weights.get(&format!("{prefix}.weight"), &[h])?,
                self.weights.get(&format!("{prefix}.bias"), &[h])?,
            )
        } else {
            (
                Tensor::ones(h, like.dtype(), like.device())?,
                Tensor::zeros(h, like.dtype(), like.device())?,
            )
        };
        Ok(LayerNorm::new(weight, bias, LAYER_NORM_EPS))
    }

    fn decoder_layer(&self, index: usize, like: &Tensor) -> Result<DecoderLayer, LoadError> {
        let cfg = self.config;
        let (h, f, bias) = (cfg.hidden_size, cfg.ffn_dim, cfg.enable_bias);
        let p = format!("decoder.layers.{index}");
        let proj = |name: &str| {
            self.weights
                .linear(&format!("{p}.self_attn.{name}"), h, h, bias)
        };
        Ok(DecoderLayer {
            self_attn: Attention {
                qkv_proj: stack_qkv(
                    &proj("q_proj")?,
                    &proj("k_proj")?,
                    &proj("v_proj")?,
                    (cfg.head_dim() as f64).powf(-0.5),
                )?,
                out_proj: proj("out_proj")?,
                num_heads: cfg.num_attention_heads,
                head_dim: cfg.head_dim(),
            },
            self_attn_layer_norm: self.layer_norm(&format!("{p}.self_attn_layer_norm"), like)?,
            fc1: self.weights.linear(&format!("{p}.fc1"), f, h, bias)?,
            fc2: self.weights.linear(&format!("{p}.fc2"), h, f, bias)?,
            final_layer_norm: self.layer_norm(&format!("{p}.final_layer_norm"), like)?,
        })
    }
}

/// One linear layer computing `[q * scale, k, v]`.
fn stack_qkv(q: &Linear, k: &Linear, v: &Linear, scale: f64) -> candle_core::Result<Linear> {
    let weight = Tensor::cat(&[&(q.weight() * scale)?, k.weight(), v.weight()], 0)?;
    let bias = match (q.bias(), k.bias(), v.bias()) {
        (Some(qb), Some(kb), Some(vb)) => Some(Tensor::cat(&[&(qb * scale)?, kb, vb], 0)?),
        _ => None,
    };
    Ok(Linear::new(weight, bias))
}

impl OptModel {
    /// Assembles the model from weights already on the device.
    pub fn new(config: OptConfig, weights: &DeviceWeights) -> Result<Self, LoadError> {
        config.validate()?;
        let b = Builder {
            weights,
            config: &config,
        };
        let (h, e) = (config.hidden_size, config.embed_dim());
        let embed_tokens = weights.get("decoder.embed_tokens.weight", &[config.vocab_size, e])?;
        let embed_positions = weights.get(
            "decoder.embed_positions.weight",
            &[config.max_position_embeddings + POSITION_OFFSET, h],
        )?;
        let (project_in, project_out) = if config.has_projections() {
            (
                Some(b.weights.linear("decoder.project_in", h, e, false)?),
                Some(b.weights.linear("decoder.project_out", e, h, false)?),
            )
        } else {
            (None, None)
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| b.decoder_layer(i, &embed_tokens))
            .collect::<Result<Vec<_>, _>>()?;
        let final_layer_norm = if config.has_final_layer_norm() {
            Some(b.layer_norm("decoder.final_layer_norm", &embed_tokens)?)
        } else {
            None
        };
        let lm_head = if config.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            weights.get("lm_head.weight", &[config.vocab_size, e])?
        };
        let kv = KvSlab::new(
            config.num_hidden_layers,
            config.num_attention_heads,
            config.head_dim(),
            embed_tokens.dtype(),
            embed_tokens.device(),
        );
        Ok(Self {
            kv,
            graphs: DecodeGraphs::new(GraphMode::for_device(embed_tokens.device())),
            device: embed_tokens.device().clone(),
            dtype: embed_tokens.dtype(),
            config,
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            layers,
            final_layer_norm,
            lm_head,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The keys and values of every sequence of this model.
    pub fn kv_slab(&self) -> &KvSlab {
        &self.kv
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

    /// Runs `ids` (`[1, seq]`) after the tokens already in `cache` and returns f32 logits:
    /// `[1, seq, vocab]` when `all_positions`, else `[1, vocab]` for the last token.
    pub fn forward(
        &self,
        ids: &Tensor,
        cache: &mut KvCache,
        all_positions: bool,
    ) -> candle_core::Result<Tensor> {
        let (batch, _) = ids.dims2()?;
        if batch != 1 {
            candle_core::bail!("one sequence per cache: batch several with forward_sequences");
        }
        let ids: Vec<u32> = ids.squeeze(0)?.to_vec1()?;
        let logits = self.forward_sequences(&mut [(&ids, cache)], all_positions)?;
        match all_positions {
            true => logits.unsqueeze(0),
            false => Ok(logits),
        }
    }

    /// Runs several sequences, each's new tokens after those in its own cache, in one pass:
    /// their tokens are packed along one axis (`[tokens, hidden]`) for every matmul, and only
    /// attention looks at each sequence separately. Returns f32 logits `[total new tokens,
    /// vocab]` when `all_positions` (sequences in order), else `[sequences, vocab]` for each
    /// sequence's last token.
    pub fn forward_sequences(
        &self,
        seqs: &mut [(&[u32], &mut KvCache)],
        all_positions: bool,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let order = packing_order(seqs.iter().map(|(ids, _)| ids.len()), all_positions);
        let mut spans: Vec<Option<Span>> = (0..seqs.len()).map(|_| None).collect();
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for &index in &order.order {
            let (new, cache) = &mut seqs[index];
            let past = cache.len();
            if new.is_empty() {
                candle_core::bail!("a sequence in the pass has no new tokens");
            }
            if past + new.len() > c.max_position_embeddings {
                candle_core::bail!(
                    "{} tokens exceed the model's {} positions",
                    past + new.len(),
                    c.max_position_embeddings
                );
            }
            if let Some(&id) = new.iter().find(|&&id| id as usize >= c.vocab_size) {
                candle_core::bail!("token id {id} is outside the vocabulary ({})", c.vocab_size);
            }
            cache.reserve(new.len(), &self.kv)?;
            spans[index] = Some(Span {
                offset: ids.len(),
                len: new.len(),
                past,
            });
            ids.extend_from_slice(new);
            positions.extend((past..past + new.len()).map(|p| (p + POSITION_OFFSET) as u32));
        }
        let spans: Vec<Span> = spans.into_iter().flatten().collect();
        if !all_positions && order.decode_count == seqs.len() {
            let caches: Vec<&KvCache> = seqs.iter().map(|(_, cache)| &**cache).collect();
            let forward = |inputs: &DecodeInputs<'_>| {
                // Rows of the position table start at POSITION_OFFSET.
                let table_rows = self.embed_positions.dim(0)? - POSITION_OFFSET;
                let table = self
                    .embed_positions
                    .narrow(0, POSITION_OFFSET, table_rows)?;
                let pass = Pass {
                    kv: inputs.kv,
                    spans: inputs.spans,
                    order: inputs.order,
                };
                self.forward_packed(
                    inputs.ids,
                    &table.index_select(inputs.positions, 0)?,
                    &pass,
                    None,
                )
            };
            let graphed = self.graphs.run(
                &self.kv,
                &caches,
                &ids,
                &[None],
                c.vocab_size,
                self.dtype,
                &self.device,
                &forward,
            )?;
            if let Some(logits) = graphed {
                for (_, cache) in seqs.iter_mut() {
                    cache.advance(1);
                }
                return Ok(logits);
            }
        }
        let ids = Tensor::new(ids, &self.device)?;
        let positions = Tensor::new(positions, &self.device)?;
        let position_rows = self.embed_positions.index_select(&positions, 0)?;
        let caches: Vec<&KvCache> = seqs.iter().map(|(_, cache)| &**cache).collect();
        let new: Vec<usize> = spans.iter().map(|s| s.len).collect();
        let kv = KvPass::new(
            &self.kv,
            &caches,
            &new,
            &order,
            &[None],
            self.dtype,
            &self.device,
        )?;
        let pass = Pass {
            kv: &kv,
            spans: &spans,
            order: &order,
        };
        let last = (!all_positions).then(|| {
            spans
                .iter()
                .map(|s| (s.offset + s.len - 1) as u32)
                .collect::<Vec<u32>>()
        });
        let logits = self.forward_packed(&ids, &position_rows, &pass, last)?;
        for ((_, cache), span) in seqs.iter_mut().zip(&spans) {
            cache.advance(span.len);
        }
        Ok(logits)
    }

    /// The layers over packed tokens `ids` (`[tokens]` u32) with their position embeddings
    /// (`[tokens, hidden]`), then the final norm, projection and head over the rows `last`
    /// names (every row when `None`): f32 logits `[rows, vocab]`.
    fn forward_packed(
        &self,
        ids: &Tensor,
        position_rows: &Tensor,
        pass: &Pass<'_>,
        last: Option<Vec<u32>>,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let tokens = self.embed_tokens.index_select(ids, 0)?;
        let tokens = match &self.project_in {
            Some(p) => linear(p, &tokens)?,
            None => tokens,
        };
        let mut hidden = (tokens + position_rows)?;
        for (index, layer) in self.layers.iter().enumerate() {
            hidden = layer.forward(
                &hidden,
                index,
                pass,
                c.do_layer_norm_before,
                &c.activation_function,
            )?;
        }
        if let Some(last) = last {
            hidden = hidden.index_select(&Tensor::new(last, &self.device)?, 0)?;
        }
        if let Some(norm) = &self.final_layer_norm {
            hidden = norm.forward(&hidden)?;
        }
        if let Some(p) = &self.project_out {
            hidden = linear(p, &hidden)?;
        }
        times_transposed(&hidden, &self.lm_head)?.to_dtype(DType::F32)
    }
}

fn activate(x: &Tensor, activation: &str) -> candle_core::Result<Tensor> {
    match activation {
        "gelu" => x.gelu_erf(),
        "gelu_new" => x.gelu(),
        _ => x.relu(),
    }
}

impl DecoderLayer {
    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        pass: &Pass<'_>,
        norm_before: bool,
        activation: &str,
    ) -> candle_core::Result<Tensor> {
        let residual = x;
        let h = if norm_before {
            self.self_attn_layer_norm.forward(x)?
        } else {
            x.clone()
        };
        let h = (residual + self.self_attn.forward(&h, layer, pass)?)?;
        let h = if norm_before {
            h
        } else {
            self.self_attn_layer_norm.forward(&h)?
        };
        let residual = &h;
        let f = if norm_before {
            self.final_layer_norm.forward(&h)?
        } else {
            h.clone()
        };
        let f = linear(&self.fc2, &activate(&linear(&self.fc1, &f)?, activation)?)?;
        let out = (residual + f)?;
        if norm_before {
            Ok(out)
        } else {
            self.final_layer_norm.forward(&out)
        }
    }
}
