//! Attention for the decodes of a pass (one new token per sequence): on a GPU one kernel pair
//! reads each sequence's cache in place ([`decode_attention`]); elsewhere every sequence goes in
//! one batched matmul, their caches read together from the slab in one gather, padded to the
//! longest, and a mask hides each one's padding (and what its sliding window no longer sees).

use candle_core::{DType, Device, Tensor};

use super::decode_attention;
use super::kv_pass::KvPass;
use super::packing::{PackingOrder, Span};

/// The shape of one layer's attention.
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies the scores (`None`: the queries are scaled already).
    pub scale: Option<f64>,
    /// Positions a query sees, itself included; `None`: all before it.
    pub window: Option<usize>,
}

/// One layer's attention over a packed pass, `q` being `[tokens, heads, head_dim]` in packed
/// order: the decodes' rows (the first ones) in one batch ([`attend_decodes`]), then each other
/// sequence's queries (`[heads, len, head_dim]`) by `attend_span(queries, sequence, span)`;
/// returns every row's output, in packed order.
pub fn attend_packed(
    q: &Tensor,
    pass: &KvPass,
    order: &PackingOrder,
    spans: &[Span],
    layer: usize,
    shape: &Heads,
    mut attend_span: impl FnMut(&Tensor, usize, &Span) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let mut outputs = Vec::with_capacity(spans.len());
    let decodes = order.decodes();
    if !decodes.is_empty() {
        let q = q.narrow(0, 0, decodes.len())?.contiguous()?;
        outputs.push(attend_decodes(&q, pass, layer, shape)?);
    }
    if let Some((batch, k, v)) = pass.prefill_batch(layer) {
        outputs.push(batch.attend(q, k, v, shape)?);
        return match outputs.len() {
            1 => Ok(outputs.pop().expect("one output")),
            _ => Tensor::cat(&outputs, 0),
        };
    }
    for &i in order.others() {
        let span = &spans[i];
        let q = q
            .narrow(0, span.offset, span.len)?
            .transpose(0, 1)?
            .contiguous()?;
        outputs.push(attend_span(&q, i, span)?);
    }
    match outputs.len() {
        1 => Ok(outputs.pop().expect("one output")),
        _ => Tensor::cat(&outputs, 0),
    }
}

/// Attention of `q` (`[seqs, heads, head_dim]`, the decodes of `pass` in packed order, their
/// keys and values written into the slab already) over each one's cache; returns
/// `[seqs, heads * head_dim]`.
pub fn attend_decodes(
    q: &Tensor,
    pass: &KvPass,
    layer: usize,
    shape: &Heads,
) -> candle_core::Result<Tensor> {
    if let Some([k, v, table, lens]) = pass.decode_table(layer) {
        if decode_attention::applies(q, shape) {
            return decode_attention::attend(q, k, v, table, lens, shape);
        }
    }
    let seqs = q.dim(0)?;
    let (k, v) = pass.decode_kv(layer)?;
    let group = shape.heads / shape.kv_heads;
    // Query heads of one kv head side by side, kv heads first as the slab's keys are:
    // [kv_heads, seqs, group, head_dim] against [kv_heads, seqs, longest, head_dim].
    let q = q
        .reshape((seqs, shape.kv_heads, group, shape.head_dim))?
        .transpose(0, 1)?
        .contiguous()?;
    let mut scores = q.matmul(&k.transpose(2, 3)?)?;
    if let Some(scale) = shape.scale {
        scores = (scores * scale)?;
    }
    let scores = match pass.decode_mask(shape.window)? {
        Some(mask) => scores.broadcast_add(mask)?,
        None => scores,
    };
    let probs = softmax_as_transformers(&scores, v.dtype())?;
    probs
        .matmul(&v)?
        .transpose(0, 1)?
        .reshape((seqs, shape.heads * shape.head_dim))
}

/// What a mask adds to the score of the key at position `key` for the query at `position`: 0
/// when the query sees it (not later, and inside the window when the layer has one), `-inf`
/// otherwise. Every attention mask is made of it.
pub(crate) fn mask_value(position: usize, key: usize, window: Option<usize>) -> f32 {
    let too_old = window.is_some_and(|w| key + w <= position);
    match key > position || too_old {
        true => f32::NEG_INFINITY,
        false => 0.0,
    }
}

/// `[seqs, 1, 1, longest]`: 0 where sequence `i`'s query (at position `lens[i] - 1`) sees key
/// `j`, `-inf` past its length or before its window.
pub(crate) fn padding_mask(
    lens: &[usize],
    longest: usize,
    window: Option<usize>,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = lens
        .iter()
        .flat_map(|&len| {
            let position = len - 1;
            (0..longest).map(move |j| mask_value(position, j, window))
        })
        .collect();
    Tensor::from_vec(values, (lens.len(), 1, 1, longest), device)
}

/// Softmax over the last axis in f32, rounded once to `dtype`, as transformers does (candle's
/// CUDA kernel accumulates in f32 already; its CPU one does not, so the CPU upcasts).
pub fn softmax_as_transformers(scores: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    if scores.device().is_cpu() && scores.dtype() != DType::F32 {
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)
    } else {
        candle_nn::ops::softmax_last_dim(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::padding_mask;
    use candle_core::Device;

    #[test]
    fn each_query_sees_its_own_length_and_window() {
        let m: Vec<f32> = padding_mask(&[2, 4], 4, Some(3), &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let seen: Vec<bool> = m.iter().map(|v| v.is_finite()).collect();
        assert_eq!(seen[..4], [true, true, false, false]);
        // Position 3 with a window of 3 sees 1, 2 and 3.
        assert_eq!(seen[4..], [false, true, true, true]);
    }
}
