//! Uploads a checkpoint of any size and any number of shards through pinned memory.
//!
//! Each file's data section is read in chunks by several threads, straight into pinned blocks:
//! into host-cache blocks when the cache can keep the file (so the next attach skips the disk),
//! else through the ring of staging blocks, each block reused as soon as the copies that read
//! it are done. Every chunk's pieces of tensors are copied to the device as soon as the chunk
//! lands, so reading and DMA overlap; a tensor whose last piece is queued is converted to the
//! target dtype on the GPU right then (no conversion when the dtypes match). A file the host
//! cache holds is copied from its blocks without touching the disk.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use candle_core::cuda_backend::cudarc::driver::CudaEvent;
use candle_core::{CudaDevice, DType, Tensor};

use super::copy_sink::CopySink;
use super::fault::driver;
use super::fused_placement::FusedPlacement;
use super::pinned::{CacheInserts, PinnedPool, BLOCK_BYTES};
use crate::load::chunks::{BlockMemory, ChunkSink, ChunkedRead, ReadFailure, RingSlots, Slots};
use crate::load::error::{DeviceError, LoadError};
use crate::load::safetensors::InspectedFile;
use crate::load::safetensors::SafetensorsHeader;
use crate::load::shared_cache::{CacheAction, CachePlan, SharedRegion};
use crate::load::weights::FusedGroup;

/// Most reader threads per upload.
const MAX_READERS: usize = 16;

/// Copies (and dtype conversions) queued on a worker's stream and not yet finished. The pinned
/// blocks they read stay untouched until they are: a worker loads one model at a time and waits
/// on this before its load returns.
pub struct CopiesInFlight(CudaEvent);

impl CopiesInFlight {
    /// Blocks until the copies are done.
    pub fn wait(self) -> Result<(), LoadError> {
        self.0.synchronize().map_err(driver)
    }
}

/// What an upload did.
pub struct Uploaded {
    pub tensors: HashMap<String, Tensor>,
    /// The copies, still running.
    pub in_flight: CopiesInFlight,
    /// When the last byte was in host memory (monotonic ns).
    pub read_done_ns: u64,
    /// Bytes copied to the device.
    pub bytes: u64,
    /// Of those, bytes that came from the host cache (the rest came from the file system).
    pub cached_bytes: u64,
}

impl Uploaded {
    /// Every file came from the host cache.
    pub fn from_host_cache(&self) -> bool {
        self.cached_bytes == self.bytes
    }
}

/// Uploads every weight file of a checkpoint as `dtype`. Files read into host-cache blocks are
/// recorded in `inserts`, to be kept or given back by [`PinnedPool::finish_load`] (whatever
/// this returns). Returns with the copies queued, not finished.
pub fn upload_checkpoint(
    device: &CudaDevice,
    pool: &mut PinnedPool,
    files: &[InspectedFile],
    dtype: DType,
    inserts: &mut CacheInserts,
    shared: Option<(&SharedRegion, &CachePlan)>,
    fused: &[FusedGroup],
) -> Result<Uploaded, LoadError> {
    let mut upload = Upload {
        device,
        dtype,
        fused: FusedPlacement::new(fused, files, dtype),
        tensors: HashMap::new(),
        in_flight: VecDeque::new(),
        ring: RingSlots::new(&pool.ring),
        bytes: 0,
        cached_bytes: 0,
    };
    let result = files.iter().try_for_each(|file| match shared {
        Some((region, plan)) if upload.shared_file(pool, region, plan, file)? => Ok(()),
        _ => upload.file(pool, file, inserts),
    });
    if let Err(e) = result {
        // Copies queued so far still read pinned blocks: let them finish before anything
        // reuses them (the tensors they fill are freed, in stream order, when dropped).
        let _ = device.cuda_stream().synchronize();
        return Err(e);
    }
    let read_done_ns = wc_actors::monotonic_ns();
    let in_flight = device
        .cuda_stream()
        .record_event(None)
        .map(CopiesInFlight)
        .map_err(driver)?;
    pool.counts.uploads += 1;
    if upload.cached_bytes == upload.bytes {
        pool.counts.hits += 1;
    }
    let mut tensors = upload.tensors;
    tensors.extend(upload.fused.into_tensors());
    Ok(Uploaded {
        tensors,
        in_flight,
        read_done_ns,
        bytes: upload.bytes,
        cached_bytes: upload.cached_bytes,
    })
}

