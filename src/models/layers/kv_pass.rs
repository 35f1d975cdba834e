//! One forward pass's view of the [`KvSlab`]: the slot indexes of its tokens, built on the host
//! and uploaded once, then shared by every layer, so that each layer writes the new keys and
//! values of all decodes in one `scatter_set` and reads their caches in one `index_select` (with
//! the padding masks, also built once per pass). A prefill chunk is written per sequence, one
//! `slice_set` per run of consecutive slots (a fresh sequence's slots mostly are one run): a
//! copy is faster than candle's scatter, whose threads each loop over every token written.

use candle_core::{DType, Device, Tensor};

use super::attention::padding_mask;
use super::kv_cache::KvCache;
use super::kv_cache::TokenCache;
use super::kv_slab::KvSlab;
use super::packing::PackingOrder;
use super::prefill_batch::{Chunk, PrefillBatch};

/// The slab's tensors and the indexes of one pass.
pub struct KvPass {
    /// `(keys, values)` per layer, `[kv_heads, slots, head_dim]`.
    layers: Vec<(Tensor, Tensor)>,
    kv_heads: usize,
    head_dim: usize,
    /// New tokens in the pass.
    tokens: usize,
    /// `[kv_heads, decodes, head_dim]` u32: the slot of each decode's new token (packed rows
    /// `0..decodes`), repeated over heads and dimensions as `scatter_set` wants.
    scatter: Option<Tensor>,
    /// The other new tokens: runs of packed rows going to consecutive slots.
    runs: Vec<Run>,
    decodes: Option<Decodes>,
    /// Per sequence (caller order) that is not a decode: slots of its positions `0..end`.
    others: Vec<Option<Tensor>>,
    /// The prefill chunks in one batched attention, when there are several.
    prefills: Option<PrefillBatch>,
}

/// Packed rows `row..row + len` go to slots `slot..slot + len`.
struct Run {
    row: usize,
    slot: usize,
    len: usize,
}

/// The decodes' caches, padded to the longest.
struct Decodes {
    /// How the caches are read.
    read: DecodeRead,
    /// `[decodes, longest]` u32, the slots of each decode's positions (padding after its length),
    /// and `[decodes]` u32, its length: what the decode-attention kernel reads (on a GPU only).
    table: Option<(Tensor, Tensor)>,
    count: usize,
    /// `[1, decodes, 1, longest]` in the model's dtype, per distinct window of the layers;
    /// `None` for a window under which no key is hidden (nothing to add).
    masks: Vec<(Option<usize>, Option<Tensor>)>,
}

/// How a pass reads its decodes' caches from the slab.
enum DecodeRead {
    /// `[decodes * longest]` u32: slots of positions `0..longest` of each decode, padding
    /// pointing at its first slot (masked), gathered in one `index_select` per layer.
    Gather(Tensor),
    /// A lone decode whose slots are one run `start..start + len`: read in place, a view of
    /// the slab (no gather, no padding).
    InPlace { start: usize, len: usize },
}

