//! CUDA-only pieces (feature `cuda`): device queries, pinned staging buffers and the pipelined weight upload.
//!
//! A worker allocates its pinned buffers once, at prewarm. Loading a single-file checkpoint reads
//! its data section with several threads straight into a pinned buffer, chunk by chunk, and
//! queues each tensor's host-to-device copy on the worker's stream as soon as its bytes are in,
//! so reading and DMA overlap. Tensors are built on the copied device memory without another
//! copy; a dtype change runs on the GPU. A buffer keeps the file it holds, so re-attaching a
//! recently used model skips the disk (a host cache in pinned memory, LRU over the buffers).
//!
//! Tensors are placed from the file's header as [`parse_header`] checked it (every tensor inside
//! the data section, its length its shape times its dtype's size), and a buffer is keyed by the
//! file's identity ([`FileKey`]) and kept only once the load that filled it has succeeded.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use candle_core::cuda_backend::cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaSlice, DevicePtrMut, DeviceRepr, PinnedHostSlice,
};
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, DType, Storage, Tensor};
use half::{bf16, f16};

use crate::checkpoint::{open_regular, parse_header, SafetensorsHeader, TensorHeader};
use crate::error::LoadError;
use crate::host_cache::FileKey;

/// Number of CUDA devices the driver sees.
pub fn device_count() -> Result<usize, String> {
    CudaContext::device_count()
        .map(|n| n as usize)
        .map_err(|e| e.to_string())
}

/// The device's stream-ordered memory pool, which candle allocates from (`cuMemAllocAsync`).
fn memory_pool(device: &CudaDevice) -> Result<sys::CUmemoryPool, String> {
    let stream = device.cuda_stream();
    let context = stream.context();
    context.bind_to_thread().map_err(|e| e.to_string())?;
    let mut pool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid out-pointer and the device handle comes from a live context.
    let status = unsafe { sys::cuDeviceGetMemPool(&mut pool, context.cu_device()) };
    if status != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("cuDeviceGetMemPool: {status:?}"));
    }
    Ok(pool)
}

fn pool_attribute(
    pool: sys::CUmemoryPool,
    attribute: sys::CUmemPool_attribute,
) -> Result<u64, String> {
    let mut value = 0u64;
    // SAFETY: these attributes are 64-bit values and `value` is a valid out-pointer.
    let status =
        unsafe { sys::cuMemPoolGetAttribute(pool, attribute, &mut value as *mut u64 as *mut _) };
    if status != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("cuMemPoolGetAttribute({attribute:?}): {status:?}"));
    }
    Ok(value)
}

/// What the device's stream-ordered memory pool holds: `reserved` bytes mapped (in use or kept
/// for the next allocation), of which `used` are allocated now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolUsage {
    pub reserved: u64,
    pub used: u64,
}

/// The memory the device's pool holds (the pool is the device's, shared by every context and
/// stream of this process on that device).
pub fn pool_usage(device: &CudaDevice) -> Result<PoolUsage, String> {
    let stream = device.cuda_stream();
    stream.synchronize().map_err(|e| e.to_string())?;
    let pool = memory_pool(device)?;
    use sys::CUmemPool_attribute::{
        CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT as RESERVED, CU_MEMPOOL_ATTR_USED_MEM_CURRENT as USED,
    };
    Ok(PoolUsage {
        reserved: pool_attribute(pool, RESERVED)?,
        used: pool_attribute(pool, USED)?,
    })
}

/// Makes the worker's memory pool keep freed memory mapped instead of returning it to the
/// driver at every synchronization (its default), so that the next attach allocates from warm
/// memory instead of mapping fresh pages for every tensor.
pub fn keep_pool_memory(device: &CudaDevice) -> Result<(), LoadError> {
    let pool = memory_pool(device).map_err(driver)?;
    let mut threshold = u64::MAX;
    // SAFETY: the release threshold is a 64-bit value and `threshold` outlives the call.
    let status = unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut _,
        )
    };
    if status != sys::CUresult::CUDA_SUCCESS {
        return Err(driver(format!("cuMemPoolSetAttribute: {status:?}")));
    }
    Ok(())
}

