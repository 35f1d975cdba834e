//! The fused kernels (`kernels/fused.cu`) against the candle ops they replace, on the GPU: the
//! residual add + RMSNorm, SiLU × up and the q/k/v split with rotary embeddings, in f32, f16 and
//! bf16, on the shapes of Llama 3 8B, Qwen 2.5 7B and the fixtures. bf16 must be bit-equal
//! where the kernels round as candle does; f32 within float rounding.

use candle_core::{DType, Device, Tensor, D};
use worker_controller::models::layers::fused::{
    add_rms_norm_kernel, silu_mul_kernel, split_qkv_kernel, QkvHeads,
};

fn numbers(n: usize, seed: usize, device: &Device, dtype: DType, dims: &[usize]) -> Tensor {
    let data: Vec<f32> = (0..n)
        .map(|i| (((i * 2654435761 + seed * 97) % 2000) as f32 / 1000.0) - 1.0)
        .collect();
    Tensor::from_slice(&data, dims, device)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Every element of `t` as f32.
fn flat(t: &Tensor) -> Vec<f32> {
    let t = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    t.to_vec1().unwrap()
}

fn largest(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (flat(a), flat(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            if (x - y).is_nan() {
                f32::INFINITY
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f32::max)
}

/// Tolerance per dtype: a few units in the last place of values of magnitude ~1-4.
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 4e-3,
        _ => 3e-2,
    }
}

#[test]
fn the_fused_kernels_compute_what_candles_ops_compute() {
    let _gpu = super::serial();
    let device = Device::new_cuda(0).unwrap();
    let mut failures = Vec::new();
    // (heads, kv_heads, head_dim, hidden, intermediate)
    let shapes = [
        (32, 8, 128, 4096, 14336),
        (28, 4, 128, 3584, 18944),
        (4, 2, 32, 128, 256),
    ];
    for (heads, kv_heads, d, hidden, inter) in shapes {
        for rows in [1usize, 5, 64] {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let x = numbers(rows * hidden, 1, &device, dtype, &[rows, hidden]);
                let delta = numbers(rows * hidden, 2, &device, dtype, &[rows, hidden]);
                let weight = numbers(hidden, 3, &device, dtype, &[hidden]);
                let (sum, normed) = add_rms_norm_kernel(&x, &delta, &weight, 1e-5).unwrap();
                let want_sum = (&x + &delta).unwrap();
                let want_norm = candle_nn::ops::rms_norm(&want_sum, &weight, 1e-5).unwrap();
                let what = format!("{dtype:?} rows {rows} hidden {hidden}");
                let (ds, dn) = (largest(&sum, &want_sum), largest(&normed, &want_norm));
                if ds > 0.0 || dn > tolerance(dtype) {
                    failures.push(format!("add_rms_norm {what}: sum {ds}, norm {dn}"));
                }
                let gate_up = numbers(rows * 2 * inter, 4, &device, dtype, &[rows, 2 * inter]);
                let got = silu_mul_kernel(&gate_up).unwrap();
                let gate = candle_nn::ops::silu(&gate_up.narrow(D::Minus1, 0, inter).unwrap());
                let want =
                    (gate.unwrap() * gate_up.narrow(D::Minus1, inter, inter).unwrap()).unwrap();
                let diff = largest(&got, &want);
                if diff > tolerance(dtype) {
                    failures.push(format!("silu_mul {what} inter {inter}: {diff}"));
                }
                let all = heads + 2 * kv_heads;
                let qkv = numbers(rows * all * d, 5, &device, dtype, &[rows, all * d]);
                let angles = numbers(rows * d / 2, 6, &device, DType::F32, &[rows, d / 2]);
                let angles = (angles * 40.0).unwrap();
                let cos = angles.cos().unwrap().to_dtype(dtype).unwrap();
                let sin = angles.sin().unwrap().to_dtype(dtype).unwrap();
                let heads_of = QkvHeads {
                    heads,
                    kv_heads,
                    head_dim: d,
                };
                let (q, k, v) = split_qkv_kernel(&qkv, heads_of, &cos, &sin).unwrap();
                let part = |offset: usize, count: usize| {
                    qkv.narrow(1, offset * d, count * d)
                        .unwrap()
                        .contiguous()
                        .unwrap()
                        .reshape((1, rows, count, d))
                        .unwrap()
                };
                let rope = |t: Tensor| {
                    candle_nn::rotary_emb::rope_thd(&t, &cos, &sin)
                        .unwrap()
                        .squeeze(0)
                        .unwrap()
                };
                let (want_q, want_k) = (rope(part(0, heads)), rope(part(heads, kv_heads)));
                let want_v = part(heads + kv_heads, kv_heads).squeeze(0).unwrap();
                for (name, got, want) in
                    [("q", &q, &want_q), ("k", &k, &want_k), ("v", &v, &want_v)]
                {
                    assert_eq!(got.dims(), want.dims(), "{name} {what}");
                    let diff = largest(got, want);
                    if diff > tolerance(dtype) {
                        failures.push(format!(
                            "rope_split {name} {what} heads {heads}/{kv_heads}: {diff}"
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_pinned_upload_places_fused_groups_with_each_member_where_it_reads_as_before() {
    use worker_controller::load::cuda::{upload_checkpoint, CacheInserts, PinnedPool};
    use worker_controller::models::family::Config;
    use worker_controller::models::{FamilyConfig, LlamaConfig};
    let _gpu = super::serial();
    let device = super::gpu();
    let cuda = super::cuda(&device);
    // tiny-qwen2: q/k/v biases, so weights and biases are both placed.
    let dir = super::fixture("tiny-qwen2");
    let config = FamilyConfig::from_file(&dir.join("config.json")).unwrap();
    let config = config.get::<LlamaConfig>().cloned().unwrap();
    let groups = config.fused_groups();
    let file = super::inspected(&dir.join("model.safetensors"));
    let mut pool = PinnedPool::new(cuda, 0, 0).unwrap();
    let mut upload = |groups: &[worker_controller::load::weights::FusedGroup]| {
        let mut inserts = CacheInserts::default();
        let files = [file.clone()];
        let up = upload_checkpoint(
            cuda,
            &mut pool,
            &files,
            DType::F32,
            &mut inserts,
            None,
            groups,
        )
        .unwrap();
        up.in_flight.wait().unwrap();
        pool.finish_load(inserts, true);
        up.tensors
    };
    let plain = upload(&[]);
    let placed = upload(&groups);
    let values = flat;
    for group in &groups {
        let whole = placed
            .get(&group.name)
            .unwrap_or_else(|| panic!("{} placed", group.name));
        let mut rows = 0;
        for member in &group.members {
            let want = values(&plain[member]);
            assert_eq!(values(&placed[member]), want, "{member} reads as before");
            let n = plain[member].dim(0).unwrap();
            assert_eq!(
                values(&whole.narrow(0, rows, n).unwrap()),
                want,
                "{member} in {}",
                group.name
            );
            rows += n;
        }
        assert_eq!(whole.dim(0).unwrap(), rows);
    }
    assert!(plain.keys().all(|name| placed.contains_key(name)));
}

#[test]
fn the_gemv_kernel_computes_what_cublas_computes_for_up_to_eight_rows() {
    use worker_controller::models::layers::gemv;
    let _gpu = super::serial();
    let device = Device::new_cuda(0).unwrap();
    let mut failures = Vec::new();
    // (k, n): 8B's q/k/v, gate/up, down and a small head; the fixtures' 128 x 256.
    for (k, n) in [
        (4096, 6144),
        (4096, 28672),
        (14336, 4096),
        (4096, 32000),
        (128, 256),
    ] {
        let w32 = numbers(n * k, 7, &device, DType::F32, &[n, k]);
        let w32 = (w32 * 0.05).unwrap();
        for rows in [1usize, 3, 8] {
            let x32 = numbers(rows * k, 8, &device, DType::F32, &[rows, k]);
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let (x, w) = (x32.to_dtype(dtype).unwrap(), w32.to_dtype(dtype).unwrap());
                let got = gemv::times_transposed(&x, &w).unwrap();
                // The reference in f32 from the same rounded inputs.
                let want = x
                    .to_dtype(DType::F32)
                    .unwrap()
                    .matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
                    .unwrap();
                let scale = (k as f32).sqrt() * 0.05;
                let tol = match dtype {
                    DType::F32 => 1e-4 * scale,
                    DType::F16 => 2e-3 * scale,
                    _ => 1.6e-2 * scale,
                };
                let diff = largest(&got, &want);
                if got.dims() != [rows, n] || diff > tol {
                    failures.push(format!("{dtype:?} rows {rows} k {k} n {n}: {diff} > {tol}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
