//! The engine-wide key/value slab: per layer one key and one value tensor `[kv_heads, slots,
//! head_dim]`, allocated once when the engine attaches (sized by its `kv_cache_tokens` budget)
//! and shared by every sequence, each of which holds the list of slots its tokens occupy
//! ([`super::kv_cache::KvCache`]).
//!
//! Layout: a page of one token (a slot). The budget is counted in tokens (each sequence reserves
//! its prompt plus `max_new_tokens`), so `budget` slots always hold every admitted sequence, with
//! no per-sequence rounding to a block size and no fragmentation; every read and write goes
//! through an index (`scatter_set` in, `index_select` out) whatever the page size, so larger
//! pages would only shorten the index a step uploads (`decodes * longest` u32, once per step for
//! every layer). Heads come first so that a gather of slots (`index_select` on the slot axis) is
//! already `[kv_heads, tokens, head_dim]`, the layout attention multiplies, with no transposing
//! copy of what was gathered. Writes overwrite (`scatter_set`), so a reused slot's old values are replaced
//! before anything reads them; what a read takes past a sequence's length is masked.
//!
//! A slab that was never reserved (a model used without an engine, as in tests) grows by
//! doubling as sequences ask for slots; a reserved one is fixed and refuses slots beyond it.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor};

/// Slots a growing slab starts with.
const MIN_SLOTS: usize = 256;

/// The keys and values of every sequence of one model, every layer.
#[derive(Clone)]
pub struct KvSlab {
    state: Arc<Mutex<SlabState>>,
}

struct SlabState {
    /// `(keys, values)` per layer, each `[kv_heads, capacity, head_dim]`; empty before the
    /// first slot.
    layers: Vec<(Tensor, Tensor)>,
    /// Free slots, the lowest last (taken first).
    free: Vec<u32>,
    capacity: usize,
    /// Reserved at attach: never grows.
    fixed: bool,
    layer_count: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
}

impl SlabState {
    /// Reallocates to `capacity` slots, copying what is there; the new slots are free.
    fn grow(&mut self, capacity: usize) -> candle_core::Result<()> {
        if capacity <= self.capacity {
            return Ok(());
        }
        let shape = (self.kv_heads, capacity, self.head_dim);
        let mut grown = Vec::with_capacity(self.layer_count);
        for i in 0..self.layer_count {
            let k = Tensor::zeros(shape, self.dtype, &self.device)?;
            let v = Tensor::zeros(shape, self.dtype, &self.device)?;
            if let Some((old_k, old_v)) = self.layers.get(i) {
                k.slice_set(old_k, 1, 0)?;
                v.slice_set(old_v, 1, 0)?;
            }
            grown.push((k, v));
        }
        self.layers = grown;
        let mut added: Vec<u32> = (self.capacity as u32..capacity as u32).rev().collect();
        added.append(&mut self.free);
        self.free = added;
        self.capacity = capacity;
        Ok(())
    }
}

impl KvSlab {
    /// An empty slab for `layers` layers of `kv_heads * head_dim` values per token.
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            state: Arc::new(Mutex::new(SlabState {
                layers: Vec::new(),
                free: Vec::new(),
                capacity: 0,
                fixed: false,
                layer_count: layers,
                kv_heads,
                head_dim,
                dtype,
                device: device.clone(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlabState> {
        // A panic while holding the lock leaves only slot lists behind: still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates `tokens` slots now (at least; what is there stays) and fixes the size.
    pub fn reserve(&self, tokens: usize) -> candle_core::Result<()> {
        let mut state = self.lock();
        state.grow(tokens)?;
        state.fixed = true;
        Ok(())
    }

    /// Slots allocated.
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    /// Slots no sequence holds.
    pub fn free_slots(&self) -> usize {
        self.lock().free.len()
    }

    /// Device bytes the slab holds (keys and values, every layer).
    pub fn device_bytes(&self) -> u64 {
        let state = self.lock();
        let per_slot = state.kv_heads * state.head_dim * state.dtype.size_in_bytes();
        (2 * state.layer_count * state.capacity * per_slot) as u64
    }

    /// `kv_heads` and `head_dim` of one token's keys (or values) in a layer.
    pub fn heads(&self) -> (usize, usize) {
        let state = self.lock();
        (state.kv_heads, state.head_dim)
    }

    /// `(keys, values)` of every layer, `[kv_heads, capacity, head_dim]` each (handles on the
    /// same storage: writes through them land in the slab).
    pub fn tensors(&self) -> Vec<(Tensor, Tensor)> {
        self.lock().layers.clone()
    }

    /// Takes `n` free slots, growing an unreserved slab; a reserved one that has fewer free is
    /// an error.
    pub(crate) fn take(&self, n: usize) -> candle_core::Result<Vec<u32>> {
        let mut state = self.lock();
        if state.free.len() < n {
            if state.fixed {
                candle_core::bail!(
                    "the KV cache is full: {n} slots asked, {} free of {}",
                    state.free.len(),
                    state.capacity
                );
            }
            let needed = state.capacity + n - state.free.len();
            let capacity = needed.max(state.capacity * 2).max(MIN_SLOTS);
            state.grow(capacity)?;
        }
        let at = state.free.len() - n;
        let mut taken = state.free.split_off(at);
        taken.reverse();
        Ok(taken)
    }

    /// Returns slots to the free list.
    pub(crate) fn give_back(&self, slots: &[u32]) {
        let mut state = self.lock();
        state.free.extend(slots.iter().rev());
    }

    /// Whether `other` is this slab.
    pub fn same(&self, other: &KvSlab) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }
}