/// `(total, free)` bytes of the device behind `device`, after the worker's queued frees have
/// run. Free counts what `cuMemGetInfo` reports plus the memory the worker's pool holds mapped
/// but unused (freed by a detach and kept for the next attach; see [`keep_pool_memory`]).
pub fn memory_info(device: &CudaDevice) -> Result<(u64, u64), String> {
    let pool = pool_usage(device)?;
    let held_unused = pool.reserved.saturating_sub(pool.used);
    let (free, total) = device
        .cuda_stream()
        .context()
        .mem_get_info()
        .map_err(|e| e.to_string())?;
    if total == 0 {
        return Err("cuMemGetInfo reported a device of 0 bytes".into());
    }
    Ok((total as u64, free as u64 + held_unused))
}

fn driver(e: impl std::fmt::Display) -> LoadError {
    LoadError::Device(e.to_string())
}

struct Buffer {
    memory: PinnedHostSlice<u8>,
    /// The file whose data section the buffer holds, with its checked header.
    holds: Option<(FileKey, Arc<SafetensorsHeader>)>,
    last_used: u64,
}

/// A buffer filled by an upload, to be kept as that file's cache entry once the load succeeds
/// ([`StagingPool::keep`]).
pub struct PinnedEntry {
    index: usize,
    key: FileKey,
    header: Arc<SafetensorsHeader>,
}

/// A worker's pinned host buffers: staging for uploads, and a cache of the files they hold.
pub struct StagingPool {
    buffers: Vec<Buffer>,
    buffer_bytes: usize,
    clock: u64,
    /// Whether buffers keep the files they held for the next attach (the host cache is on).
    keep_files: bool,
}

