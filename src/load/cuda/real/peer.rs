//! Device-to-device copies between workers' GPUs in this process (a peer clone): the link
//! between two GPUs as the driver reports it, peer access enabled once per pair, and a tensor
//! copied from another worker's device with `cuMemcpyPeerAsync` (`cuMemcpyDtoDAsync` within one
//! GPU) on the target's stream, never through the host.

use candle_core::cuda_backend::cudarc::driver::{
    sys, CudaContext, CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr,
};
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, DType, Storage, Tensor};
use half::{bf16, f16};

use super::fault::driver;
use crate::load::cuda::P2pLink;
use crate::load::error::{DeviceError, LoadError};

fn check(status: sys::CUresult, what: &str) -> Result<(), String> {
    match status {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        other => Err(format!("{what}: {other:?}")),
    }
}

/// The link from GPU `from` to GPU `to`: peer access over NVLink (native atomics between the
/// two), over PCIe, or none (a copy would be staged through the host).
pub fn p2p_link(from: usize, to: usize) -> Result<P2pLink, String> {
    if from == to {
        return Ok(P2pLink::SameDevice);
    }
    // SAFETY: plain driver queries with valid out-pointers; `cuInit` may be called repeatedly.
    unsafe {
        check(sys::cuInit(0), "cuInit")?;
        let (mut a, mut b) = (0, 0);
        check(sys::cuDeviceGet(&mut a, from as i32), "cuDeviceGet")?;
        check(sys::cuDeviceGet(&mut b, to as i32), "cuDeviceGet")?;
        let attribute = |attribute| -> Result<i32, String> {
            let mut value = 0;
            check(
                sys::cuDeviceGetP2PAttribute(&mut value, attribute, a, b),
                "cuDeviceGetP2PAttribute",
            )?;
            Ok(value)
        };
        use sys::CUdevice_P2PAttribute::{
            CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED as ACCESS,
            CU_DEVICE_P2P_ATTRIBUTE_NATIVE_ATOMIC_SUPPORTED as ATOMICS,
        };
        Ok(match (attribute(ACCESS)?, attribute(ATOMICS)?) {
            (0, _) => P2pLink::None,
            (_, 0) => P2pLink::Pcie,
            _ => P2pLink::Nvlink,
        })
    }
}

/// Lets kernels and copies of `device`'s context reach `peer`'s memory directly, when the
/// driver says the two can (`cuDeviceCanAccessPeer`); already enabled is fine. Returns whether
/// access is on.
pub fn enable_peer_access(device: &CudaDevice, peer: &CudaDevice) -> Result<bool, LoadError> {
    let (my_stream, their_stream) = (device.cuda_stream(), peer.cuda_stream());
    let (mine, theirs): (&CudaContext, &CudaContext) =
        (my_stream.context(), their_stream.context());
    if mine.cu_device() == theirs.cu_device() {
        return Ok(true);
    }
    let failed = |e: String| LoadError::Device(DeviceError::other(e));
    mine.bind_to_thread().map_err(driver)?;
    let mut can = 0;
    // SAFETY: a driver query with a valid out-pointer, then a call on this thread's context.
    unsafe {
        check(
            sys::cuDeviceCanAccessPeer(&mut can, mine.cu_device(), theirs.cu_device()),
            "cuDeviceCanAccessPeer",
        )
        .map_err(failed)?;
        if can == 0 {
            return Ok(false);
        }
        match sys::cuCtxEnablePeerAccess(theirs.cu_ctx(), 0) {
            sys::CUresult::CUDA_SUCCESS | sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => {
                Ok(true)
            }
            other => Err(failed(format!("cuCtxEnablePeerAccess: {other:?}"))),
        }
    }
}

/// A copy of `source` (a contiguous tensor on another worker's GPU, or on this one) made on
/// `device` device-to-device, queued on `device`'s stream (synchronize before relying on it).
/// The source is only read: an engine serving from it keeps running.
pub fn copy_from_peer(device: &CudaDevice, source: &Tensor) -> Result<Tensor, LoadError> {
    match source.dtype() {
        DType::F32 => copy_as::<f32>(device, source),
        DType::F16 => copy_as::<f16>(device, source),
        DType::BF16 => copy_as::<bf16>(device, source),
        other => Err(LoadError::Device(DeviceError::other(format!(
            "a peer copy of a {other:?} tensor is not supported"
        )))),
    }
}

fn copy_as<T: CudaDType + DeviceRepr>(
    device: &CudaDevice,
    source: &Tensor,
) -> Result<Tensor, LoadError> {
    let other = |m: String| LoadError::Device(DeviceError::other(m));
    let (storage, layout) = source.storage_and_layout();
    let Storage::Cuda(from) = &*storage else {
        return Err(other("the peer's tensor is not on a GPU".into()));
    };
    if !layout.is_contiguous() {
        return Err(other("the peer's tensor is not contiguous".into()));
    }
    let elements = layout.shape().elem_count();
    let offset_bytes = layout.start_offset() * std::mem::size_of::<T>();
    let bytes = elements * std::mem::size_of::<T>();
    let from_slice: &CudaSlice<T> = from.as_cuda_slice::<T>()?;
    let stream = device.cuda_stream();
    let from_stream = from.device.cuda_stream();
    // SAFETY: every byte is written by the copy queued below on the same stream before any
    // kernel reads the tensor.
    let mut slice: CudaSlice<T> = unsafe { stream.alloc::<T>(elements.max(1)) }.map_err(driver)?;
    {
        // The source's weights were complete (its worker synchronized) before it could be
        // planned as a source, and are only read: its pointer is taken on its own stream (an
        // event of another context cannot be recorded on this one, were tracking on).
        let (src, _read) = from_slice.device_ptr(&from_stream);
        let (dst, _write) = slice.device_ptr_mut(&stream);
        let src = src + offset_bytes as u64;
        let (src_ctx, dst_ctx) = (from_stream.context(), stream.context());
        // SAFETY: both ranges lie inside live allocations of `bytes` bytes at least, and the
        // stream is this device's.
        let status = unsafe {
            if src_ctx.cu_device() == dst_ctx.cu_device() {
                sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, stream.cu_stream())
            } else {
                sys::cuMemcpyPeerAsync(
                    dst,
                    dst_ctx.cu_ctx(),
                    src,
                    src_ctx.cu_ctx(),
                    bytes,
                    stream.cu_stream(),
                )
            }
        };
        check(status, "cuMemcpyPeerAsync").map_err(other)?;
    }
    let storage = Storage::Cuda(T::wrap_cuda_slice(slice, device.clone()));
    Ok(Tensor::from_storage(
        storage,
        layout.shape().clone(),
        BackpropOp::none(),
        false,
    ))
}
