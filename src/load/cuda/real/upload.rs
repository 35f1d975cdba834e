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

use candle_core::cuda_backend::cudarc::driver::{
    result, sys::CUdeviceptr, CudaEvent, CudaSlice, DevicePtrMut, DeviceRepr,
};
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, DType, Storage, Tensor};
use half::{bf16, f16};

use super::fault::driver;
use super::pinned::{CacheInserts, PinnedPool, BLOCK_BYTES};
use crate::load::chunks::{
    segments, BlockMemory, ChunkSink, ChunkedRead, ReadFailure, RingSlots, Slots,
};
use crate::load::error::{DeviceError, LoadError};
use crate::load::safetensors::InspectedFile;
use crate::load::safetensors::{SafetensorsHeader, TensorHeader};

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
) -> Result<Uploaded, LoadError> {
    let mut upload = Upload {
        device,
        dtype,
        tensors: HashMap::new(),
        in_flight: VecDeque::new(),
        ring: RingSlots::new(&pool.ring),
        bytes: 0,
        cached_bytes: 0,
    };
    let result = files
        .iter()
        .try_for_each(|file| upload.file(pool, file, inserts));
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
    Ok(Uploaded {
        tensors: upload.tensors,
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
            let mut sink = CopySink::new(self.device, &hit.header, self.dtype, None, path)?;
            let mut left = hit.header.data_len;
            for (chunk, &block) in hit.blocks.iter().enumerate() {
                let len = left.min(BLOCK_BYTES as u64) as usize;
                // SAFETY: the block holds this chunk of the file, written by the load that
                // cached it and never written since (cache blocks are written only when
                // reserved for a new file, which cannot take a block of a cached one in use).
                let bytes =
                    unsafe { std::slice::from_raw_parts(pool.blocks.block_ptr(block), len) };
                sink.chunk_ready(chunk, block, bytes)?;
                left -= len as u64;
            }
            self.tensors.extend(sink.done);
            self.bytes += hit.header.data_len;
            self.cached_bytes += hit.header.data_len;
            return Ok(());
        }
        let (file, current) = inspected.reopen()?;
        let InspectedFile { key, header } = current;
        let fail_read_at = pool.fail_read_at.take();
        let reserved = pool.cache.as_mut().and_then(|c| c.reserve(header.data_len));
        let recycle = reserved.is_none().then_some(&mut self.in_flight);
        let mut sink = CopySink::new(self.device, &header, self.dtype, recycle, path)?;
        sink.fail_at = fail_read_at;
        let read = ChunkedRead {
            file: &file,
            start: header.data_start,
            len: header.data_len,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(4)
                .min(MAX_READERS),
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

/// A tensor being filled: where its bytes go on the device, and how many are still to come.
struct Filling {
    pointer: CUdeviceptr,
    tensor: Tensor,
    remaining: u64,
}

/// Queues the copies of each landed chunk's pieces of tensors, and converts each tensor to the
/// target dtype once its last piece is queued.
struct CopySink<'a> {
    device: &'a CudaDevice,
    header: &'a SafetensorsHeader,
    dtype: DType,
    path: &'a Path,
    filling: Vec<Option<Filling>>,
    done: Vec<(String, Tensor)>,
    /// With the staging ring: blocks whose copies are queued, to give back when done.
    in_flight: Option<&'a mut VecDeque<(usize, CudaEvent)>>,
    /// Bytes handed over so far (for the read-failure test hook).
    handed: u64,
    /// The read-failure test hook: fail once this many bytes are handed over.
    fail_at: Option<u64>,
}

impl<'a> CopySink<'a> {
    /// Allocates every tensor of the file on the device, in its stored dtype.
    fn new(
        device: &'a CudaDevice,
        header: &'a SafetensorsHeader,
        dtype: DType,
        in_flight: Option<&'a mut VecDeque<(usize, CudaEvent)>>,
        path: &'a Path,
    ) -> Result<Self, LoadError> {
        let filling = header
            .tensors
            .iter()
            .map(|t| allocate(device, t).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        let mut sink = Self {
            device,
            header,
            dtype,
            path,
            filling,
            done: Vec::with_capacity(header.tensors.len()),
            in_flight,
            handed: 0,
            fail_at: None,
        };
        // Tensors without bytes are complete already.
        for index in 0..sink.filling.len() {
            sink.finish_if_full(index)?;
        }
        Ok(sink)
    }

    /// Moves a tensor whose bytes are all queued to `done`, converted to the target dtype.
    fn finish_if_full(&mut self, index: usize) -> Result<(), LoadError> {
        if self.filling[index]
            .as_ref()
            .is_some_and(|f| f.remaining == 0)
        {
            let filled = self.filling[index].take().expect("checked");
            let name = self.header.tensors[index].name.clone();
            self.done.push((name, filled.tensor.to_dtype(self.dtype)?));
        }
        Ok(())
    }
}

impl ChunkSink<LoadError> for CopySink<'_> {
    fn chunk_ready(&mut self, chunk: usize, block: usize, bytes: &[u8]) -> Result<(), LoadError> {
        let stream = self.device.cuda_stream();
        let start = chunk as u64 * BLOCK_BYTES as u64;
        for piece in segments(&self.header.tensors, start, bytes.len()) {
            let filling = self.filling[piece.tensor].as_mut().ok_or_else(|| {
                LoadError::Device(DeviceError::other("a tensor's bytes arrived twice"))
            })?;
            let source = &bytes[piece.chunk_offset..piece.chunk_offset + piece.len];
            // SAFETY: the tensor was allocated with `data_bytes` bytes and the piece lies
            // within them (`segments` cuts pieces inside each tensor); `source` stays valid and
            // unwritten until this stream has run the copy (blocks are reused only after their
            // event, and cache blocks only after a synchronize).
            unsafe {
                result::memcpy_htod_async(
                    filling.pointer + piece.tensor_offset,
                    source,
                    stream.cu_stream(),
                )
            }
            .map_err(driver)?;
            filling.remaining -= piece.len as u64;
            self.finish_if_full(piece.tensor)?;
        }
        if let Some(in_flight) = self.in_flight.as_mut() {
            let event = stream.record_event(None).map_err(driver)?;
            in_flight.push_back((block, event));
        }
        self.handed += bytes.len() as u64;
        if self.fail_at.is_some_and(|at| self.handed >= at) {
            self.fail_at = None;
            return Err(LoadError::Io {
                path: self.path.to_path_buf(),
                source: std::io::Error::other("injected read failure (test hook)"),
            });
        }
        Ok(())
    }

    fn wait_for_blocks(&mut self) -> Result<Vec<usize>, LoadError> {
        let Some(in_flight) = self.in_flight.as_mut() else {
            return Ok(Vec::new());
        };
        let Some((block, event)) = in_flight.pop_front() else {
            return Ok(Vec::new());
        };
        event.synchronize().map_err(driver)?;
        let mut free = vec![block];
        while let Some((_, event)) = in_flight.front() {
            if !event.try_is_complete().map_err(driver)? {
                break;
            }
            free.push(in_flight.pop_front().expect("front exists").0);
        }
        Ok(free)
    }
}

/// Allocates a tensor of `header`'s stored dtype and shape on the device, to be filled by
/// copies queued on the same stream.
fn allocate(device: &CudaDevice, header: &TensorHeader) -> Result<Filling, LoadError> {
    match header.dtype {
        safetensors::Dtype::F32 => allocate_as::<f32>(device, header),
        safetensors::Dtype::F16 => allocate_as::<f16>(device, header),
        safetensors::Dtype::BF16 => allocate_as::<bf16>(device, header),
        other => Err(LoadError::UnsupportedTensorDtype {
            name: header.name.clone(),
            dtype: format!("{other:?}"),
        }),
    }
}

fn allocate_as<T: CudaDType + DeviceRepr>(
    device: &CudaDevice,
    header: &TensorHeader,
) -> Result<Filling, LoadError> {
    let stream = device.cuda_stream();
    let elements = header.elements() as usize;
    if elements as u64 * std::mem::size_of::<T>() as u64 != header.data_bytes {
        return Err(LoadError::Device(DeviceError::other(format!(
            "{} bytes do not hold a tensor of shape {:?}",
            header.data_bytes, header.shape
        ))));
    }
    // SAFETY: every byte is written by the copies queued after this on the same stream before
    // any kernel reads the tensor.
    let mut slice: CudaSlice<T> = unsafe { stream.alloc::<T>(elements.max(1)) }.map_err(driver)?;
    let pointer = {
        let (pointer, _record) = slice.device_ptr_mut(&stream);
        pointer
    };
    let storage = Storage::Cuda(T::wrap_cuda_slice(slice, device.clone()));
    let tensor = Tensor::from_storage(storage, header.shape.clone(), BackpropOp::none(), false);
    Ok(Filling {
        pointer,
        tensor,
        remaining: header.data_bytes,
    })
}