/// One checkpoint's upload in progress.
struct Upload<'a> {
    device: &'a CudaDevice,
    dtype: DType,
    /// Where the members of fused groups go.
    fused: FusedPlacement,
    tensors: HashMap<String, Tensor>,
    /// Staging blocks whose copies are queued, oldest first, with the event that ends them.
    in_flight: VecDeque<(usize, CudaEvent)>,
    ring: RingSlots,
    bytes: u64,
    cached_bytes: u64,
}

impl Upload<'_> {
    fn file(
        &mut self,
        pool: &mut PinnedPool,
        inspected: &InspectedFile,
        inserts: &mut CacheInserts,
    ) -> Result<(), LoadError> {
        let path = inspected.key.path.as_path();
        let corrupt = |reason: String| LoadError::CorruptSafetensors {
            path: path.to_path_buf(),
            reason,
        };
        // The version inspected, from the cache when it holds it; its header is the one
        // inspected, never parsed again.
        let key = &inspected.key;
        if let Some(hit) = pool.cache.as_mut().and_then(|c| c.lookup(key)) {
            return self.copy_cached(&pool.blocks, &hit.header, &hit.blocks, path);
        }
        let (file, current) = inspected.reopen()?;
        let InspectedFile { key, header } = current;
        let fail_read_at = pool.fail_read_at.take();
        let reserved = pool.cache.as_mut().and_then(|c| c.reserve(header.data_len));
        let recycle = reserved.is_none().then_some(&mut self.in_flight);
        let mut sink = CopySink::new(
            self.device,
            &header,
            self.dtype,
            recycle,
            path,
            &mut self.fused,
        )?;
        sink.fail_at = fail_read_at;
        let read = ChunkedRead {
            file: &file,
            start: header.data_start,
            len: header.data_len,
            threads: readers(),
        };
        let slots = match &reserved {
            Some(blocks) => Slots::Fixed(blocks),
            None => Slots::Ring(&self.ring),
        };
        let result = read.run(&pool.blocks, slots, &mut sink);
        let done = sink.done;
        if let Some(blocks) = reserved {
            // Kept or given back when the load ends, whether this file failed or not.
            inserts.0.push((key, header.clone(), blocks));
        }
        result.map_err(|failure| match failure {
            ReadFailure::Io(e) => corrupt(format!("cannot read the data: {e}")),
            ReadFailure::Sink(e) => e,
        })?;
        self.tensors.extend(done);
        self.bytes += header.data_len;
        Ok(())
    }
}

