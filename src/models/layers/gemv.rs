//! `x Wᵀ` for a few rows of `x` (decode steps of batches up to [`MAX_ROWS`]) by one kernel that
//! reads the weight once at the card's bandwidth (`kernels/gemv.cu`), instead of cuBLAS's GEMM,
//! whose split-K reductions and small-shape choices leave much of a batch-1 step's bandwidth
//! unused. CUDA only, f32/f16/bf16, contiguous, rows 16-byte aligned; `WC_GEMV=1` turns it on
//! (off by default until measured on every card), `WC_GEMV=0` off.
// Without the cuda feature the op is built but never launched.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use candle_core::{DType, Tensor};

/// Most rows of `x` one launch takes.
pub const MAX_ROWS: usize = 8;

/// Whether the kernel computes `x Wᵀ` for `x` `[rows, k]` and `weight` `[n, k]`.
pub fn applies(x: &Tensor, weight: &Tensor) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("WC_GEMV").is_ok_and(|v| v == "1" || v == "on"));
    if !(cfg!(feature = "cuda") && on && x.device().is_cuda()) {
        return false;
    }
    let (Ok((rows, k)), Ok((_, wk))) = (x.dims2(), weight.dims2()) else {
        return false;
    };
    let size = x.dtype().size_in_bytes();
    let aligned = |t: &Tensor| t.is_contiguous() && (t.layout().start_offset() * size) % 16 == 0;
    matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && weight.dtype() == x.dtype()
        && (1..=MAX_ROWS).contains(&rows)
        && k == wk
        && (k * size) % 16 == 0
        && aligned(x)
        && aligned(weight)
}

/// `x Wᵀ` (`[rows, n]`) for `x` `[rows, k]`, `weight` `[n, k]`, where [`applies`] says.
pub fn times_transposed(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op2_no_bwd(weight, &kernel::Gemv)
}

mod kernel {
    //! The kernel as a candle op.
    use candle_core::{CpuStorage, CustomOp2, Layout, Shape};

    pub(super) struct Gemv;

    impl CustomOp2 for Gemv {
        fn name(&self) -> &'static str {
            "gemv"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("the gemv kernel runs on CUDA only")
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            x: &candle_core::CudaStorage,
            x_layout: &Layout,
            w: &candle_core::CudaStorage,
            w_layout: &Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
            super::cuda::launch((x, x_layout), (w, w_layout))
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launching the kernel on the device's stream.
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape};

    use crate::models::layers::cuda_launch::contiguous_view;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/gemv.ptx"));
    const MODULE: &str = "wc_gemv";
    const WARPS_PER_BLOCK: usize = 8;

    pub(super) fn launch(
        (x, x_layout): (&CudaStorage, &Layout),
        (w, w_layout): (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, k) = x_layout.shape().dims2()?;
        let (n, wk) = w_layout.shape().dims2()?;
        if wk != k || rows > super::MAX_ROWS || x.dtype() != w.dtype() {
            candle_core::bail!("gemv: x {x_layout:?} and weight {w_layout:?} do not fit");
        }
        let dev = x.device().clone();
        fn run<T: CudaDType + DeviceRepr>(
            dev: &CudaDevice,
            name: &str,
            (x, x_layout): (&CudaStorage, &Layout),
            (w, w_layout): (&CudaStorage, &Layout),
            (rows, k, n): (usize, usize, usize),
        ) -> candle_core::Result<CudaSlice<T>> {
            let x = contiguous_view::<T>(x, x_layout, "gemv's input")?;
            let w = contiguous_view::<T>(w, w_layout, "gemv's weight")?;
            // SAFETY: every element is written by the kernel before anything reads it.
            let y = unsafe { dev.alloc::<T>(rows * n)? };
            let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
            let mut b = func.builder();
            let ints = [rows as i32, k as i32, n as i32];
            b.arg(&x).arg(&w).arg(&y);
            for int in &ints {
                b.arg(int);
            }
            let cfg = LaunchConfig {
                grid_dim: (n.div_ceil(WARPS_PER_BLOCK) as u32, 1, 1),
                block_dim: ((32 * WARPS_PER_BLOCK) as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments match the kernel's signature; `applies` checked the shapes,
            // contiguity and 16-byte alignment the kernel's vector loads need.
            unsafe { b.launch(cfg) }.w()?;
            Ok(y)
        }
        let dims = (rows, k, n);
        let (x, w) = ((x, x_layout), (w, w_layout));
        let out = match x.0.dtype() {
            DType::F32 => {
                CudaStorage::wrap_cuda_slice(run::<f32>(&dev, "gemv_f32", x, w, dims)?, dev.clone())
            }
            DType::F16 => CudaStorage::wrap_cuda_slice(
                run::<half::f16>(&dev, "gemv_f16", x, w, dims)?,
                dev.clone(),
            ),
            DType::BF16 => CudaStorage::wrap_cuda_slice(
                run::<half::bf16>(&dev, "gemv_bf16", x, w, dims)?,
                dev.clone(),
            ),
            other => candle_core::bail!("gemv: no kernel for {other:?}"),
        };
        Ok((out, Shape::from((rows, n))))
    }
}
