//! The key/value cache of one sequence, for every family: the slots its tokens occupy in its
//! model's [`KvSlab`] (position `i` in `slots[i]`), and its length (the position its next token
//! gets). Dropping it gives the slots back.
//!
//! The slab holds every sequence's keys and values, so a forward pass writes the new tokens of
//! all its sequences in one indexed write per layer and reads the decodes' caches in one gather
//! ([`super::kv_pass::KvPass`]).

use super::kv_slab::KvSlab;

/// The slots of one sequence's tokens.
#[derive(Default)]
pub struct KvCache {
    /// The slab the slots are in; `None` before the first pass.
    slab: Option<KvSlab>,
    /// Slot of each position; at least `len` of them.
    slots: Vec<u32>,
    /// Tokens written (positions `0..len`).
    len: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens the cache holds without taking more slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Forgets every token, keeping the slots.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Takes slots in `slab` for `extra` more tokens (the first pass ties the cache to `slab`;
    /// a cache of another slab is an error).
    pub(crate) fn reserve(&mut self, extra: usize, slab: &KvSlab) -> candle_core::Result<()> {
        match &self.slab {
            Some(own) if !own.same(slab) => {
                candle_core::bail!("a KV cache runs only on the model whose slab it uses")
            }
            Some(_) => {}
            None => self.slab = Some(slab.clone()),
        }
        let needed = self.len + extra;
        if needed > self.slots.len() {
            let taken = slab.take(needed - self.slots.len())?;
            self.slots.extend(taken);
        }
        Ok(())
    }

    /// Slots of positions `start..end` (within what [`Self::reserve`] took).
    pub(crate) fn slots(&self, start: usize, end: usize) -> &[u32] {
        &self.slots[start..end]
    }

    /// Counts `tokens` more as written, after every layer has written them.
    pub(crate) fn advance(&mut self, tokens: usize) {
        self.len += tokens;
    }
}

impl Drop for KvCache {
    fn drop(&mut self) {
        if let Some(slab) = &self.slab {
            slab.give_back(&self.slots);
        }
    }
}

impl TokenCache for KvCache {
    fn len(&self) -> usize {
        self.len
    }
}

/// What the generation loop needs to know of a cache.
pub trait TokenCache {
    /// Tokens already in the cache: the position the next token gets.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
