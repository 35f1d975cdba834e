//! Decode steps replayed as CUDA graphs. A pass whose sequences all decode one token runs over
//! fixed device buffers sized by a bucket — the batch rounded up to a power of two (at most
//! [`MAX_BATCH`]), the keys to a multiple of 128 (a power of two past 1 024) — and is captured
//! once per bucket once it has been used a few times ([`CAPTURE_AT_RUN`]; the runs before are
//! eager, the last of them filling candle's cache of kernel parameters for the capture), then
//! replayed: one launch instead of ~30 a layer. Padding rows repeat row
//! 0 (same token, slot and cache: they write the same bytes to the same slot); padding keys are
//! masked, so a row's result is its result alone.
//!
//! Off on the CPU, with `WC_CUDA_GRAPHS=0`, and for good once a capture fails (the pass then
//! runs as before). [`GraphMode::Eager`] runs the bucketed path without capturing (the CPU tests
//! use it to hold the padding to the unpadded results).

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use super::attention::padding_mask;
use super::kv_cache::{KvCache, TokenCache};
use super::kv_pass::KvPass;
use super::kv_slab::KvSlab;
use super::packing::{PackingOrder, Span};

/// The largest batch a graph is captured for; larger passes run eagerly.
pub const MAX_BATCH: usize = 128;
/// Largest `batch * keys` a bucket holds (its gather index and masks grow with it).
const MAX_BUCKET_KEYS: usize = 128 * 2048;
/// Buckets kept; the least recently used goes first.
const MAX_BUCKETS: usize = 24;
/// The run of a bucket at which it is captured; the runs before are eager. A capture of an 8B
/// costs tens of eager steps' worth of launches, so a bucket is captured only once it has been
/// used for a while: the attach's warm-up (one pass) and the batch sizes a burst of requests
/// passes through on its way up stay eager.
const CAPTURE_AT_RUN: u32 = 8;

/// How decode passes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphMode {
    /// As any other pass.
    Off,
    /// Over bucketed buffers, never captured.
    Eager,
    /// Over bucketed buffers, captured and replayed.
    Captured,
}

impl GraphMode {
    /// `Captured` on a CUDA device unless `WC_CUDA_GRAPHS=0`; `Off` elsewhere.
    pub fn for_device(device: &Device) -> Self {
        let off = std::env::var("WC_CUDA_GRAPHS").is_ok_and(|v| v == "0" || v == "off");
        match device.is_cuda() && !off {
            true => GraphMode::Captured,
            false => GraphMode::Off,
        }
    }
}

/// What a model's forward pass over a bucket's buffers reads.
pub struct DecodeInputs<'a> {
    /// `[batch]` u32.
    pub ids: &'a Tensor,
    /// `[batch]` u32: each row's position (its cache's length).
    pub positions: &'a Tensor,
    pub kv: &'a KvPass,
    /// Every row a decode, in order.
    pub order: &'a PackingOrder,
    pub spans: &'a [Span],
}

/// A model's forward pass over [`DecodeInputs`]: f32 logits `[batch, vocab]`.
pub type DecodeForward<'a> = dyn Fn(&DecodeInputs<'_>) -> candle_core::Result<Tensor> + 'a;

/// The decode graphs of one model.
pub struct DecodeGraphs {
    mode: Mutex<GraphMode>,
    buckets: Mutex<Buckets>,
    /// The device a graph was captured on, whose graph memory is given back on drop.
    captured_on: Mutex<Option<Device>>,
}

#[derive(Default)]
struct Buckets {
    by_shape: HashMap<(usize, usize), Bucket>,
    /// Steps run through buckets (orders their last use).
    clock: u64,
}

/// One bucket's fixed buffers and, once captured, its graph.
struct Bucket {
    ids: Tensor,
    positions: Tensor,
    /// `[kv_heads, batch, head_dim]` u32.
    scatter: Tensor,
    /// `[batch * keys]` u32.
    gather: Tensor,
    /// `[batch]` u32: each row's length.
    lens: Tensor,
    /// `[1, batch, 1, keys]` per distinct window.
    masks: Vec<(Option<usize>, Option<Tensor>)>,
    /// `[batch, vocab]` f32, written by the graph.
    out: Tensor,
    order: PackingOrder,
    spans: Vec<Span>,
    graph: Option<capture::Graph>,
    /// Passes run eagerly through this bucket.
    eager_runs: u32,
    last_used: u64,
}

/// The shape of one pass's bucket: `(batch, keys)`, or `None` when it is too large.
fn bucket_of(batch: usize, longest: usize) -> Option<(usize, usize)> {
    let batch = batch.next_power_of_two();
    let keys = match longest {
        0..=1024 => longest.div_ceil(128).max(1) * 128,
        _ => longest.next_power_of_two(),
    };
    (batch <= MAX_BATCH && batch * keys <= MAX_BUCKET_KEYS).then_some((batch, keys))
}

