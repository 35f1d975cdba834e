//! The key/value cache of one sequence, for every family: per layer, keys and values laid out
//! `[kv_heads, capacity, head_dim]`, grown by doubling and written in place, with the sequence's
//! length (the position its next token gets) kept beside them.
//!
//! Each sequence owns its cache, sized for its own tokens only, so a forward pass can run
//! several sequences of different lengths; the decodes of a pass read their caches together
//! ([`gather`]) for one batched attention.

use candle_core::{DType, Device, Tensor};

use crate::models::TokenCache;

/// Keys and values of one sequence's tokens, every layer.
#[derive(Default)]
pub struct KvCache {
    /// `(keys, values)` per layer, each `[kv_heads, capacity, head_dim]`; empty before first use.
    layers: Vec<(Tensor, Tensor)>,
    /// Tokens written (positions `0..len`).
    len: usize,
    /// Tokens the tensors can hold.
    capacity: usize,
}

/// Smallest allocation, in tokens.
const MIN_CAPACITY: usize = 16;

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens the cache holds without growing.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every token, keeping the memory.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Bytes the cache holds on its device.
    pub fn device_bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|(k, v)| ((k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes()) as u64)
            .sum()
    }

    /// Makes room for `extra` more tokens: allocates `layers` tensors of
    /// `[kv_heads, capacity, head_dim]` at first use, then doubles (at most to `max_tokens`,
    /// never below what is needed), copying what is there.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reserve(
        &mut self,
        extra: usize,
        max_tokens: usize,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<()> {
        let needed = self.len + extra;
        if needed <= self.capacity && self.layers.len() == layers {
            return Ok(());
        }
        let capacity = needed
            .max(self.capacity * 2)
            .max(MIN_CAPACITY)
            .min(max_tokens.max(needed));
        let mut grown = Vec::with_capacity(layers);
        for i in 0..layers {
            let k = Tensor::zeros((kv_heads, capacity, head_dim), dtype, device)?;
            let v = Tensor::zeros((kv_heads, capacity, head_dim), dtype, device)?;
            if let Some((old_k, old_v)) = self.layers.get(i) {
                k.slice_set(old_k, 1, 0)?;
                v.slice_set(old_v, 1, 0)?;
            }
            grown.push((k, v));
        }
        self.layers = grown;
        self.capacity = capacity;
        Ok(())
    }

    /// Writes the keys and values (`[kv_heads, tokens, head_dim]`, contiguous) of the tokens at
    /// positions `len..len + tokens` of `layer`; the length moves on in [`Self::advance`].
    pub(crate) fn write(&self, layer: usize, k: &Tensor, v: &Tensor) -> candle_core::Result<()> {
        let (ck, cv) = &self.layers[layer];
        ck.slice_set(k, 1, self.len)?;
        cv.slice_set(v, 1, self.len)
    }

    /// Keys and values of positions `start..end` of `layer` (views, `[kv_heads, end - start, head_dim]`).
    pub(crate) fn read(
        &self,
        layer: usize,
        start: usize,
        end: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (k, v) = &self.layers[layer];
        Ok((
            k.narrow(1, start, end - start)?,
            v.narrow(1, start, end - start)?,
        ))
    }

    /// Counts `tokens` more as written, after every layer has written them.
    pub(crate) fn advance(&mut self, tokens: usize) {
        self.len += tokens;
    }
}

impl TokenCache for KvCache {
    fn len(&self) -> usize {
        self.len
    }
}

/// Keys and values of `layer` of every cache, positions `0..lens[i]` of cache `i` padded with
/// zeros to `longest` (the caller masks the padding), stacked: `[caches, kv_heads, longest,
/// head_dim]` each. A cache whose capacity reaches `longest` needs no padding of its own (what
/// it holds past its length is masked as well).
pub(crate) fn gather(
    caches: &[&KvCache],
    layer: usize,
    lens: &[usize],
    longest: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let mut keys = Vec::with_capacity(caches.len());
    let mut values = Vec::with_capacity(caches.len());
    for (cache, &len) in caches.iter().zip(lens) {
        let (k, v) = &cache.layers[layer];
        if cache.capacity >= longest {
            keys.push(k.narrow(1, 0, longest)?);
            values.push(v.narrow(1, 0, longest)?);
        } else {
            keys.push(k.narrow(1, 0, len)?.pad_with_zeros(1, 0, longest - len)?);
            values.push(v.narrow(1, 0, len)?.pad_with_zeros(1, 0, longest - len)?);
        }
    }
    Ok((Tensor::stack(&keys, 0)?, Tensor::stack(&values, 0)?))
}
