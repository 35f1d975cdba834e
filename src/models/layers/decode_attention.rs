//! The attention of every decode of a pass in one kernel pair over the slab
//! (`kernels/decode_attention.cu`, compiled to PTX by build.rs): each sequence's keys and values
//! are read where they are, through its slot table, instead of being gathered into a padded copy
//! per layer and masked. CUDA only, for float dtypes, head_dim 32, 64, 128 or 256 and at most 8
//! query heads per kv head ([`applies`]); `WC_DECODE_KERNEL=0` turns it off. Scores and the
//! softmax stay in f32 up to the output, which is rounded once.
// Without the cuda feature the op is built but never launched.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use candle_core::{DType, Tensor};

use super::attention::Heads;

/// Longest part of a context one block reads (the context is split over more blocks when the
/// batch alone would leave the GPU's multiprocessors idle).
const MAX_PART: usize = 1024;
/// Shortest part: four warps, four keys at a time, four rounds.
const MIN_PART: usize = 64;
/// Blocks a pass aims for at least (two for each of ~132 multiprocessors).
const TARGET_BLOCKS: usize = 264;

/// Whether the kernel computes the decode attention of `shape` for `q` (its device and dtype).
pub fn applies(q: &Tensor, shape: &Heads) -> bool {
    // Read once: this is asked for every layer of every decode pass.
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF
        .get_or_init(|| std::env::var("WC_DECODE_KERNEL").is_ok_and(|v| v == "0" || v == "off"));
    let float = matches!(q.dtype(), DType::F32 | DType::F16 | DType::BF16);
    let group = shape.heads / shape.kv_heads.max(1);
    cfg!(feature = "cuda")
        && !off
        && q.device().is_cuda()
        && float
        && matches!(shape.head_dim, 32 | 64 | 128 | 256)
        && shape.heads % shape.kv_heads.max(1) == 0
        && (1..=8).contains(&group)
}

/// Parts a context of `table_len` positions is split into for `seqs * kv_heads` blocks, and
/// their length.
fn parts(blocks: usize, table_len: usize) -> (usize, usize) {
    let wanted = TARGET_BLOCKS.div_ceil(blocks.max(1));
    let longest = table_len.div_ceil(MIN_PART).max(1);
    let parts = wanted.clamp(1, longest).max(table_len.div_ceil(MAX_PART));
    (parts, table_len.div_ceil(parts).max(1))
}

/// Attention of `q` (`[seqs, heads, head_dim]`) over keys `k` and values `v` (the slab's layer,
/// `[kv_heads, slots, head_dim]`), sequence `i` seeing the slots `table[i, ..lens[i]]` (`table`
/// `[seqs, table_len]` u32, `lens` `[seqs]` u32, each within the window): `[seqs, heads *
/// head_dim]`.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    table: &Tensor,
    lens: &Tensor,
    shape: &Heads,
) -> candle_core::Result<Tensor> {
    let op = kernel::DecodeAttention {
        table,
        lens,
        heads: shape.heads,
        kv_heads: shape.kv_heads,
        window: shape.window.unwrap_or(0),
        scale: shape.scale.unwrap_or(1.0) as f32,
    };
    q.contiguous()?.apply_op3_no_bwd(k, v, &op)
}

mod kernel {
    //! The kernels as a candle op.
    use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

