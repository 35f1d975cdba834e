//! The Llama family's attention: q/k/v projections (fused or not) with optional biases, per-head q/k RMSNorm,
//! rotary embeddings, grouped-query attention over the slab (decodes batched by
//! `layers::attention`, each other sequence against its own cache with a causal and sliding-window
//! mask), the output projection; and what every layer of one pass shares ([`Pass`]).

use candle_core::{Device, Tensor};
use candle_nn::Linear;

use crate::models::layers::attention::{attend_packed, mask_value, softmax_as_transformers, Heads};
use crate::models::layers::fused::{rms_norm, split_qkv, QkvHeads};
use crate::models::layers::kv_pass::KvPass;
use crate::models::layers::matmul::linear;
use crate::models::layers::packing::{PackingOrder, Span};

/// One layer's attention: projections, per-head norms, its window.
pub(super) struct Attention {
    pub(super) qkv: QkvProjection,
    pub(super) o_proj: Linear,
    pub(super) q_norm: Option<Tensor>,
    pub(super) k_norm: Option<Tensor>,
    pub(super) num_heads: usize,
    pub(super) num_kv_heads: usize,
    pub(super) head_dim: usize,
    /// Positions a query sees, itself included; `None`: all before it.
    pub(super) window: Option<usize>,
}

/// The q, k and v projections: one matmul over their fused weight (on CUDA, where the attach
/// stores them so), or three.
pub(super) enum QkvProjection {
    Fused(Linear),
    Separate { q: Linear, k: Linear, v: Linear },
}

/// What every layer of one pass shares: the slab's indexes, the sequences' spans (in the
/// caller's order), the packing order, and the rotary angles of the packed tokens.
pub(super) struct Pass<'a> {
    pub(super) kv: &'a KvPass,
    pub(super) spans: &'a [Span],
    pub(super) order: &'a PackingOrder,
    pub(super) cos: &'a Tensor,
    pub(super) sin: &'a Tensor,
}

impl Attention {
    /// Projects to `[tokens, heads, head_dim]`, then the per-head norm and RoPE when given.
    fn project(
        &self,
        x: &Tensor,
        proj: &Linear,
        heads: usize,
        norm: Option<(&Tensor, f64)>,
        rope: Option<(&Tensor, &Tensor)>,
    ) -> candle_core::Result<Tensor> {
        let tokens = x.dim(0)?;
        let mut y = linear(proj, x)?.reshape((tokens, heads, self.head_dim))?;
        if let Some((weight, eps)) = norm {
            y = rms_norm(&y, weight, eps)?;
        }
        if let Some((cos, sin)) = rope {
            y = candle_nn::rotary_emb::rope_thd(&y.unsqueeze(0)?.contiguous()?, cos, sin)?
                .squeeze(0)?;
        }
        Ok(y)
    }

    pub(super) fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        pass: &Pass<'_>,
        eps: f64,
    ) -> candle_core::Result<Tensor> {
        let rope = Some((pass.cos, pass.sin));
        let (q, k, v) = match &self.qkv {
            QkvProjection::Fused(qkv) => {
                let norms = match (&self.q_norm, &self.k_norm) {
                    (Some(q), Some(k)) => Some((q, k, eps)),
                    _ => None,
                };
                let heads = QkvHeads {
                    heads: self.num_heads,
                    kv_heads: self.num_kv_heads,
                    head_dim: self.head_dim,
                };
                split_qkv(&linear(qkv, x)?, heads, norms, rope)?
            }
            QkvProjection::Separate { q, k, v } => {
                let q_norm = self.q_norm.as_ref().map(|w| (w, eps));
                let k_norm = self.k_norm.as_ref().map(|w| (w, eps));
                (
                    self.project(x, q, self.num_heads, q_norm, rope)?,
                    self.project(x, k, self.num_kv_heads, k_norm, rope)?,
                    self.project(x, v, self.num_kv_heads, None, None)?,
                )
            }
        };
        // Every new token's keys and values into the slab, in one write.
        pass.kv.write(layer, &k, &v)?;
        let shape = Heads {
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            scale: Some((self.head_dim as f64).powf(-0.5)),
            window: self.window,
        };
        let out = attend_packed(
            &q,
            pass.kv,
            pass.order,
            pass.spans,
            layer,
            &shape,
            |q, i, span| self.attend(q, pass.kv, i, layer, span),
        )?;
        linear(&self.o_proj, &out)
    }

    /// Attention of sequence `seq`'s queries (`[heads, tokens, head_dim]`) over its cache;
    /// returns `[tokens, heads * head_dim]`.
    fn attend(
        &self,
        q: &Tensor,
        kv: &KvPass,
        seq: usize,
        layer: usize,
        span: &Span,
    ) -> candle_core::Result<Tensor> {
        let (t, group) = (span.len, self.num_heads / self.num_kv_heads);
        let end = span.past + t;
        // The first query (at position `past`) sees keys after `past - window`.
        let start = match self.window {
            Some(w) => (span.past + 1).saturating_sub(w),
            None => 0,
        };
        let (k, v) = kv.read(seq, layer, start, end)?;
        let keys = end - start;
        // Query heads of one kv head side by side: [kv_heads, group * t, head_dim].
        let q = q.reshape((self.num_kv_heads, group * t, self.head_dim))?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match mask(t, span.past, start, self.window, q.device())? {
            Some(mask) => scores
                .reshape((self.num_kv_heads, group, t, keys))?
                .broadcast_add(&mask.to_dtype(scores.dtype())?)?
                .reshape((self.num_kv_heads, group * t, keys))?,
            None => scores,
        };
        let probs = softmax_as_transformers(&scores, v.dtype())?;
        probs
            .matmul(&v)?
            .reshape((self.num_heads, t, self.head_dim))?
            .transpose(0, 1)?
            .reshape((t, self.num_heads * self.head_dim))
    }
}

/// `[t, keys]` with `-inf` where query `i` (position `past + i`) must not see key `j` (position
/// `start + j`): later positions, and those at or before `past + i - window`. `None` when every
/// query sees every key (a single new token).
fn mask(
    t: usize,
    past: usize,
    start: usize,
    window: Option<usize>,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    if t == 1 {
        return Ok(None);
    }
    let keys = past + t - start;
    let values: Vec<f32> = (0..t)
        .flat_map(|i| {
            let p = past + i;
            (0..keys).map(move |j| mask_value(p, start + j, window))
        })
        .collect();
    Tensor::from_vec(values, (t, keys), device).map(Some)
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