impl KvPass {
    /// Indexes for a pass whose sequences (caller order) have `caches` (with the slots of the
    /// new tokens reserved, lengths not yet advanced) and `new` tokens each; `windows` are the
    /// layers' windows (masks are made once per distinct one).
    pub fn new(
        slab: &KvSlab,
        caches: &[&KvCache],
        new: &[usize],
        order: &PackingOrder,
        windows: &[Option<usize>],
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let (kv_heads, head_dim) = slab.heads();
        let decode_slots: Vec<u32> = order
            .decodes()
            .iter()
            .map(|&i| caches[i].slots(caches[i].len(), caches[i].len() + 1)[0])
            .collect();
        let n = decode_slots.len();
        let scatter = match n {
            0 => None,
            _ => Some(
                Tensor::from_vec(decode_slots, (1, n, 1), device)?
                    .broadcast_as((kv_heads, n, head_dim))?
                    .contiguous()?,
            ),
        };
        let mut runs: Vec<Run> = Vec::new();
        let mut row = n;
        let mut chunks = Vec::with_capacity(order.others().len());
        for &i in order.others() {
            let past = caches[i].len();
            chunks.push(Chunk {
                offset: row,
                len: new[i],
                past,
            });
            for &slot in caches[i].slots(past, past + new[i]) {
                let slot = slot as usize;
                match runs.last_mut() {
                    Some(r) if r.row + r.len == row && r.slot + r.len == slot => r.len += 1,
                    _ => runs.push(Run { row, slot, len: 1 }),
                }
                row += 1;
            }
        }
        let decodes = match order.decodes() {
            [] => None,
            decodes => {
                let lens: Vec<usize> = decodes.iter().map(|&i| caches[i].len() + 1).collect();
                let longest = lens.iter().copied().max().unwrap_or(0);
                let lone_run = match decodes {
                    [i] => {
                        let slots = caches[*i].slots(0, lens[0]);
                        let run = slots.windows(2).all(|w| w[1] == w[0] + 1);
                        run.then_some(slots[0] as usize)
                    }
                    _ => None,
                };
                let gather_index = || -> candle_core::Result<Tensor> {
                    let mut index = Vec::with_capacity(decodes.len() * longest);
                    for (&i, &len) in decodes.iter().zip(&lens) {
                        let slots = caches[i].slots(0, len);
                        index.extend_from_slice(slots);
                        index.extend(std::iter::repeat_n(slots[0], longest - len));
                    }
                    Tensor::from_vec(index, decodes.len() * longest, device)
                };
                let read = match lone_run {
                    Some(start) => DecodeRead::InPlace {
                        start,
                        len: lens[0],
                    },
                    None => DecodeRead::Gather(gather_index()?),
                };
                // On a GPU the decode-attention kernel reads the slots through a table: the
                // gather's index, reshaped (made for a lone run too).
                let table = match (device.is_cuda(), &read) {
                    (false, _) => None,
                    (true, read) => {
                        let index = match read {
                            DecodeRead::Gather(index) => index.clone(),
                            DecodeRead::InPlace { .. } => gather_index()?,
                        };
                        let lens32: Vec<u32> = lens.iter().map(|&l| l as u32).collect();
                        Some((
                            index.reshape((decodes.len(), longest))?,
                            Tensor::from_vec(lens32, decodes.len(), device)?,
                        ))
                    }
                };
                let mut masks: Vec<(Option<usize>, Option<Tensor>)> = Vec::new();
                for &window in windows {
                    if masks.iter().all(|(w, _)| *w != window) {
                        // Every key seen by every query: no padding, no window cut.
                        let sees_all = lens
                            .iter()
                            .all(|&len| len == longest && window.is_none_or(|w| w >= len));
                        let mask = match sees_all {
                            true => None,
                            false => Some(
                                padding_mask(&lens, longest, window, device)?
                                    .reshape((1, lens.len(), 1, longest))?
                                    .to_dtype(dtype)?,
                            ),
                        };
                        masks.push((window, mask));
                    }
                }
                Some(Decodes {
                    read,
                    table,
                    count: decodes.len(),
                    masks,
                })
            }
        };
        let mut others: Vec<Option<Tensor>> = (0..caches.len()).map(|_| None).collect();
        for &i in order.others() {
            let end = caches[i].len() + new[i];
            others[i] = Some(Tensor::new(caches[i].slots(0, end), device)?);
        }
        let prefills = PrefillBatch::new(caches, &chunks, order, windows, dtype, device)?;
        Ok(Self {
            layers: slab.tensors(),
            kv_heads,
            head_dim,
            tokens: row,
            scatter,
            runs,
            decodes,
            others,
            prefills,
        })
    }

    /// A pass of `count` decodes only, over tensors made by the caller (a decode graph's fixed
    /// buffers): `scatter` `[kv_heads, count, head_dim]` u32, the slot each new token goes to;
    /// `gather` `[count * longest]` u32, the slots each decode reads; `lens` `[count]` u32, each
    /// decode's length; `masks` `[1, count, 1, longest]` per distinct window of the layers.
    pub fn for_decodes(
        slab: &KvSlab,
        scatter: Tensor,
        gather: Tensor,
        lens: Tensor,
        masks: Vec<(Option<usize>, Option<Tensor>)>,
    ) -> candle_core::Result<Self> {
        let (kv_heads, head_dim) = slab.heads();
        let count = scatter.dim(1)?;
        let table = gather.reshape((count, gather.dim(0)? / count))?;
        Ok(Self {
            layers: slab.tensors(),
            kv_heads,
            head_dim,
            tokens: count,
            scatter: Some(scatter),
            runs: Vec::new(),
            decodes: Some(Decodes {
                read: DecodeRead::Gather(gather),
                table: Some((table, lens)),
                count,
                masks,
            }),
            others: (0..count).map(|_| None).collect(),
            prefills: None,
        })
    }