impl Upload<'_> {
    /// Copies a file cached in `blocks` of `memory` to the device.
    fn copy_cached(
        &mut self,
        memory: &dyn BlockMemory,
        header: &SafetensorsHeader,
        blocks: &[usize],
        path: &Path,
    ) -> Result<(), LoadError> {
        let mut sink = CopySink::new(self.device, header, self.dtype, None, path, &mut self.fused)?;
        let mut left = header.data_len;
        for (chunk, &block) in blocks.iter().enumerate() {
            let len = left.min(BLOCK_BYTES as u64) as usize;
            // SAFETY: the block holds this chunk of the file, written by the load that cached
            // it and never written since (cache blocks are written only when reserved for a
            // new file, which cannot take a block of a cached one an attach reads).
            let bytes = unsafe { std::slice::from_raw_parts(memory.block_ptr(block), len) };
            sink.chunk_ready(chunk, block, bytes)?;
            left -= len as u64;
        }
        self.tensors.extend(sink.done);
        self.bytes += header.data_len;
        self.cached_bytes += header.data_len;
        Ok(())
    }

    /// A file as the machine's shared cache plans it: copied from its cached blocks, or read
    /// into its reserved blocks (sealed once read in full, when it is the version planned) and
    /// copied from them. `false` when the plan does not cache it (read through the ring).
    /// While a block's slab is not registered with the driver in this process yet (pinning
    /// runs in the background), the file streams through the staging ring instead: a cached
    /// one copied into ring blocks first, one being filled read into the ring and copied into
    /// its cache blocks beside the DMA.
    fn shared_file(
        &mut self,
        pool: &mut PinnedPool,
        region: &SharedRegion,
        plan: &CachePlan,
        inspected: &InspectedFile,
    ) -> Result<bool, LoadError> {
        let path = inspected.key.path.as_path();
        let fits = |blocks: &[usize], len: u64| {
            blocks.len() as u64 == len.div_ceil(BLOCK_BYTES as u64)
                && blocks.iter().all(|&b| b < region.blocks())
        };
        match plan.action(&inspected.key) {
            CacheAction::Cached(blocks) if fits(blocks, inspected.header.data_len) => {
                match blocks.iter().all(|&b| region.registered(b)) {
                    true => self.copy_cached(region, &inspected.header, blocks, path)?,
                    false => self.copy_staged(pool, region, &inspected.header, blocks, path)?,
                }
                Ok(true)
            }
            CacheAction::Fill(blocks) if fits(blocks, inspected.header.data_len) => {
                let (file, current) = inspected.reopen()?;
                if current.key != inspected.key {
                    // Changed since the plan: not this entry's bytes.
                    return Ok(false);
                }
                let header = current.header;
                let pinned = blocks.iter().all(|&b| region.registered(b));
                let recycle = (!pinned).then_some(&mut self.in_flight);
                let mut sink = CopySink::new(
                    self.device,
                    &header,
                    self.dtype,
                    recycle,
                    path,
                    &mut self.fused,
                )?;
                sink.fail_at = pool.fail_read_at.take();
                let read = ChunkedRead {
                    file: &file,
                    start: header.data_start,
                    len: header.data_len,
                    threads: readers(),
                };
                let result = match pinned {
                    true => read.run(region, Slots::Fixed(blocks), &mut sink),
                    false => {
                        let mut tee = TeeSink {
                            inner: &mut sink,
                            region,
                            blocks,
                        };
                        read.run(&pool.blocks, Slots::Ring(&self.ring), &mut tee)
                    }
                };
                result.map_err(|failure| match failure {
                    ReadFailure::Io(e) => LoadError::CorruptSafetensors {
                        path: path.to_path_buf(),
                        reason: format!("cannot read the data: {e}"),
                    },
                    ReadFailure::Sink(e) => e,
                })?;
                region.seal_blocks(blocks, plan.ticket);
                self.tensors.extend(sink.done);
                self.bytes += header.data_len;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl Upload<'_> {
    /// Copies a file cached in `blocks` of the shared region to the device through the
    /// staging ring: each block copied into a free ring block (waiting for the copies of an
    /// earlier one to finish when none is free), and the DMA queued from there.
    fn copy_staged(
        &mut self,
        pool: &PinnedPool,
        region: &SharedRegion,
        header: &SafetensorsHeader,
        blocks: &[usize],
        path: &Path,
    ) -> Result<(), LoadError> {
        let in_flight = Some(&mut self.in_flight);
        let mut sink = CopySink::new(
            self.device,
            header,
            self.dtype,
            in_flight,
            path,
            &mut self.fused,
        )?;
        let mut left = header.data_len;
        for (chunk, &block) in blocks.iter().enumerate() {
            let len = left.min(BLOCK_BYTES as u64) as usize;
            let staging = loop {
                if let Some(free) = self.ring.take() {
                    break free;
                }
                let done = sink.wait_for_blocks()?;
                if done.is_empty() {
                    return Err(LoadError::Device(DeviceError::other(
                        "the staging ring has no block free and none in flight",
                    )));
                }
                done.into_iter().for_each(|b| self.ring.release(b));
            };
            // SAFETY: the cached block holds this chunk (an entry this attach reads, which no
            // writer touches until it ends), and the staging block is this upload's until the
            // copies queued from it are done.
            let bytes = unsafe {
                let target = pool.blocks.block_ptr(staging);
                std::ptr::copy_nonoverlapping(region.block_ptr(block), target, len);
                std::slice::from_raw_parts(target, len)
            };
            sink.chunk_ready(chunk, staging, bytes)?;
            left -= len as u64;
        }
        self.tensors.extend(sink.done);
        self.bytes += header.data_len;
        self.cached_bytes += header.data_len;
        Ok(())
    }
}

/// Hands landed chunks to a [`CopySink`] and copies each into its block of the shared cache
/// (a file filled while its blocks are not registered: read through the ring).
struct TeeSink<'a, 'b> {
    inner: &'b mut CopySink<'a>,
    region: &'b SharedRegion,
    blocks: &'b [usize],
}

impl ChunkSink<LoadError> for TeeSink<'_, '_> {
    fn chunk_ready(&mut self, chunk: usize, block: usize, bytes: &[u8]) -> Result<(), LoadError> {
        let target = self.blocks.get(chunk).copied().ok_or_else(|| {
            LoadError::Device(DeviceError::other("a chunk beyond the blocks reserved"))
        })?;
        // SAFETY: the reserved block is this attach's alone, and `bytes` is at most a block.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.region.block_ptr(target),
                bytes.len(),
            )
        };
        self.inner.chunk_ready(chunk, block, bytes)
    }

    fn wait_for_blocks(&mut self) -> Result<Vec<usize>, LoadError> {
        self.inner.wait_for_blocks()
    }
}

/// Reader threads for one file.
fn readers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(4)
        .min(MAX_READERS)
}