    pub(super) struct DecodeAttention<'a> {
        pub(super) table: &'a Tensor,
        pub(super) lens: &'a Tensor,
        pub(super) heads: usize,
        pub(super) kv_heads: usize,
        pub(super) window: usize,
        pub(super) scale: f32,
    }

    impl CustomOp3 for DecodeAttention<'_> {
        fn name(&self) -> &'static str {
            "decode-attention"
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
            candle_core::bail!("the decode-attention kernel runs on CUDA only")
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            q: &candle_core::CudaStorage,
            q_layout: &Layout,
            k: &candle_core::CudaStorage,
            k_layout: &Layout,
            v: &candle_core::CudaStorage,
            v_layout: &Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
            super::cuda::launch(self, (q, q_layout), (k, k_layout), (v, v_layout))
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launching the two kernels on the device's stream.
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape, Storage, Tensor};

    use super::kernel::DecodeAttention;
    use crate::models::layers::cuda_launch::contiguous_view;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/decode_attention.ptx"));
    const MODULE: &str = "wc_decode_attention";

    /// A contiguous view of a tensor's storage.
    fn view<'a, T: CudaDType>(
        storage: &'a CudaStorage,
        layout: &Layout,
        what: &str,
    ) -> candle_core::Result<CudaView<'a, T>> {
        contiguous_view(storage, layout, &format!("decode attention: {what}"))
    }

    /// A u32 tensor's storage, for reading while the guard lives.
    fn u32_storage(t: &Tensor) -> candle_core::Result<(candle_core::StorageRef<'_>, &Layout)> {
        if t.dtype() != DType::U32 {
            candle_core::bail!("decode attention: the slot table and lengths are u32");
        }
        Ok(t.storage_and_layout())
    }

    pub(super) fn launch(
        op: &DecodeAttention<'_>,
        (q, q_layout): (&CudaStorage, &Layout),
        (k, k_layout): (&CudaStorage, &Layout),
        (v, v_layout): (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (seqs, heads, head_dim) = q_layout.shape().dims3()?;
        let (kv_heads, slots, k_dim) = k_layout.shape().dims3()?;
        if heads != op.heads || kv_heads != op.kv_heads || k_dim != head_dim {
            candle_core::bail!("decode attention: q {q_layout:?} does not fit k {k_layout:?}");
        }
        if v_layout.shape() != k_layout.shape() {
            candle_core::bail!("decode attention: v {v_layout:?} is not shaped as k");
        }
        let (table_guard, table_layout) = u32_storage(op.table)?;
        let (lens_guard, lens_layout) = u32_storage(op.lens)?;
        let (Storage::Cuda(table), Storage::Cuda(lens)) = (&*table_guard, &*lens_guard) else {
            candle_core::bail!("decode attention: the slot table is not on the GPU");
        };
        let (table_seqs, table_len) = table_layout.shape().dims2()?;
        if table_seqs != seqs || lens_layout.shape().elem_count() != seqs {
            candle_core::bail!("decode attention: {seqs} queries, {table_seqs} slot rows");
        }
        let table = view::<u32>(table, table_layout, "the slot table")?;
        let lens = view::<u32>(lens, lens_layout, "the lengths")?;
        let dev = q.device().clone();
        let group = heads / kv_heads;
        let (parts, part_len) = super::parts(seqs * kv_heads, table_len);
        let dims = Dims {
            seqs,
            heads,
            kv_heads,
            head_dim,
            slots,
            table_len,
            parts,
            part_len,
            group,
        };
        let (q, k, v) = ((q, q_layout), (k, k_layout), (v, v_layout));
        macro_rules! launch_as {
            ($t:ty, $name:literal) => {
                CudaStorage::wrap_cuda_slice(
                    run::<$t>(op, &dev, &dims, q, k, v, &table, &lens, $name)?,
                    dev.clone(),
                )
            };
        }
        let out = match q.0.dtype() {
            DType::F32 => launch_as!(f32, "f32"),
            DType::F16 => launch_as!(half::f16, "f16"),
            DType::BF16 => launch_as!(half::bf16, "bf16"),
            other => candle_core::bail!("decode attention: no kernel for {other:?}"),
        };
        Ok((out, Shape::from((seqs, heads * head_dim))))
    }

    struct Dims {
        seqs: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        slots: usize,
        table_len: usize,
        parts: usize,
        part_len: usize,
        group: usize,
    }

    #[allow(clippy::too_many_arguments)]
    fn run<T: CudaDType + DeviceRepr>(
        op: &DecodeAttention<'_>,
        dev: &CudaDevice,
        d: &Dims,
        (q, q_layout): (&CudaStorage, &Layout),
        (k, k_layout): (&CudaStorage, &Layout),
        (v, v_layout): (&CudaStorage, &Layout),
        table: &CudaView<'_, u32>,
        lens: &CudaView<'_, u32>,
        name: &str,
    ) -> candle_core::Result<CudaSlice<T>> {
        let q = view::<T>(q, q_layout, "q")?;
        let k = view::<T>(k, k_layout, "the keys")?;
        let v = view::<T>(v, v_layout, "the values")?;
        let cells = d.seqs * d.kv_heads * d.parts * d.group;
        // SAFETY: every element is written by the kernels before anything reads it.
        let part_out = unsafe { dev.alloc::<f32>(cells * d.head_dim)? };
        let part_max_sum = unsafe { dev.alloc::<f32>(cells * 2)? };
        let out = unsafe { dev.alloc::<T>(d.seqs * d.heads * d.head_dim)? };
        let i32_of = |n: usize| n as i32;
        let partial = dev.get_or_load_custom_func(
            &format!("decode_attention_partial_{name}_d{}", d.head_dim),
            MODULE,
            PTX,
        )?;
        let mut b = partial.builder();
        b.arg(&q).arg(&k).arg(&v).arg(table).arg(lens);
        b.arg(&part_out).arg(&part_max_sum);
        let ints = [
            i32_of(d.heads),
            i32_of(d.kv_heads),
            i32_of(d.head_dim),
            i32_of(d.slots),
            i32_of(d.table_len),
            i32_of(d.part_len),
            i32_of(op.window),
        ];
        for int in &ints {
            b.arg(int);
        }
        b.arg(&op.scale);
        let cfg = LaunchConfig {
            grid_dim: ((d.seqs * d.kv_heads) as u32, d.parts as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's signature; every index stays in the tensors
        // checked above (slots come from the slab's own tables).
        unsafe { b.launch(cfg) }.w()?;
        let combine =
            dev.get_or_load_custom_func(&format!("decode_attention_combine_{name}"), MODULE, PTX)?;
        let mut b = combine.builder();
        b.arg(&part_out).arg(&part_max_sum).arg(&out);
        let ints = [
            i32_of(d.heads),
            i32_of(d.kv_heads),
            i32_of(d.head_dim),
            i32_of(d.parts),
        ];
        for int in &ints {
            b.arg(int);
        }
        let cfg = LaunchConfig {
            grid_dim: ((d.seqs * d.heads) as u32, 1, 1),
            block_dim: (d.head_dim as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as above.
        unsafe { b.launch(cfg) }.w()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::parts;

    #[test]
    fn a_small_batch_splits_its_context_and_a_large_one_does_not() {
        // One sequence, 8 kv heads, 160 positions: split into 64-position parts.
        assert_eq!(parts(8, 160), (3, 54));
        // 64 sequences fill the GPU alone.
        assert_eq!(parts(512, 256), (1, 256));
        // A long context is split at least every 1 024 positions.
        assert_eq!(parts(512, 4096), (4, 1024));
    }
}
