//! Three fused steps of a Llama-family layer, each one CUDA kernel (`kernels/fused.cu`, compiled
//! to PTX by build.rs) where candle runs two to seven, and candle's own ops elsewhere (CPU, other
//! dtypes, without `WC_FUSED=1`): the residual add with the RMSNorm after it, SiLU × up over the
//! fused gate/up projection, and the split of the fused q/k/v projection with the rotary
//! embedding of q and k. The kernels round where candle's ops round, so outputs do not change.
// Without the cuda feature the ops are built but never launched.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use candle_core::{DType, Tensor, D};

/// Whether weights are stored fused and the fused kernels run on `device`: on CUDA with
/// `WC_FUSED=1`. Off by default until they have been measured and checked against transformers
/// on a GPU (`bench/gpu_graphs.sh`); the CPU never fuses (its matmuls gain nothing from it).
pub fn fused_on(device: &candle_core::Device) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("WC_FUSED").is_ok_and(|v| v == "1" || v == "on"));
    on && device.is_cuda()
}

/// Whether the kernels run for tensors like `x`: [`fused_on`] its device, a float dtype, and
/// not turned off alone by `WC_FUSED_KERNELS=0` (fused weights with candle's ops, for
/// comparisons).
pub fn kernels_apply(x: &Tensor) -> bool {
    // Read once: this is asked several times for every layer of every pass.
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF
        .get_or_init(|| std::env::var("WC_FUSED_KERNELS").is_ok_and(|v| v == "0" || v == "off"));
    cfg!(feature = "cuda")
        && !off
        && fused_on(x.device())
        && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
}

/// RMSNorm as transformers computes it (in f32 for half types), over the last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)
}

/// `(x + delta, rms_norm(x + delta) * weight)` for `x`, `delta` `[rows, cols]`.
pub fn add_rms_norm(
    x: &Tensor,
    delta: &Tensor,
    weight: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    if !kernels_apply(x) || x.rank() != 2 {
        let sum = (x + delta)?;
        let normed = rms_norm(&sum, weight, eps)?;
        return Ok((sum, normed));
    }
    add_rms_norm_kernel(x, delta, weight, eps)
}

/// [`add_rms_norm`] by the kernel, whatever the switches say (CUDA, `[rows, cols]`).
pub fn add_rms_norm_kernel(
    x: &Tensor,
    delta: &Tensor,
    weight: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (rows, cols) = x.dims2()?;
    let op = kernel::Fused::AddRmsNorm { eps: eps as f32 };
    let both = x
        .contiguous()?
        .apply_op3_no_bwd(&delta.contiguous()?, &weight.contiguous()?, &op)?
        .reshape((2, rows, cols))?;
    Ok((both.get(0)?, both.get(1)?))
}

/// `silu(gate) * up` for `gate_up` `[rows, 2 * inter]` (the fused gate/up projection's output,
/// gate first): `[rows, inter]`.
pub fn silu_mul(gate_up: &Tensor) -> candle_core::Result<Tensor> {
    let inter = gate_up.dim(D::Minus1)? / 2;
    if !kernels_apply(gate_up) || gate_up.rank() != 2 {
        let gate = candle_nn::ops::silu(&gate_up.narrow(D::Minus1, 0, inter)?)?;
        return gate * gate_up.narrow(D::Minus1, inter, inter)?;
    }
    silu_mul_kernel(gate_up)
}

/// [`silu_mul`] by the kernel, whatever the switches say (CUDA, `[rows, 2 * inter]`).
pub fn silu_mul_kernel(gate_up: &Tensor) -> candle_core::Result<Tensor> {
    gate_up
        .contiguous()?
        .apply_op1_no_bwd(&kernel::Fused::SiluMul)
}

