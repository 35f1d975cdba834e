//! One decoder layer of the Llama family: its weights as the builder finds them (q/k/v and
//! gate/up fused where the attach stored them so, else each), and its forward over packed tokens
//! with each residual add fused with the norm after it.

use candle_core::Tensor;
use candle_nn::Linear;

use super::attention::{Attention, Pass, QkvProjection};
use super::config::LlamaConfig;
use super::fused::{gate_up_name, qkv_name};
use crate::load::weights::DeviceWeights;
use crate::load::LoadError;
use crate::models::layers::fused::{add_rms_norm, silu_mul};
use crate::models::layers::matmul::linear;

struct Mlp {
    gate_up: GateUp,
    down_proj: Linear,
}

/// The gate and up projections: one matmul over their fused weight, or two.
enum GateUp {
    Fused(Linear),
    Separate { gate: Linear, up: Linear },
}

pub(super) struct DecoderLayer {
    pub(super) input_layernorm: Tensor,
    pub(super) self_attn: Attention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
}

pub(super) struct Builder<'a> {
    pub(super) weights: &'a DeviceWeights,
    pub(super) config: &'a LlamaConfig,
}

impl Builder<'_> {
    pub(super) fn layer(&self, index: usize) -> Result<DecoderLayer, LoadError> {
        let c = self.config;
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (q, kv) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let p = format!("layers.{index}");
        let attn = |name: &str, o, i, bias| {
            self.weights
                .linear(&format!("{p}.self_attn.{name}"), o, i, bias)
        };
        let mlp = |name: &str, o, i| {
            self.weights
                .linear(&format!("{p}.mlp.{name}"), o, i, c.mlp_bias)
        };
        let qk_norm = |name: &str| -> Result<Option<Tensor>, LoadError> {
            if c.qk_norm {
                Ok(Some(
                    self.weights
                        .get(&format!("{p}.self_attn.{name}.weight"), &[d])?,
                ))
            } else {
                Ok(None)
            }
        };
        // The fused weights when the attach stored them so (DeviceWeights::fuse), else each.
        let qkv = if self
            .weights
            .contains(&format!("{}.weight", qkv_name(index)))
        {
            QkvProjection::Fused(attn("qkv_proj", q + 2 * kv, h, c.qkv_bias)?)
        } else {
            QkvProjection::Separate {
                q: attn("q_proj", q, h, c.qkv_bias)?,
                k: attn("k_proj", kv, h, c.qkv_bias)?,
                v: attn("v_proj", kv, h, c.qkv_bias)?,
            }
        };
        let gate_up = if self
            .weights
            .contains(&format!("{}.weight", gate_up_name(index)))
        {
            GateUp::Fused(mlp("gate_up_proj", 2 * i, h)?)
        } else {
            GateUp::Separate {
                gate: mlp("gate_proj", i, h)?,
                up: mlp("up_proj", i, h)?,
            }
        };
        Ok(DecoderLayer {
            input_layernorm: self
                .weights
                .get(&format!("{p}.input_layernorm.weight"), &[h])?,
            self_attn: Attention {
                qkv,
                o_proj: attn("o_proj", h, q, c.o_bias)?,
                q_norm: qk_norm("q_norm")?,
                k_norm: qk_norm("k_norm")?,
                num_heads: c.num_attention_heads,
                num_kv_heads: c.num_key_value_heads,
                head_dim: d,
                window: c.layer_windows.get(index).copied().flatten(),
            },
            post_attention_layernorm: self
                .weights
                .get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            mlp: Mlp {
                gate_up,
                down_proj: mlp("down_proj", h, i)?,
            },
        })
    }
}

impl DecoderLayer {
    /// The layer over `x` (its input norm `normed` already computed): the layer's output, and
    /// that output normed by `next_norm`.
    pub(super) fn forward(
        &self,
        x: &Tensor,
        normed: &Tensor,
        next_norm: &Tensor,
        index: usize,
        pass: &Pass<'_>,
        eps: f64,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let attended = self.self_attn.forward(normed, index, pass, eps)?;
        let (h, m) = add_rms_norm(x, &attended, &self.post_attention_layernorm, eps)?;
        add_rms_norm(&h, &self.mlp.forward(&m)?, next_norm, eps)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let product = match &self.gate_up {
            GateUp::Fused(gate_up) => silu_mul(&linear(gate_up, x)?)?,
            GateUp::Separate { gate, up } => {
                (candle_nn::ops::silu(&linear(gate, x)?)? * linear(up, x)?)?
            }
        };
        linear(&self.down_proj, &product)
    }
}
