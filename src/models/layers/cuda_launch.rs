//! What the launchers of our CUDA kernels share (decode attention, fused layers, GEMV): a
//! contiguous view of a tensor's storage, the form every kernel reads its inputs in.

use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, Layout};

/// The elements of `storage` that `layout` covers, or an error naming `what` when they are not
/// contiguous.
pub fn contiguous_view<'a, T: CudaDType>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(storage.as_cuda_slice::<T>()?.slice(start..end)),
        None => candle_core::bail!("{what} is not contiguous"),
    }
}