/// Device memory a model's buckets and graphs may hold at most, for the fit check: the
/// [`MAX_BUCKETS`] largest buckets a pass can make (by batch), each holding its f32 output
/// `[batch, vocab]`, the working memory its captured pass keeps (the logits in the model's dtype
/// and in f32 before the copy out: the largest tensors of a decode pass) and its index and mask
/// buffers (`[batch, keys]`, four bytes each, at most two).
pub fn reserve_bytes(vocab: usize, dtype_bytes: usize) -> u64 {
    let mut shapes: Vec<(usize, usize)> = (0..=MAX_BATCH.trailing_zeros())
        .map(|b| 1usize << b)
        .flat_map(|batch| {
            let key_buckets = (1..=8)
                .map(|k| k * 128)
                .chain((11..=20).map(|p| 1usize << p));
            key_buckets.filter_map(move |keys| bucket_of(batch, keys))
        })
        .collect();
    shapes.sort_unstable_by(|a, b| b.cmp(a));
    shapes.dedup();
    let per_row = (vocab * (4 + 4 + dtype_bytes)) as u64;
    shapes
        .iter()
        .take(MAX_BUCKETS)
        .map(|&(batch, keys)| batch as u64 * (per_row + 8 * keys as u64))
        .sum()
}

impl DecodeGraphs {
    pub fn new(mode: GraphMode) -> Self {
        Self {
            mode: Mutex::new(mode),
            buckets: Mutex::default(),
            captured_on: Mutex::default(),
        }
    }

    pub fn mode(&self) -> GraphMode {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a pass of one decode per cache (new slots reserved, lengths not advanced), `ids`
    /// their tokens, through its bucket; `None` when the pass does not go through buckets (off,
    /// too large, or a slab that may still grow under a captured graph), and the caller runs it.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        slab: &KvSlab,
        caches: &[&KvCache],
        ids: &[u32],
        windows: &[Option<usize>],
        vocab: usize,
        dtype: DType,
        device: &Device,
        forward: &DecodeForward<'_>,
    ) -> candle_core::Result<Option<Tensor>> {
        let mode = self.mode();
        if mode == GraphMode::Off || (mode == GraphMode::Captured && !slab.is_fixed()) {
            return Ok(None);
        }
        let lens: Vec<usize> = caches.iter().map(|c| c.len() + 1).collect();
        let longest = lens.iter().copied().max().unwrap_or(0);
        let Some((batch, keys)) = bucket_of(caches.len(), longest) else {
            return Ok(None);
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.clock += 1;
        let now = buckets.clock;
        if !buckets.by_shape.contains_key(&(batch, keys)) {
            if buckets.by_shape.len() >= MAX_BUCKETS {
                let oldest = buckets.by_shape.iter().min_by_key(|(_, b)| b.last_used);
                let oldest = *oldest.map(|(shape, _)| shape).expect("a bucket");
                buckets.by_shape.remove(&oldest);
            }
            let (kv_heads, head_dim) = slab.heads();
            let made = Bucket::new(
                batch,
                keys,
                (kv_heads, head_dim),
                windows,
                vocab,
                dtype,
                device,
            )?;
            buckets.by_shape.insert((batch, keys), made);
        }
        let bucket = buckets.by_shape.get_mut(&(batch, keys)).expect("made");
        bucket.last_used = now;
        bucket.fill(caches, ids, &lens, windows, dtype, device)?;
        let kv = KvPass::for_decodes(
            slab,
            bucket.scatter.clone(),
            bucket.gather.clone(),
            bucket.lens.clone(),
            bucket.masks.clone(),
        )?;
        let inputs = DecodeInputs {
            ids: &bucket.ids,
            positions: &bucket.positions,
            kv: &kv,
            order: &bucket.order,
            spans: &bucket.spans,
        };
        if let Some(graph) = &bucket.graph {
            graph.launch()?;
            return Ok(Some(bucket.out.narrow(0, 0, caches.len())?.copy()?));
        }
        bucket.eager_runs += 1;
        let capturing = mode == GraphMode::Captured && bucket.eager_runs >= CAPTURE_AT_RUN;
        // Only the run before a capture keeps its kernels' parameters in candle's cache (for
        // the capture to reuse): that cache is process-wide and never freed.
        let logits = match capturing {
            true => capture::eager_for_capture(device, forward, &inputs)?,
            false => forward(&inputs)?,
        };
        if capturing {
            let started = std::time::Instant::now();
            match capture::capture(device, forward, &inputs, &bucket.out) {
                Ok(graph) => {
                    bucket.graph = Some(graph);
                    *self.captured_on.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(device.clone());
                    tracing::info!(
                        batch,
                        keys,
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        "decode graph captured"
                    );
                }
                Err(e) => {
                    tracing::warn!("decode graphs off for this engine: capturing failed: {e}");
                    *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = GraphMode::Off;
                    buckets.by_shape.clear();
                }
            }
        }
        Ok(Some(logits.narrow(0, 0, caches.len())?))
    }

    /// Buckets made and graphs captured.
    pub fn counts(&self) -> (usize, usize) {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let captured = buckets.by_shape.values().filter(|b| b.graph.is_some());
        (buckets.by_shape.len(), captured.count())
    }
}

impl Drop for DecodeGraphs {
    /// Graphs keep the memory of their passes in the device's graph pool after they are gone:
    /// it goes back to the device with them, so memory after a detach is where it was.
    fn drop(&mut self) {
        self.buckets
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .by_shape
            .clear();
        if let Some(device) = self
            .captured_on
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
        {
            capture::trim(device);
        }
    }
}

impl Bucket {
    fn new(
        batch: usize,
        keys: usize,
        (kv_heads, head_dim): (usize, usize),
        windows: &[Option<usize>],
        vocab: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let mut masks: Vec<(Option<usize>, Option<Tensor>)> = Vec::new();
        for &window in windows {
            if masks.iter().all(|(w, _)| *w != window) {
                let mask = Tensor::zeros((1, batch, 1, keys), dtype, device)?;
                masks.push((window, Some(mask)));
            }
        }
        Ok(Self {
            ids: Tensor::zeros(batch, DType::U32, device)?,
            positions: Tensor::zeros(batch, DType::U32, device)?,
            scatter: Tensor::zeros((kv_heads, batch, head_dim), DType::U32, device)?,
            gather: Tensor::zeros(batch * keys, DType::U32, device)?,
            lens: Tensor::zeros(batch, DType::U32, device)?,
            masks,
            out: Tensor::zeros((batch, vocab), DType::F32, device)?,
            order: PackingOrder {
                order: (0..batch).collect(),
                decode_count: batch,
            },
            spans: (0..batch)
                .map(|offset| Span {
                    offset,
                    len: 1,
                    past: 0,
                })
                .collect(),
            graph: None,
            eager_runs: 0,
            last_used: 0,
        })
    }