    /// Writes the keys and values of every new token of the pass (packed order, each
    /// `[tokens, kv_heads, head_dim]` or `[tokens, kv_heads * head_dim]`) into `layer`.
    pub fn write(&self, layer: usize, k: &Tensor, v: &Tensor) -> candle_core::Result<()> {
        let shape = (self.tokens, self.kv_heads, self.head_dim);
        for (slab, new) in [(&self.layers[layer].0, k), (&self.layers[layer].1, v)] {
            // A strided [tokens, kv_heads, head_dim] is copied once, by the transpose below.
            let new = match new.rank() {
                3 => new.clone(),
                _ => new.reshape(shape)?,
            };
            let rows = |row, len| new.narrow(0, row, len)?.transpose(0, 1)?.contiguous();
            if let Some(index) = &self.scatter {
                slab.scatter_set(index, &rows(0, index.dim(1)?)?, 1)?;
            }
            for run in &self.runs {
                slab.slice_set(&rows(run.row, run.len)?, 1, run.slot)?;
            }
        }
        Ok(())
    }

    /// Keys and values of `layer` of every decode (packed order), positions `0..longest`:
    /// `[kv_heads, decodes, longest, head_dim]` each, with the padding to mask.
    pub fn decode_kv(&self, layer: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let Some(d) = &self.decodes else {
            candle_core::bail!("the pass has no decodes");
        };
        let (k, v) = &self.layers[layer];
        let read = |t: &Tensor| -> candle_core::Result<Tensor> {
            match &d.read {
                DecodeRead::Gather(index) => {
                    let rows = t.index_select(index, 1)?;
                    let longest = rows.dim(1)? / d.count;
                    rows.reshape((self.kv_heads, d.count, longest, self.head_dim))
                }
                // A view: the matmuls read the slab's rows where they are.
                DecodeRead::InPlace { start, len } => t.narrow(1, *start, *len)?.unsqueeze(1),
            }
        };
        Ok((read(k)?, read(v)?))
    }

    /// The prefill chunks of the pass as one batch, when it has several, with the keys and
    /// values of `layer` (the slab's, `[kv_heads, slots, head_dim]`).
    pub fn prefill_batch(&self, layer: usize) -> Option<(&PrefillBatch, &Tensor, &Tensor)> {
        let (k, v) = &self.layers[layer];
        self.prefills.as_ref().map(|batch| (batch, k, v))
    }

    /// The keys and values of `layer` (the slab's, `[kv_heads, slots, head_dim]`) with each
    /// decode's slot table `[decodes, longest]` and length `[decodes]` (u32), where the pass
    /// made them (on a GPU, for the decode-attention kernel).
    pub fn decode_table(&self, layer: usize) -> Option<[&Tensor; 4]> {
        let (table, lens) = self.decodes.as_ref()?.table.as_ref()?;
        let (k, v) = &self.layers[layer];
        Some([k, v, table, lens])
    }

    /// `[1, decodes, 1, longest]`: 0 where a decode's query sees a key, `-inf` elsewhere;
    /// `None` when every query sees every key (nothing to add).
    pub fn decode_mask(&self, window: Option<usize>) -> candle_core::Result<Option<&Tensor>> {
        let masks = self.decodes.as_ref().map(|d| &d.masks[..]).unwrap_or(&[]);
        match masks.iter().find(|(w, _)| *w == window) {
            Some((_, mask)) => Ok(mask.as_ref()),
            None => candle_core::bail!("no decode mask for window {window:?}"),
        }
    }

    /// Keys and values of `layer` at positions `start..end` of sequence `seq` (caller order, not
    /// a decode): `[kv_heads, end - start, head_dim]` each.
    pub fn read(
        &self,
        seq: usize,
        layer: usize,
        start: usize,
        end: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let Some(index) = &self.others[seq] else {
            candle_core::bail!("sequence {seq} is a decode of the pass");
        };
        let index = index.narrow(0, start, end - start)?;
        let (k, v) = &self.layers[layer];
        Ok((k.index_select(&index, 1)?, v.index_select(&index, 1)?))
    }
}

#[cfg(test)]
#[path = "kv_pass_tests.rs"]
mod tests;