impl StagingPool {
    /// Allocates `count` pinned buffers of `buffer_bytes` each.
    pub fn new(
        device: &CudaDevice,
        buffer_bytes: usize,
        count: usize,
        keep_files: bool,
    ) -> Result<Self, LoadError> {
        let context = device.cuda_stream().context().clone();
        let buffers = (0..count)
            .map(|_| {
                // SAFETY: the memory is only read after a file has been written into it.
                let memory = unsafe { context.alloc_pinned_with_flags::<u8>(buffer_bytes, 0) }
                    .map_err(driver)?;
                Ok(Buffer {
                    memory,
                    holds: None,
                    last_used: 0,
                })
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        Ok(Self {
            buffers,
            buffer_bytes,
            clock: 0,
            keep_files,
        })
    }

    /// Total pinned bytes held.
    pub fn bytes(&self) -> u64 {
        (self.buffers.len() * self.buffer_bytes) as u64
    }

    /// The buffer holding the file `key` and its header (a cache hit).
    fn lookup(&mut self, key: &FileKey) -> Option<(usize, Arc<SafetensorsHeader>)> {
        if !self.keep_files {
            return None;
        }
        self.clock += 1;
        let index = self
            .buffers
            .iter()
            .position(|b| b.holds.as_ref().is_some_and(|(k, _)| k == key))?;
        self.buffers[index].last_used = self.clock;
        let header = self.buffers[index].holds.as_ref()?.1.clone();
        Some((index, header))
    }

    /// The least recently used buffer (empty ones first), emptied for a new file.
    fn take_lru(&mut self) -> Option<usize> {
        self.clock += 1;
        let index = (0..self.buffers.len())
            .min_by_key(|&i| (self.buffers[i].holds.is_some(), self.buffers[i].last_used))?;
        self.buffers[index].holds = None;
        self.buffers[index].last_used = self.clock;
        Some(index)
    }

    /// Keeps the file an upload put in a buffer, after the load that used it succeeded.
    pub fn keep(&mut self, entry: PinnedEntry) {
        if self.keep_files {
            if let Some(buffer) = self.buffers.get_mut(entry.index) {
                buffer.holds = Some((entry.key, entry.header));
            }
        }
    }
}

/// Copies (and dtype conversions) queued on a worker's stream and not yet finished. The pinned
/// buffer they read stays untouched until they are: a worker loads one model at a time and waits
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
    /// The file's bytes were already in pinned memory.
    pub from_host_cache: bool,
    /// When the last byte was in host memory (monotonic ns).
    pub read_done_ns: u64,
    /// Bytes copied to the device.
    pub bytes: u64,
    /// The buffer's cache entry, for [`StagingPool::keep`] once the load has succeeded.
    pub entry: PinnedEntry,
}

const CHUNK: usize = 8 << 20;

/// Pinned uploads finished in this process, and how many of them came from the host cache.
static PINNED_UPLOADS: AtomicU64 = AtomicU64::new(0);
static PINNED_HITS: AtomicU64 = AtomicU64::new(0);

/// `(uploads, host-cache hits)` of the pinned path in this process so far (for tests and
/// reports: which path an attach took).
pub fn pinned_upload_counts() -> (u64, u64) {
    (
        PINNED_UPLOADS.load(Ordering::SeqCst),
        PINNED_HITS.load(Ordering::SeqCst),
    )
}

/// Test hook (see [`fail_next_read_at`]): data-section offset at which the next pinned read
/// from disk fails; `u64::MAX` for none.
static FAIL_READ_AT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Test hook: the next pinned read from disk fails with an I/O error once its contiguous read
/// prefix has reached `offset` bytes of the data section, after the copies of the tensors
/// within that prefix have been queued (a read error in the middle of an upload, made
/// deterministic). Applies once.
#[doc(hidden)]
pub fn fail_next_read_at(offset: u64) {
    FAIL_READ_AT.store(offset, Ordering::SeqCst);
}

/// Uploads one safetensors file through the pool; `None` when its data does not fit a buffer.
/// The file's header is checked against its length before any data is read.
pub fn upload_file(
    device: &CudaDevice,
    pool: &mut StagingPool,
    path: &Path,
    dtype: DType,
) -> Result<Option<Uploaded>, LoadError> {
    let corrupt = |reason: String| LoadError::CorruptSafetensors {
        path: path.to_path_buf(),
        reason,
    };
    let key = FileKey::of(path)?;
    let (index, header, file, key) = match pool.lookup(&key) {
        Some((index, header)) => (index, header, None, key),
        None => {
            let (mut file, meta) = open_regular(path)?;
            let key = FileKey::from_metadata(path, &meta);
            let header = parse_header(&mut file, meta.len()).map_err(corrupt)?;
            if header.data_len > pool.buffer_bytes as u64 {
                return Ok(None);
            }
            let Some(index) = pool.take_lru() else {
                return Ok(None);
            };
            (index, Arc::new(header), Some(file), key)
        }
    };
    let data_len = header.data_len as usize;
    if data_len > pool.buffer_bytes {
        return Err(corrupt(format!(
            "{data_len} bytes do not fit the staging buffer"
        )));
    }
    let hit = file.is_none();
    let buffer = &mut pool.buffers[index];
    buffer.holds = None;
    let base = buffer.memory.as_mut_slice().map_err(driver)?.as_mut_ptr() as usize;
    let mut copier = Copier::new(device, base, data_len, &header.tensors);
    if let Some(file) = file {
        let read = read_overlapped(&file, base, header.data_start, data_len, |ready| {
            copier.copy_ready(ready)
        });
        if let Err(e) = read {
            // Copies of the tensors read so far still use the buffer: let them finish first.
            let _ = device.cuda_stream().synchronize();
            return Err(match e {
                ReadError::Io(source) => corrupt(format!("cannot read the data: {source}")),
                ReadError::Load(e) => e,
            });
        }
    }
    let read_done_ns = wc_actors::monotonic_ns();
    let copied = copier
        .copy_ready(data_len)
        .and_then(|()| match copier.pending.peek() {
            Some(_) => Err(corrupt("a tensor lies outside the data section".into())),
            None => Ok(()),
        });
    if let Err(e) = copied {
        // Copies queued so far still use the buffer: let them finish first.
        let _ = device.cuda_stream().synchronize();
        return Err(e);
    }
    let mut tensors = HashMap::new();
    for (name, tensor) in copier.done {
        tensors.insert(name, tensor.to_dtype(dtype)?);
    }
    let in_flight = device
        .cuda_stream()
        .record_event(None)
        .map(CopiesInFlight)
        .map_err(driver)?;
    PINNED_UPLOADS.fetch_add(1, Ordering::SeqCst);
    if hit {
        PINNED_HITS.fetch_add(1, Ordering::SeqCst);
    }
    Ok(Some(Uploaded {
        tensors,
        in_flight,
        from_host_cache: hit,
        read_done_ns,
        bytes: data_len as u64,
        entry: PinnedEntry { index, key, header },
    }))
}

/// Why reading into pinned memory stopped.
enum ReadError {
    Io(std::io::Error),
    Load(LoadError),
}

/// Reads `len` bytes at `start` into pinned memory at `base` with several threads, calling
/// `on_ready(bytes)` each time the contiguous prefix read so far grows.
fn read_overlapped(
    file: &std::fs::File,
    base: usize,
    start: u64,
    len: usize,
    mut on_ready: impl FnMut(usize) -> Result<(), LoadError>,
) -> Result<(), ReadError> {
    let chunks = len.div_ceil(CHUNK);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(4)
        .clamp(1, 8);
    let next = AtomicUsize::new(0);
    let (sender, receiver) = mpsc::channel::<Result<usize, std::io::Error>>();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(chunks) {
            let sender = sender.clone();
            let next = &next;
            scope.spawn(move || loop {
                let chunk = next.fetch_add(1, Ordering::SeqCst);
                if chunk >= chunks {
                    break;
                }
                let offset = chunk * CHUNK;
                let size = CHUNK.min(len - offset);
                // SAFETY: each chunk index is taken once, so every thread writes a disjoint
                // range of the pinned buffer, which is at least `len` bytes long.
                let target =
                    unsafe { std::slice::from_raw_parts_mut((base + offset) as *mut u8, size) };
                let result = file
                    .read_exact_at(target, start + offset as u64)
                    .map(|_| chunk);
                if sender.send(result).is_err() {
                    break;
                }
            });
        }
        drop(sender);
        let mut done = vec![false; chunks];
        let mut prefix = 0;
        for message in receiver {
            let chunk = message.map_err(ReadError::Io)?;
            done[chunk] = true;
            while prefix < chunks && done[prefix] {
                prefix += 1;
            }
            let ready = (prefix * CHUNK).min(len);
            on_ready(ready).map_err(ReadError::Load)?;
            let fail_at = FAIL_READ_AT.load(Ordering::SeqCst);
            if ready as u64 >= fail_at
                && FAIL_READ_AT
                    .compare_exchange(fail_at, u64::MAX, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                return Err(ReadError::Io(std::io::Error::other(
                    "injected read failure (test hook)",
                )));
            }
        }
        Ok(())
    })
}

