//! OPT's self-attention: q/k/v in one stacked matmul (the query scaling folded in), keys and
//! values written to the slab, the decodes attended together (`layers::attention`) and each other
//! sequence against its own cache under a causal mask; and what every layer of one pass shares.

use candle_core::{DType, Device, Tensor};
use candle_nn::Linear;

use crate::models::layers::attention::{attend_packed, mask_value, softmax_as_transformers, Heads};
use crate::models::layers::kv_pass::KvPass;
use crate::models::layers::matmul::linear;
use crate::models::layers::packing::{PackingOrder, Span};

/// One layer's self-attention.
pub(super) struct Attention {
    /// `q_proj`, `k_proj` and `v_proj` stacked into one matmul, with OPT's query scaling
    /// (`head_dim^-0.5`) folded into the query rows.
    pub(super) qkv_proj: Linear,
    pub(super) out_proj: Linear,
    pub(super) num_heads: usize,
    pub(super) head_dim: usize,
}

/// What every layer of one pass shares: the slab's indexes, the sequences' spans (in the
/// caller's order) and the packing order.
pub(super) struct Pass<'a> {
    pub(super) kv: &'a KvPass,
    pub(super) spans: &'a [Span],
    pub(super) order: &'a PackingOrder,
}

/// `-inf` above the diagonal, offset by the tokens already cached; `None` for one new token.
fn causal_mask(
    seq: usize,
    past: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    if seq == 1 {
        return Ok(None);
    }
    let total = past + seq;
    let values: Vec<f32> = (0..seq)
        .flat_map(|i| (0..total).map(move |j| mask_value(past + i, j, None)))
        .collect();
    Tensor::from_vec(values, (seq, total), device)?
        .to_dtype(dtype)
        .map(Some)
}

impl Attention {
    /// Attention of packed tokens `[tokens, hidden]`, each sequence against its own cache: the
    /// decodes in one batch, the others one by one.
    pub(super) fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        pass: &Pass<'_>,
    ) -> candle_core::Result<Tensor> {
        let (tokens, hidden) = x.dims2()?;
        let (heads, head_dim) = (self.num_heads, self.head_dim);
        // [tokens, 3, heads, head_dim]: q (scaled already), k, v of each token.
        let qkv = linear(&self.qkv_proj, x)?.reshape((tokens, 3, heads, head_dim))?;
        let q = qkv.get_on_dim(1, 0)?;
        // Every new token's keys and values into the slab, in one write.
        pass.kv
            .write(layer, &qkv.get_on_dim(1, 1)?, &qkv.get_on_dim(1, 2)?)?;
        let shape = Heads {
            heads,
            kv_heads: heads,
            head_dim,
            scale: None,
            window: None,
        };
        // Each prefill against the keys and values of its positions 0..end.
        let out = attend_packed(
            &q,
            pass.kv,
            pass.order,
            pass.spans,
            layer,
            &shape,
            |q, i, span| {
                let (k, v) = pass.kv.read(i, layer, 0, span.past + span.len)?;
                self.attend(q, &k, &v, span, hidden)
            },
        )?;
        linear(&self.out_proj, &out)
    }

    /// Attention of one sequence's queries (`[heads, tokens, head_dim]`) over its keys and
    /// values; returns `[tokens, hidden]`.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        span: &Span,
        hidden: usize,
    ) -> candle_core::Result<Tensor> {
        let scores = q.matmul(&k.t()?)?;
        let scores = match causal_mask(span.len, span.past, scores.dtype(), q.device())? {
            Some(m) => scores.broadcast_add(&m)?,
            None => scores,
        };
        let probs = softmax_as_transformers(&scores, v.dtype())?;
        // [heads, len, head_dim] -> [len, hidden]
        probs
            .matmul(v)?
            .transpose(0, 1)?
            .reshape((span.len, hidden))
    }
}
