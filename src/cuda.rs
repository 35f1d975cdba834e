//! CUDA-only helpers (feature `cuda`): device count and free/total device memory from the driver.

use candle_core::cuda_backend::cudarc::driver::{result, CudaContext};
use candle_core::CudaDevice;

/// Number of CUDA devices the driver sees.
pub fn device_count() -> Result<usize, String> {
    CudaContext::device_count()
        .map(|n| n as usize)
        .map_err(|e| e.to_string())
}

/// `(total, free)` bytes of the device behind `device`, from `cuMemGetInfo`.
pub fn memory_info(device: &CudaDevice) -> Result<(u64, u64), String> {
    device
        .cuda_stream()
        .context()
        .bind_to_thread()
        .map_err(|e| e.to_string())?;
    let (free, total) = result::mem_get_info().map_err(|e| e.to_string())?;
    Ok((total as u64, free as u64))
}
