//! Device errors read from the driver's codes, and the fault the supervision tests inject.

use candle_core::cuda_backend::cudarc::cublas::result::CublasError;
use candle_core::cuda_backend::cudarc::cublas::sys::cublasStatus_t;
use candle_core::cuda_backend::cudarc::driver::{sys::CUresult, DriverError};
use candle_core::cuda_backend::CudaError;
use candle_core::CudaDevice;

use crate::load::error::{DeviceError, DeviceFault, LoadError};

/// What a driver result code means for the worker.
fn fault_of_code(code: CUresult) -> DeviceFault {
    use CUresult::*;
    match code {
        CUDA_ERROR_OUT_OF_MEMORY => DeviceFault::OutOfMemory,
        // Sticky errors: the context cannot be used again.
        CUDA_ERROR_ILLEGAL_ADDRESS
        | CUDA_ERROR_LAUNCH_FAILED
        | CUDA_ERROR_ILLEGAL_INSTRUCTION
        | CUDA_ERROR_MISALIGNED_ADDRESS
        | CUDA_ERROR_INVALID_ADDRESS_SPACE
        | CUDA_ERROR_INVALID_PC
        | CUDA_ERROR_HARDWARE_STACK_ERROR
        | CUDA_ERROR_ECC_UNCORRECTABLE
        | CUDA_ERROR_ASSERT
        | CUDA_ERROR_LAUNCH_TIMEOUT => DeviceFault::Fatal,
        _ => DeviceFault::Other,
    }
}

fn fault_of_cublas(status: cublasStatus_t) -> DeviceFault {
    match status {
        cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED => DeviceFault::OutOfMemory,
        // A kernel that failed to run: the context is suspect, the worker restarts.
        cublasStatus_t::CUBLAS_STATUS_EXECUTION_FAILED => DeviceFault::Fatal,
        _ => DeviceFault::Other,
    }
}

/// What a candle error means for the worker, from the driver or cuBLAS code it carries.
pub fn fault_of(error: &candle_core::Error) -> DeviceFault {
    match error {
        candle_core::Error::WithBacktrace { inner, .. }
        | candle_core::Error::Context { inner, .. }
        | candle_core::Error::WithPath { inner, .. } => fault_of(inner),
        candle_core::Error::Cuda(source) => {
            if let Some(driver) = source.downcast_ref::<DriverError>() {
                return fault_of_code(driver.0);
            }
            match source.downcast_ref::<CudaError>() {
                Some(CudaError::Cuda(driver)) | Some(CudaError::Load { cuda: driver, .. }) => {
                    fault_of_code(driver.0)
                }
                Some(CudaError::Cublas(CublasError(status))) => fault_of_cublas(*status),
                _ => DeviceFault::Other,
            }
        }
        _ => DeviceFault::Other,
    }
}

/// A driver failure as a load error, classified by its code.
pub(super) fn driver(e: DriverError) -> LoadError {
    LoadError::Device(DeviceError {
        message: e.to_string(),
        fault: fault_of_code(e.0),
    })
}

/// For the supervision tests: launches one of candle's own kernels (`affine_f32`) on an address
/// nothing is mapped at and waits for it, which leaves the context with the sticky
/// `CUDA_ERROR_ILLEGAL_ADDRESS`, as a buggy kernel would. Returns the error the wait reported.
pub fn fault_illegal_address(device: &CudaDevice) -> LoadError {
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    let func = match device.get_or_load_func("affine_f32", &candle_kernels::AFFINE) {
        Ok(func) => func,
        Err(e) => return LoadError::from(e),
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
        return driver(e);
    }
    match stream.synchronize() {
        Ok(()) => LoadError::Device(DeviceError::other("the injected fault did not fault")),
        Err(e) => driver(e),
    }
}
