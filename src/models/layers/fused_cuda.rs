//! Launching the fused kernels (`kernels/fused.cu`) on the device's stream.
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape};

use super::kernel::Fused;
use crate::models::layers::cuda_launch::contiguous_view;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
const MODULE: &str = "wc_fused";
/// Threads per block of the elementwise kernels.
const THREADS: u32 = 256;

/// A contiguous view of a tensor's storage.
fn view<'a, T: CudaDType>(
    storage: &'a CudaStorage,
    layout: &Layout,
) -> candle_core::Result<CudaView<'a, T>> {
    contiguous_view(storage, layout, "a fused kernel's input")
}

/// Blocks for `work` items, one per thread, capped (the kernels loop over the rest).
fn blocks_for(work: usize) -> u32 {
    (work.div_ceil(THREADS as usize) as u32).clamp(1, 65_535)
}

fn suffix(dtype: DType) -> candle_core::Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => candle_core::bail!("fused kernel: no kernel for {other:?}"),
    })
}

pub(super) fn silu_mul(
    gate_up: &CudaStorage,
    layout: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (rows, cols) = layout.shape().dims2()?;
    let inter = cols / 2;
    let dev = gate_up.device().clone();
    let name = format!("silu_mul_{}", suffix(gate_up.dtype())?);
    fn run<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        name: &str,
        gate_up: &CudaStorage,
        layout: &Layout,
        rows: usize,
        inter: usize,
    ) -> candle_core::Result<CudaSlice<T>> {
        let input = view::<T>(gate_up, layout)?;
        // SAFETY: every element is written by the kernel before anything reads it.
        let out = unsafe { dev.alloc::<T>(rows * inter)? };
        let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        let mut b = func.builder();
        let (rows_i, inter_i) = (rows as i32, inter as i32);
        b.arg(&input).arg(&out).arg(&rows_i).arg(&inter_i);
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(rows * inter), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's signature; it indexes within `rows * 2 *
        // inter` inputs and `rows * inter` outputs.
        unsafe { b.launch(cfg) }.w()?;
        Ok(out)
    }
    let out = match gate_up.dtype() {
        DType::F32 => wrap(run::<f32>(&dev, &name, gate_up, layout, rows, inter)?, &dev),
        DType::F16 => wrap(
            run::<half::f16>(&dev, &name, gate_up, layout, rows, inter)?,
            &dev,
        ),
        DType::BF16 => wrap(
            run::<half::bf16>(&dev, &name, gate_up, layout, rows, inter)?,
            &dev,
        ),
        other => candle_core::bail!("fused kernel: no kernel for {other:?}"),
    };
    Ok((out, Shape::from((rows, inter))))
}

fn wrap<T: CudaDType>(slice: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}

/// The ops with three inputs: add + RMSNorm (`x`, `delta`, `weight`) and the q/k/v split with
/// rotary embeddings (`qkv`, `cos`, `sin`).
pub(super) fn three(
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
    c: (&CudaStorage, &Layout),
    op: &Fused,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = a.0.device().clone();
    if b.0.dtype() != a.0.dtype() || c.0.dtype() != a.0.dtype() {
        candle_core::bail!("fused kernel: inputs of different dtypes");
    }
    macro_rules! as_type {
        ($t:ty) => {
            wrap(run_three::<$t>(&dev, a, b, c, op)?, &dev)
        };
    }
    let out = match a.0.dtype() {
        DType::F32 => as_type!(f32),
        DType::F16 => as_type!(half::f16),
        DType::BF16 => as_type!(half::bf16),
        other => candle_core::bail!("fused kernel: no kernel for {other:?}"),
    };
    // Flat: add + RMSNorm writes the sums then the normed rows; the split writes q, k, v.
    let factor = match op {
        Fused::AddRmsNorm { .. } => 2,
        _ => 1,
    };
    Ok((out, Shape::from(a.1.shape().elem_count() * factor)))
}

fn run_three<T: CudaDType + DeviceRepr>(
    dev: &CudaDevice,
    (a, a_layout): (&CudaStorage, &Layout),
    (b, b_layout): (&CudaStorage, &Layout),
    (c, c_layout): (&CudaStorage, &Layout),
    op: &Fused,
) -> candle_core::Result<CudaSlice<T>> {
    let suffix = suffix(a.dtype())?;
    let (rows, cols) = a_layout.shape().dims2()?;
    let (a, b, c) = (
        view::<T>(a, a_layout)?,
        view::<T>(b, b_layout)?,
        view::<T>(c, c_layout)?,
    );
    match *op {
        Fused::AddRmsNorm { eps } => {
            if b_layout.shape().dims() != [rows, cols] || c_layout.shape().elem_count() != cols {
                candle_core::bail!(
                    "add_rms_norm: x {a_layout:?}, delta {b_layout:?}, weight {c_layout:?}"
                );
            }
            // SAFETY: every element is written by the kernel before anything reads it.
            let out = unsafe { dev.alloc::<T>(2 * rows * cols)? };
            let func =
                dev.get_or_load_custom_func(&format!("add_rms_norm_{suffix}"), MODULE, PTX)?;
            let block_size: i32 = if cols < 1024 { 32 } else { 1024 };
            let mut builder = func.builder();
            let (rows_i, cols_i) = (rows as i32, cols as i32);
            builder.arg(&a).arg(&b).arg(&c).arg(&out);
            builder.arg(&rows_i).arg(&cols_i).arg(&block_size).arg(&eps);
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (block_size as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments match the kernel's signature; one block per row of `cols`.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(out)
        }
        Fused::RopeSplit { heads, kv_heads } => {
            let all = heads + 2 * kv_heads;
            let head_dim = cols / all.max(1);
            let half = head_dim / 2;
            if head_dim * all != cols || head_dim % 2 != 0 {
                candle_core::bail!(
                    "rope_split: {cols} columns are not {all} heads of an even size"
                );
            }
            let cos_ok = b_layout.shape().dims() == [rows, half];
            if !cos_ok || c_layout.shape().dims() != [rows, half] {
                candle_core::bail!(
                    "rope_split: cos {b_layout:?} / sin {c_layout:?} for {rows} rows of {half}"
                );
            }
            // SAFETY: every element is written by the kernel before anything reads it.
            let out = unsafe { dev.alloc::<T>(rows * cols)? };
            let func = dev.get_or_load_custom_func(&format!("rope_split_{suffix}"), MODULE, PTX)?;
            let mut builder = func.builder();
            let ints = [rows as i32, heads as i32, kv_heads as i32, head_dim as i32];
            builder.arg(&a).arg(&b).arg(&c).arg(&out);
            for int in &ints {
                builder.arg(int);
            }
            let cfg = LaunchConfig {
                grid_dim: (blocks_for(rows * all * half), 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments match the kernel's signature; shapes checked above.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(out)
        }
        Fused::SiluMul => candle_core::bail!("fused kernel: silu_mul has one input"),
    }
}
