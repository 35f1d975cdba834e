//! Device memory: the driver's counts, the stream-ordered pool candle allocates from, and the pinned host-to-device bandwidth.

use std::time::Instant;

use candle_core::cuda_backend::cudarc::driver::{sys, CudaContext, DriverError};
use candle_core::CudaDevice;

use super::fault::driver;
use crate::load::error::{DeviceError, LoadError};

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
    let pool = memory_pool(device).map_err(|e| LoadError::Device(DeviceError::other(e)))?;
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
        return Err(driver(DriverError(status)));
    }
    Ok(())
}

/// Turns off cudarc's cross-stream event tracking for everything `device` allocates from now on.
/// A worker runs all of its device work on its own stream and no device buffer crosses to
/// another stream (the host cache shared by workers is host memory, copied under the pool's
/// lock), so the tracking is pure host cost: an event recorded for every buffer a kernel reads
/// or writes and a stream wait for every one written, on the launching thread, which is what
/// bounds a small model's decode. `WC_CUDA_EVENT_TRACKING=1` keeps it on (for comparison).
pub fn single_stream(device: &CudaDevice) {
    if std::env::var("WC_CUDA_EVENT_TRACKING").is_ok_and(|v| v == "1") {
        return;
    }
    // SAFETY: see above: every buffer this device allocates is used on its own stream only.
    unsafe { device.disable_event_tracking() };
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

/// Registers host memory with the driver (`cuMemHostRegister`, portable: every context may DMA
/// from it), in `device`'s context: what the shared host cache's background pinning runs per
/// slab.
pub fn host_registrar(
    device: &CudaDevice,
) -> impl Fn(*mut u8, usize) -> Result<(), String> + Send + 'static {
    let context = device.cuda_stream().context().clone();
    move |pointer, len| {
        context.bind_to_thread().map_err(|e| e.to_string())?;
        // SAFETY: `pointer..pointer + len` is a live mapping owned by the caller, which stays
        // mapped while registered.
        let status = unsafe {
            sys::cuMemHostRegister_v2(
                pointer.cast(),
                len,
                sys::CU_MEMHOSTREGISTER_PORTABLE as std::ffi::c_uint,
            )
        };
        match status {
            sys::CUresult::CUDA_SUCCESS => Ok(()),
            other => Err(format!("cuMemHostRegister: {other:?}")),
        }
    }
}