/// Queues host-to-device copies of tensors whose bytes are in pinned memory.
struct Copier<'a> {
    device: &'a CudaDevice,
    base: usize,
    /// Bytes of the buffer at `base` that belong to the file's data section.
    len: usize,
    pending: std::iter::Peekable<std::slice::Iter<'a, TensorHeader>>,
    done: Vec<(String, Tensor)>,
}

impl<'a> Copier<'a> {
    fn new(device: &'a CudaDevice, base: usize, len: usize, headers: &'a [TensorHeader]) -> Self {
        Self {
            device,
            base,
            len,
            pending: headers.iter().peekable(),
            done: Vec::new(),
        }
    }

    /// Copies every pending tensor that ends within the first `ready` bytes (and within the
    /// data section: the header's checks already prove it, this re-checks before the pointer
    /// arithmetic).
    fn copy_ready(&mut self, ready: usize) -> Result<(), LoadError> {
        let ready = ready.min(self.len);
        let end = |h: &TensorHeader| {
            h.data_offset
                .checked_add(h.data_bytes)
                .and_then(|end| usize::try_from(end).ok())
        };
        while let Some(header) = self
            .pending
            .next_if(|h| end(h).is_some_and(|end| end <= ready))
        {
            // SAFETY: `data_offset + data_bytes <= ready <= len`, the buffer's data section;
            // these bytes were fully written before `ready` was reported, and the buffer is not
            // written again until the stream has been synchronized.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (self.base + header.data_offset as usize) as *const u8,
                    header.data_bytes as usize,
                )
            };
            let tensor = match header.dtype {
                safetensors::Dtype::F32 => self.tensor::<f32>(bytes, &header.shape)?,
                safetensors::Dtype::F16 => self.tensor::<f16>(bytes, &header.shape)?,
                safetensors::Dtype::BF16 => self.tensor::<bf16>(bytes, &header.shape)?,
                other => {
                    return Err(LoadError::UnsupportedTensorDtype {
                        name: header.name.clone(),
                        dtype: format!("{other:?}"),
                    })
                }
            };
            self.done.push((header.name.clone(), tensor));
        }
        Ok(())
    }

    /// A device tensor of `T` filled asynchronously from `bytes`.
    fn tensor<T: CudaDType + DeviceRepr>(
        &self,
        bytes: &[u8],
        shape: &[usize],
    ) -> Result<Tensor, LoadError> {
        let stream = self.device.cuda_stream();
        let elements = bytes.len() / std::mem::size_of::<T>();
        if elements != shape.iter().product::<usize>()
            || bytes.len() % std::mem::size_of::<T>() != 0
        {
            return Err(LoadError::Device(format!(
                "{} bytes do not hold a tensor of shape {shape:?}",
                bytes.len()
            )));
        }
        // SAFETY: the whole slice is written by the copy queued right after, on the same stream.
        let mut slice: CudaSlice<T> = unsafe { stream.alloc::<T>(elements) }.map_err(driver)?;
        {
            let (pointer, _record) = slice.device_ptr_mut(&stream);
            // SAFETY: `pointer` has room for `bytes`, and `bytes` stays valid until the sync.
            unsafe { result::memcpy_htod_async(pointer, bytes, stream.cu_stream()) }
                .map_err(driver)?;
        }
        let storage = Storage::Cuda(T::wrap_cuda_slice(slice, self.device.clone()));
        Ok(Tensor::from_storage(
            storage,
            shape.to_vec(),
            BackpropOp::none(),
            false,
        ))
    }
}