/// The heads of a fused q/k/v projection.
#[derive(Clone, Copy, Debug)]
pub struct QkvHeads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Splits `qkv` (`[rows, (heads + 2 * kv_heads) * head_dim]`) into contiguous q `[rows, heads,
/// head_dim]`, k and v `[rows, kv_heads, head_dim]`, with the rotary embedding (`cos`, `sin`
/// `[rows, head_dim / 2]`, rotate-half form) applied to q and k when given. `norms` (per-head
/// RMSNorm weights of q and k, with eps) come before the rotation, as Qwen3 has them.
pub fn split_qkv(
    qkv: &Tensor,
    shape: QkvHeads,
    norms: Option<(&Tensor, &Tensor, f64)>,
    rope: Option<(&Tensor, &Tensor)>,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let rows = qkv.dim(0)?;
    let QkvHeads {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    if let (Some((cos, sin)), None, true) = (rope, norms, kernels_apply(qkv)) {
        return split_qkv_kernel(qkv, shape, cos, sin);
    }
    let part = |offset: usize, count: usize| -> candle_core::Result<Tensor> {
        qkv.narrow(1, offset * d, count * d)?
            .contiguous()?
            .reshape((rows, count, d))
    };
    let mut q = part(0, heads)?;
    let mut k = part(heads, kv_heads)?;
    let v = part(heads + kv_heads, kv_heads)?;
    if let Some((q_norm, k_norm, eps)) = norms {
        q = rms_norm(&q, q_norm, eps)?;
        k = rms_norm(&k, k_norm, eps)?;
    }
    if let Some((cos, sin)) = rope {
        let rotate = |x: &Tensor| -> candle_core::Result<Tensor> {
            candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0)?.contiguous()?, cos, sin)?.squeeze(0)
        };
        q = rotate(&q)?;
        k = rotate(&k)?;
    }
    Ok((q, k, v))
}

/// [`split_qkv`] with rotary embeddings and no norms by the kernel, whatever the switches say.
pub fn split_qkv_kernel(
    qkv: &Tensor,
    shape: QkvHeads,
    cos: &Tensor,
    sin: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let rows = qkv.dim(0)?;
    let QkvHeads {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let op = kernel::Fused::RopeSplit { heads, kv_heads };
    let out = qkv
        .contiguous()?
        .apply_op3_no_bwd(&cos.contiguous()?, &sin.contiguous()?, &op)?;
    let (q_len, kv_len) = (rows * heads * d, rows * kv_heads * d);
    Ok((
        out.narrow(0, 0, q_len)?.reshape((rows, heads, d))?,
        out.narrow(0, q_len, kv_len)?.reshape((rows, kv_heads, d))?,
        out.narrow(0, q_len + kv_len, kv_len)?
            .reshape((rows, kv_heads, d))?,
    ))
}

mod kernel {
    //! The kernels as candle ops.
    use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape};

    pub(super) enum Fused {
        AddRmsNorm { eps: f32 },
        SiluMul,
        RopeSplit { heads: usize, kv_heads: usize },
    }

    impl CustomOp1 for Fused {
        fn name(&self) -> &'static str {
            "fused-silu-mul"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("the fused kernels run on CUDA only")
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            gate_up: &candle_core::CudaStorage,
            layout: &Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
            super::cuda::silu_mul(gate_up, layout)
        }
    }

    impl CustomOp3 for Fused {
        fn name(&self) -> &'static str {
            match self {
                Fused::AddRmsNorm { .. } => "fused-add-rms-norm",
                Fused::SiluMul => "fused-silu-mul",
                Fused::RopeSplit { .. } => "fused-rope-split",
            }
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("the fused kernels run on CUDA only")
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            a: &candle_core::CudaStorage,
            a_layout: &Layout,
            b: &candle_core::CudaStorage,
            b_layout: &Layout,
            c: &candle_core::CudaStorage,
            c_layout: &Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
            super::cuda::three((a, a_layout), (b, b_layout), (c, c_layout), self)
        }
    }
}

#[cfg(feature = "cuda")]
#[path = "fused_cuda.rs"]
mod cuda;
