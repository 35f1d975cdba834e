//! Opening candle devices from a `DeviceSpec`, with typed errors for devices this build or machine lacks.

use candle_core::Device;
use wc_actors::{DType, DeviceSpec};

use crate::error::LoadError;

/// Opens `spec` on the calling thread.
pub fn open(spec: &DeviceSpec) -> Result<Device, LoadError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(index) => open_cuda(*index, spec),
    }
}

fn open_cuda(index: usize, spec: &DeviceSpec) -> Result<Device, LoadError> {
    if !crate::cuda::COMPILED {
        return Err(LoadError::CudaNotCompiled(spec.to_string()));
    }
    let unavailable = |reason: String| LoadError::DeviceUnavailable {
        device: spec.to_string(),
        reason,
    };
    let count = crate::cuda::device_count().map_err(unavailable)?;
    if index >= count {
        return Err(unavailable(format!(
            "no such GPU: this machine has {count} CUDA device(s)"
        )));
    }
    let device = Device::new_cuda_with_stream(index).map_err(|e| unavailable(e.to_string()))?;
    if let Device::Cuda(cuda) = &device {
        crate::cuda::single_stream(cuda);
    }
    Ok(device)
}

/// candle's dtype for the runtime's.
pub fn candle_dtype(dtype: DType) -> candle_core::DType {
    match dtype {
        DType::F32 => candle_core::DType::F32,
        DType::F16 => candle_core::DType::F16,
        DType::BF16 => candle_core::DType::BF16,
    }
}

/// Total and available host memory from `/proc/meminfo`, in bytes.
pub fn host_memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}