/// Best-of-5 host-to-device bandwidth from pinned memory, in GB/s.
pub fn pinned_h2d_bandwidth(index: usize, bytes: usize) -> Result<f64, String> {
    let context = CudaContext::new(index).map_err(|e| e.to_string())?;
    let stream = context.new_stream().map_err(|e| e.to_string())?;
    // SAFETY: only copied from; its contents do not matter for a bandwidth measurement.
    let host =
        unsafe { context.alloc_pinned_with_flags::<u8>(bytes, 0) }.map_err(|e| e.to_string())?;
    let mut target = stream.alloc_zeros::<u8>(bytes).map_err(|e| e.to_string())?;
    let mut best = f64::MAX;
    for _ in 0..5 {
        stream.synchronize().map_err(|e| e.to_string())?;
        let started = Instant::now();
        stream
            .memcpy_htod(&host, &mut target)
            .map_err(|e| e.to_string())?;
        stream.synchronize().map_err(|e| e.to_string())?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(bytes as f64 / best / 1e9)
}

/// For the supervision tests: launches one of candle's own kernels (`affine_f32`) on an address
/// nothing is mapped at and waits for it, which leaves the context with the sticky
/// `CUDA_ERROR_ILLEGAL_ADDRESS`, as a buggy kernel would. Returns the error the wait reported.
pub fn fault_illegal_address(device: &CudaDevice) -> LoadError {
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    let func = match device.get_or_load_func("affine_f32", &candle_kernels::AFFINE) {
        Ok(func) => func,
        Err(e) => return LoadError::Device(e.to_string()),
    };
    let stream = device.cuda_stream();
    let numel: usize = 1 << 20;
    let dims: usize = 1;
    let no_info: u64 = 0;
    let no_input: u64 = 0;
    // Far from anything cudaMalloc hands out: every write faults.
    let invalid: u64 = 0x10;
    let (mul, add) = (1.0f32, 0.0f32);
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(&numel)
        .arg(&dims)
        .arg(&no_info)
        .arg(&no_input)
        .arg(&invalid)
        .arg(&mul)
        .arg(&add);
    // SAFETY: deliberately not: the kernel writes to an invalid device address. It can only
    // corrupt this context, which the fault makes unusable; the worker process is restarted.
    let launched = unsafe { launch.launch(LaunchConfig::for_num_elems(numel as u32)) };
    if let Err(e) = launched {
        return LoadError::Device(e.to_string());
    }
    match stream.synchronize() {
        Ok(()) => LoadError::Device("the injected fault did not fault".into()),
        Err(e) => LoadError::Device(e.to_string()),
    }
}