    /// Writes this pass's rows into the buffers; rows past the pass repeat row 0.
    fn fill(
        &self,
        caches: &[&KvCache],
        ids: &[u32],
        lens: &[usize],
        windows: &[Option<usize>],
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<()> {
        let (batch, keys) = (self.ids.dim(0)?, self.gather.dim(0)? / self.ids.dim(0)?);
        let row = |r: usize| if r < caches.len() { r } else { 0 };
        let ids: Vec<u32> = (0..batch).map(|r| ids[row(r)]).collect();
        let positions: Vec<u32> = (0..batch).map(|r| caches[row(r)].len() as u32).collect();
        let slots: Vec<u32> = (0..batch)
            .map(|r| {
                let c = caches[row(r)];
                c.slots(c.len(), c.len() + 1)[0]
            })
            .collect();
        let mut gather = Vec::with_capacity(batch * keys);
        for r in 0..batch {
            let cached = caches[row(r)].slots(0, lens[row(r)]);
            gather.extend_from_slice(cached);
            gather.extend(std::iter::repeat_n(cached[0], keys - cached.len()));
        }
        let padded_lens: Vec<usize> = (0..batch).map(|r| lens[row(r)]).collect();
        let (kv_heads, _, head_dim) = self.scatter.dims3()?;
        let put = |buffer: &Tensor, value: Tensor| buffer.slice_set(&value, 0, 0);
        put(&self.ids, Tensor::from_vec(ids, batch, device)?)?;
        put(&self.positions, Tensor::from_vec(positions, batch, device)?)?;
        let slots = Tensor::from_vec(slots, (1, batch, 1), device)?;
        put(
            &self.scatter,
            slots
                .broadcast_as((kv_heads, batch, head_dim))?
                .contiguous()?,
        )?;
        put(
            &self.gather,
            Tensor::from_vec(gather, batch * keys, device)?,
        )?;
        let lens: Vec<u32> = padded_lens.iter().map(|&l| l as u32).collect();
        put(&self.lens, Tensor::from_vec(lens, batch, device)?)?;
        for (window, mask) in &self.masks {
            debug_assert!(windows.contains(window));
            if let Some(mask) = mask {
                let values = padding_mask(&padded_lens, keys, *window, device)?
                    .reshape((1, batch, 1, keys))?
                    .to_dtype(dtype)?;
                mask.slice_set(&values, 0, 0)?;
            }
        }
        Ok(())
    }
}

mod capture;

#[cfg(test)]
mod tests;
