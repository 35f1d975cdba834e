//! The prefill chunks of a pass in one batched attention: each sequence's new queries padded to
//! the longest chunk, its keys and values (positions `0..end`) gathered from the slab and padded
//! to the longest context, and one mask (causal, sliding window, padding) per distinct window of
//! the layers, all built once per pass and shared by every layer. Without it each sequence's
//! attention ran on its own, about a dozen kernels and a host-built mask per sequence and layer:
//! a burst of 64 short prompts took hundreds of milliseconds of launches before their first
//! tokens. Passes whose padding would be large (a long context beside short ones) keep the
//! per-sequence path.

use candle_core::{DType, Device, Tensor};

use super::attention::{mask_value, softmax_as_transformers, Heads};
use super::kv_cache::KvCache;
use super::packing::PackingOrder;

/// Most padded key positions a batch gathers (`sequences * longest context`).
const MAX_KEYS: usize = 32 * 1024;
/// Most padded scores a batch computes per head (`sequences * longest chunk * longest context`).
const MAX_SCORES: usize = 1 << 22;

/// The indexes and masks of a pass's prefill chunks (its sequences that are not decodes).
pub struct PrefillBatch {
    /// `[seqs * chunk]` u32: the packed row of each padded query (padding repeats the last real row).
    query_rows: Tensor,
    /// `[seqs * keys]` u32: the slot of each sequence's positions `0..keys` (padding repeats its
    /// first slot, masked).
    key_slots: Tensor,
    /// `[real queries]` u32: where each real query's output is in the padded `[seqs * chunk]`.
    output_rows: Tensor,
    seqs: usize,
    chunk: usize,
    keys: usize,
    /// `[seqs, 1, 1, chunk, keys]` in the model's dtype, per distinct window.
    masks: Vec<(Option<usize>, Tensor)>,
}

/// Where one prefilling sequence's chunk is: packed rows `offset..offset + len`, after `past`
/// cached positions.
pub struct Chunk {
    pub offset: usize,
    pub len: usize,
    pub past: usize,
}

impl PrefillBatch {
    /// The batch of a pass's `chunks` (those of `order.others()`, in that order, with their
    /// caches), or `None` when there are fewer than two or padding would cost too much.
    pub fn new(
        caches: &[&KvCache],
        chunks: &[Chunk],
        order: &PackingOrder,
        windows: &[Option<usize>],
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Option<Self>> {
        let others = order.others();
        let seqs = others.len();
        let chunk = chunks.iter().map(|c| c.len).max().unwrap_or(0);
        let keys = chunks.iter().map(|c| c.past + c.len).max().unwrap_or(0);
        if seqs < 2 || seqs * keys > MAX_KEYS || seqs * chunk * keys > MAX_SCORES {
            return Ok(None);
        }
        let mut query_rows = Vec::with_capacity(seqs * chunk);
        let mut key_slots = Vec::with_capacity(seqs * keys);
        let mut output_rows = Vec::new();
        for (s, (&i, c)) in others.iter().zip(chunks).enumerate() {
            for t in 0..chunk {
                query_rows.push((c.offset + t.min(c.len - 1)) as u32);
            }
            output_rows.extend((0..c.len).map(|t| (s * chunk + t) as u32));
            let slots = caches[i].slots(0, c.past + c.len);
            key_slots.extend_from_slice(slots);
            key_slots.extend(std::iter::repeat_n(slots[0], keys - slots.len()));
        }
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        for &window in windows {
            if masks.iter().any(|(w, _)| *w == window) {
                continue;
            }
            let mut values = Vec::with_capacity(seqs * chunk * keys);
            for c in chunks {
                for t in 0..chunk {
                    // A padding query repeats the chunk's last one (no empty row).
                    let position = c.past + t.min(c.len - 1);
                    values.extend((0..keys).map(|j| mask_value(position, j, window)));
                }
            }
            let mask = Tensor::from_vec(values, (seqs, 1, 1, chunk, keys), device)?;
            masks.push((window, mask.to_dtype(dtype)?));
        }
        Ok(Some(Self {
            query_rows: Tensor::from_vec(query_rows, seqs * chunk, device)?,
            key_slots: Tensor::from_vec(key_slots, seqs * keys, device)?,
            output_rows: Tensor::from_vec(output_rows.clone(), output_rows.len(), device)?,
            seqs,
            chunk,
            keys,
            masks,
        }))
    }

    /// Attention of the chunks' queries (rows of the packed `q`, `[tokens, heads, head_dim]`)
    /// over the layer's `k` and `v` (the slab's, `[kv_heads, slots, head_dim]`): `[real
    /// queries, heads * head_dim]`, the chunks' rows in order.
    pub fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        shape: &Heads,
    ) -> candle_core::Result<Tensor> {
        let (n, t, keys) = (self.seqs, self.chunk, self.keys);
        let (kv, hd) = (shape.kv_heads, shape.head_dim);
        let group = shape.heads / kv;
        // [n, kv, group * t, hd]: query heads of one kv head side by side.
        let q = q
            .contiguous()?
            .index_select(&self.query_rows, 0)?
            .reshape((n, t, kv, group, hd))?
            .permute((0, 2, 3, 1, 4))?
            .contiguous()?
            .reshape((n, kv, group * t, hd))?;
        let gather = |cache: &Tensor| -> candle_core::Result<Tensor> {
            cache
                .index_select(&self.key_slots, 1)?
                .reshape((kv, n, keys, hd))?
                .transpose(0, 1)?
                .contiguous()
        };
        let (k, v) = (gather(k)?, gather(v)?);
        let mut scores = q.matmul(&k.transpose(2, 3)?)?;
        if let Some(scale) = shape.scale {
            scores = (scores * scale)?;
        }
        let Some((_, mask)) = self.masks.iter().find(|(w, _)| *w == shape.window) else {
            candle_core::bail!("no prefill mask for window {:?}", shape.window);
        };
        let scores = scores
            .reshape((n, kv, group, t, keys))?
            .broadcast_add(mask)?
            .reshape((n, kv, group * t, keys))?;
        let probs = softmax_as_transformers(&scores, v.dtype())?;
        probs
            .matmul(&v)?
            .reshape((n, kv, group, t, hd))?
            .permute((0, 3, 1, 2, 4))?
            .contiguous()?
            .reshape((n * t, shape.heads * hd))?
            .index_select(&self.output_rows, 0)
    }
}
