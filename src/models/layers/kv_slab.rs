//! The engine-wide key/value slab: per layer one key and one value tensor `[kv_heads, slots,
//! head_dim]`, sized by the engine's `kv_cache_tokens` budget at attach and shared by every
//! sequence, each of which holds the list of slots its tokens occupy
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
//! When the budget is allocated depends on the device ([`Allocation`]): a GPU slab takes all of
//! it at attach (a device allocation is not zeroed page by page, and the memory is the engine's
//! from then on); a CPU slab only records the budget and grows by doubling, up to it, as
//! sequences take slots, because allocating means zeroing on the host: a 32 768-token budget
//! made every CPU attach pay for zeroing tens of MB its first requests never touch (issue 28).
//! Either way the slab counts the whole budget as its bytes, so placement is unchanged. A slab
//! never reserved (a model used without an engine, as in tests) grows without a limit.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor};

/// Slots a growing slab starts with.
const MIN_SLOTS: usize = 256;

/// When a reserved budget is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// All of it at [`KvSlab::reserve`].
    Eager,
    /// As sequences take slots, by doubling, up to the budget.
    Lazy,
}

impl Allocation {
    /// Lazy on the CPU, where allocating zeroes host memory; eager on every other device.
    pub fn for_device(device: &Device) -> Self {
        match device {
            Device::Cpu => Allocation::Lazy,
            _ => Allocation::Eager,
        }
    }
}

/// The keys and values of every sequence of one model, every layer.
#[derive(Clone)]
pub struct KvSlab {
    state: Arc<Mutex<SlabState>>,
}

struct SlabState {
    /// `(keys, values)` per layer, each `[kv_heads, capacity, head_dim]` (or larger, after a
    /// grow that failed part way); empty before the first slot.
    layers: Vec<(Tensor, Tensor)>,
    /// Free slots, the lowest last (taken first).
    free: Vec<u32>,
    /// Slots allocated.
    capacity: usize,
    /// Slots reserved at attach: the slab never grows past them. `None`: not reserved.
    limit: Option<usize>,
    allocation: Allocation,
    layer_count: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
}

impl SlabState {
    /// Reallocates to `capacity` slots, copying what is there; the new slots are free. One layer
    /// at a time, so that growing holds at most one layer's keys and values beyond the slab; an
    /// error leaves the slab as it was (layers already grown only hold more slots than are
    /// handed out).
    fn grow(&mut self, capacity: usize) -> candle_core::Result<()> {
        if capacity <= self.capacity {
            return Ok(());
        }
        let shape = (self.kv_heads, capacity, self.head_dim);
        let grown = |old: Option<&Tensor>| -> candle_core::Result<Tensor> {
            match old {
                Some(old) if old.dim(1)? >= capacity => Ok(old.clone()),
                old => {
                    let new = Tensor::zeros(shape, self.dtype, &self.device)?;
                    if let Some(old) = old {
                        new.slice_set(old, 1, 0)?;
                    }
                    Ok(new)
                }
            }
        };
        for i in 0..self.layer_count {
            let (k, v) = match self.layers.get(i) {
                Some((k, v)) => (grown(Some(k))?, grown(Some(v))?),
                None => (grown(None)?, grown(None)?),
            };
            match self.layers.get_mut(i) {
                Some(layer) => *layer = (k, v),
                None => self.layers.push((k, v)),
            }
        }
        let mut added: Vec<u32> = (self.capacity as u32..capacity as u32).rev().collect();
        added.append(&mut self.free);
        self.free = added;
        self.capacity = capacity;
        Ok(())
    }

    /// Slots free now or once the slab has grown to its limit.
    fn available(&self) -> usize {
        self.free.len() + self.limit.map_or(0, |l| l.saturating_sub(self.capacity))
    }
}

impl KvSlab {
    /// An empty slab for `layers` layers of `kv_heads * head_dim` values per token, allocated
    /// as the device wants ([`Allocation::for_device`]).
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self::with_allocation(
            layers,
            kv_heads,
            head_dim,
            dtype,
            device,
            Allocation::for_device(device),
        )
    }

    /// As [`Self::new`], allocating a reserved budget as `allocation` says.
    pub fn with_allocation(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
        allocation: Allocation,
    ) -> Self {
        Self {
            state: Arc::new(Mutex::new(SlabState {
                layers: Vec::new(),
                free: Vec::new(),
                capacity: 0,
                limit: None,
                allocation,
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

    /// Fixes the size at `tokens` slots (at least; what is there stays): allocated now when
    /// eager, as slots are taken when lazy.
    pub fn reserve(&self, tokens: usize) -> candle_core::Result<()> {
        let mut state = self.lock();
        let limit = tokens.max(state.capacity);
        if state.allocation == Allocation::Eager {
            state.grow(limit)?;
        }
        state.limit = Some(limit);
        Ok(())
    }

    /// Slots allocated.
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    /// Whether every slot the slab will ever have is allocated (reserved eagerly): its tensors
    /// stay where they are, so a captured graph may hold their addresses.
    pub fn is_fixed(&self) -> bool {
        let state = self.lock();
        state.limit.is_some_and(|limit| state.capacity >= limit)
    }

    /// Slots no sequence holds (allocated or not).
    pub fn free_slots(&self) -> usize {
        self.lock().available()
    }

    /// Device bytes the slab holds (keys and values, every layer): its whole reserved budget,
    /// allocated or not, so that an engine's size does not change as it serves; what is
    /// allocated when it was not reserved.
    pub fn device_bytes(&self) -> u64 {
        let state = self.lock();
        let per_slot = state.kv_heads * state.head_dim * state.dtype.size_in_bytes();
        let slots = state.limit.unwrap_or(0).max(state.capacity);
        (2 * state.layer_count * slots * per_slot) as u64
    }

    /// `kv_heads` and `head_dim` of one token's keys (or values) in a layer.
    pub fn heads(&self) -> (usize, usize) {
        let state = self.lock();
        (state.kv_heads, state.head_dim)
    }

    /// `(keys, values)` of every layer, `[kv_heads, capacity, head_dim]` each (handles on the
    /// same storage: writes through them land in the slab until it next grows).
    pub fn tensors(&self) -> Vec<(Tensor, Tensor)> {
        self.lock().layers.clone()
    }

    /// Takes `n` free slots, growing the slab (up to its reserved size, if any); more than a
    /// reserved slab has free is an error.
    pub(crate) fn take(&self, n: usize) -> candle_core::Result<Vec<u32>> {
        let mut state = self.lock();
        if state.free.len() < n {
            if let Some(limit) = state.limit.filter(|_| state.available() < n) {
                candle_core::bail!(
                    "the KV cache is full: {n} slots asked, {} free of {limit}",
                    state.available(),
                );
            }
            let needed = state.capacity + n - state.free.len();
            let doubled = needed.max(state.capacity * 2).max(MIN_SLOTS);
            let capacity = state.limit.map_or(doubled, |l| doubled.min(l));
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

#[cfg(test)]
#[path = "kv_slab_tests.rs"]
mod tests;
