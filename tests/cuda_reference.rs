//! On a GPU (`--features cuda`): the fixtures match transformers (f32 logits within 1e-4, f16 and
//! bf16 greedy tokens equal) on every upload path — pinned staging, host-cache hit, the pageable
//! fallback for files larger than a staging buffer and for sharded checkpoints; a read error in
//! the middle of an upload leaves no device memory and no cache entry behind; the staging buffers
//! are an LRU that drops changed files; attach/detach cycles give device memory back; and
//! engines on two GPUs attach at the same time.
//!
//! The tests take one lock each (`serial`): they read process-wide counters and device memory, so
//! they must not overlap even when run with several test threads.
#![cfg(feature = "cuda")]

mod common;
#[path = "cuda_reference/fused_kernels.rs"]
mod fused_kernels;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType as CandleDType, Device, Tensor};
use common::{fixture, reference, scratch, Reference};
use wc_actors::{
    Attach, DType, DeviceSpec, GenerateRequest, ModelSpec, PrewarmOptions, Prompt, Runtime,
    RuntimeConfig, Timeline, WorkerConfig, WorkerDevice,
};
use worker_controller::load::cuda::{
    pool_usage, upload_checkpoint, CacheInserts, PinnedPool, BLOCK_BYTES,
};
use worker_controller::load::weights::DeviceWeights;
use worker_controller::load::WeightFile;
use worker_controller::models::llama::{LlamaEngine, LlamaModel};
use worker_controller::models::opt::OptEngine;
use worker_controller::models::{FamilyConfig, LlamaConfig};
use worker_controller::{CandleBackend, CandleDevice};

const FIXTURES: [&str; 2] = ["tiny-opt-prenorm", "tiny-opt-postnorm-proj"];

/// The largest f32 logit difference from transformers (or the CPU) allowed on the GPU: the
/// differences measured on an H100 are at most about 1.5e-5 (8.6e-6 OPT, 6.7e-6 Llama).
const F32_LOGIT_TOL: f32 = 1e-4;

/// Reduced-precision greedy streams are compared with transformers' only where every greedy
/// step's top-2 logit margin is at least this (see `tests/fixtures/README-llama.md`).
const MIN_MARGIN: f32 = 0.05;

static GPU_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds the GPU for one synchronous test.
fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    GPU_LOCK.blocking_lock()
}

fn gpu_with(options: PrewarmOptions) -> CandleDevice {
    CandleDevice::open(&DeviceSpec::Cuda(0), Some(&options))
        .unwrap()
        .0
}

/// A prewarmed worker device with the default staging buffers and host cache.
fn gpu() -> CandleDevice {
    gpu_with(PrewarmOptions::default())
}

fn cuda(device: &CandleDevice) -> &candle_core::CudaDevice {
    match &device.device {
        Device::Cuda(cuda) => cuda,
        other => panic!("not a CUDA device: {other:?}"),
    }
}

fn spec(model: impl AsRef<Path>, dtype: Option<DType>) -> ModelSpec {
    ModelSpec {
        model: model.as_ref().display().to_string(),
        dtype,
        canonical: false,
        park: None,
    }
}

fn load(device: &mut CandleDevice, model: impl AsRef<Path>, dtype: Option<DType>) -> OptEngine {
    device
        .load_as::<worker_controller::models::OptEngine>(
            &spec(model, dtype),
            &mut Timeline::default(),
        )
        .unwrap()
        .0
}

fn greedy(ids: &[u32], max_new_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Ids(ids.to_vec()),
        max_new_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

fn max_abs_diff(logits: &Tensor, expected: &[Vec<f32>]) -> f32 {
    let logits: Vec<Vec<f32>> = logits
        .to_dtype(CandleDType::F32)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(logits.len(), expected.len(), "sequence length");
    common::decoding::largest_difference(logits.iter().flatten(), expected.iter().flatten())
}

/// The worst f32 logit difference from transformers over a fixture's prompts.
fn worst_logit_diff(engine: &OptEngine, name: &str) -> f32 {
    reference(name)
        .cases
        .iter()
        .map(|case| max_abs_diff(&engine.logits(&case.input_ids).unwrap(), &case.logits))
        .fold(0.0, f32::max)
}

/// Asserts the engine's greedy streams equal transformers' (where the margins allow).
fn assert_greedy_reference(engine: &mut OptEngine, name: &str, what: &str) {
    for case in reference(name).cases {
        if case.min_top2_margin.is_some_and(|m| m < MIN_MARGIN) {
            continue;
        }
        let out = engine
            .run(
                &greedy(&case.input_ids, case.greedy_new_tokens.len()),
                &mut |_| true,
            )
            .unwrap();
        assert_eq!(out.new_tokens, case.greedy_new_tokens, "{name} {what}");
    }
}

#[test]
fn f32_logits_match_transformers_within_1e4_on_the_gpu() {
    let _gpu = serial();
    let mut device = gpu();
    for name in FIXTURES {
        let engine = load(&mut device, fixture(name), Some(DType::F32));
        let diff = worst_logit_diff(&engine, name);
        println!("{name}: f32 max abs logit diff on cuda:0 = {diff:e} (limit {F32_LOGIT_TOL:e})");
        assert!(diff < F32_LOGIT_TOL, "{name}: {diff}");
    }
}

#[test]
fn f16_greedy_tokens_equal_transformers_on_the_gpu() {
    let _gpu = serial();
    let mut device = gpu();
    for name in FIXTURES {
        let mut engine = load(&mut device, fixture(name), Some(DType::F16));
        assert_greedy_reference(&mut engine, name, "f16");
    }
}

/// A copy of a fixture (config, tokenizer, weights) with its weights converted to `dtype`.
fn converted_copy(name: &str, dtype: CandleDType, test: &str) -> PathBuf {
    let dir = scratch(test);
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture(name).join(file), dir.join(file)).unwrap();
    }
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture(name).join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.to_dtype(dtype).unwrap()))
            .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    dir
}

#[test]
fn bf16_greedy_tokens_equal_transformers_on_the_gpu() {
    let _gpu = serial();
    let mut device = gpu();
    for name in FIXTURES {
        // f32 weights converted to bf16 on the GPU after the upload.
        let mut converted = load(&mut device, fixture(name), Some(DType::BF16));
        assert_greedy_reference(&mut converted, name, "bf16 (converted on the GPU)");
        // A checkpoint stored in bf16, uploaded as it is (the pinned path's bf16 tensors).
        let stored = converted_copy(name, CandleDType::BF16, &format!("{name}-bf16"));
        let (uploads, _) = counts_of(&device);
        let mut native = load(&mut device, &stored, None);
        assert_eq!(counts_of(&device).0, uploads + 1, "pinned path");
        assert_greedy_reference(&mut native, name, "bf16 (stored)");
        // The same rounded weights either way: identical logits.
        for case in reference(name).cases {
            let a = converted.logits(&case.input_ids).unwrap();
            let b: Vec<Vec<f32>> = native
                .logits(&case.input_ids)
                .unwrap()
                .to_dtype(CandleDType::F32)
                .unwrap()
                .to_vec2()
                .unwrap();
            assert_eq!(
                max_abs_diff(&a, &b),
                0.0,
                "{name}: bf16 stored vs converted"
            );
        }
    }
}

#[test]
fn output_after_a_host_cache_hit_equals_the_reference() {
    let _gpu = serial();
    // A device opened on its own has its own pinned pool: this test starts from an empty one.
    let mut device = gpu_with(PrewarmOptions {
        host_cache_bytes: 528 << 20,
        ..Default::default()
    });
    for name in FIXTURES {
        let (uploads, hits) = counts_of(&device);
        let first = load(&mut device, fixture(name), Some(DType::F32));
        assert_eq!(counts_of(&device), (uploads + 1, hits), "{name}: a miss");
        drop(first);
        let engine = load(&mut device, fixture(name), Some(DType::F32));
        assert_eq!(counts_of(&device), (uploads + 2, hits + 1), "{name}: a hit");
        let diff = worst_logit_diff(&engine, name);
        println!("{name}: f32 max abs logit diff after a host-cache hit = {diff:e}");
        assert!(diff < F32_LOGIT_TOL, "{name} from the host cache: {diff}");
        drop(engine);
        let mut engine = load(&mut device, fixture(name), Some(DType::F16));
        assert_eq!(counts_of(&device), (uploads + 3, hits + 2), "{name}: a hit");
        assert_greedy_reference(&mut engine, name, "f16 from the host cache");
    }
}

/// A copy of a fixture with its weights split over two shards and an index.
fn sharded_copy(name: &str, test: &str) -> PathBuf {
    let dir = scratch(test);
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture(name).join(file), dir.join(file)).unwrap();
    }
    let tensors =
        candle_core::safetensors::load(fixture(name).join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (mut shards, mut weight_map) = ([HashMap::new(), HashMap::new()], serde_json::Map::new());
    for (i, tensor) in names.iter().enumerate() {
        let shard = i % 2;
        shards[shard].insert((*tensor).clone(), tensors[*tensor].clone());
        weight_map.insert(
            (*tensor).clone(),
            format!("model-0000{}-of-00002.safetensors", shard + 1).into(),
        );
    }
    for (i, shard) in shards.iter().enumerate() {
        let path = dir.join(format!("model-0000{}-of-00002.safetensors", i + 1));
        candle_core::safetensors::save(shard, path).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
    dir
}

#[test]
fn sharded_and_uncached_checkpoints_take_the_pinned_path_and_give_the_reference_output() {
    let _gpu = serial();
    // No host cache: every load streams through the staging ring from disk.
    let mut uncached = gpu_with(PrewarmOptions {
        host_cache_bytes: 0,
        ..Default::default()
    });
    let mut cached = gpu();
    for name in FIXTURES {
        let sharded = sharded_copy(name, &format!("{name}-sharded"));
        let cases: [(&str, &mut CandleDevice, PathBuf, bool); 2] = [
            ("through the ring", &mut uncached, fixture(name), false),
            ("sharded", &mut cached, sharded, true),
        ];
        for (what, device, model, caches) in cases {
            for round in 0..2 {
                let (uploads, hits) = counts_of(device);
                let engine = load(device, &model, Some(DType::F32));
                let hit = caches && round == 1;
                assert_eq!(
                    counts_of(device),
                    (uploads + 1, hits + u64::from(hit)),
                    "{name} {what} round {round}: the pinned path, from the host cache: {hit}"
                );
                let diff = worst_logit_diff(&engine, name);
                println!("{name} {what} (round {round}): f32 max abs logit diff = {diff:e}");
                assert!(
                    diff < F32_LOGIT_TOL,
                    "{name} {what} (round {round}): {diff}"
                );
                drop(engine);
                let mut engine = load(device, &model, Some(DType::F16));
                assert_greedy_reference(&mut engine, name, &format!("f16 {what} ({round})"));
            }
        }
    }
}

/// Writes the OPT-125m preset (random weights, f16) once per call.
fn opt_125m(test: &str) -> PathBuf {
    let dir = scratch(&format!("opt-125m-f16-{test}"));
    let config = worker_controller::models::opt::presets::preset("opt-125m").unwrap();
    worker_controller::models::opt::presets::write_checkpoint(&config, CandleDType::F16, &dir, 0)
        .unwrap();
    dir
}

#[test]
fn a_read_error_mid_upload_leaves_no_memory_behind_and_the_device_serves_afterwards() {
    let _gpu = serial();
    let model = opt_125m("read-error");
    let data_bytes = std::fs::metadata(model.join("model.safetensors"))
        .unwrap()
        .len();
    let mut device = gpu_with(PrewarmOptions {
        dtypes: vec![DType::F16],
        ..Default::default()
    });
    let baseline = device.memory().unwrap();
    let pool_before = pool_usage(cuda(&device)).unwrap();
    assert!(baseline.free_bytes > 0 && baseline.total_bytes >= baseline.free_bytes);
    let counts = counts_of(&device);
    // Fails once half the data section is in pinned memory, with the copies of the tensors in
    // that half already queued on the device.
    device.fail_next_read_at(data_bytes / 2);
    let error = device
        .load_as::<worker_controller::models::OptEngine>(
            &spec(&model, Some(DType::F16)),
            &mut Timeline::default(),
        )
        .err()
        .expect("the load fails");
    assert!(error.to_string().contains("injected"), "{error}");
    let after = device.memory().unwrap();
    let pool_after = pool_usage(cuda(&device)).unwrap();
    println!(
        "read error at {} of {data_bytes} bytes: free {} -> {} bytes, pool used {} -> {} bytes \
         (reserved {} -> {})",
        data_bytes / 2,
        baseline.free_bytes,
        after.free_bytes,
        pool_before.used,
        pool_after.used,
        pool_before.reserved,
        pool_after.reserved,
    );
    assert_eq!(
        pool_after.used, pool_before.used,
        "device memory left behind"
    );
    // Free counts what the pool keeps mapped, so only the driver's own bookkeeping may move it.
    assert!(
        after.free_bytes.abs_diff(baseline.free_bytes) <= 4 << 20,
        "free memory changed by more than 4 MiB"
    );
    assert_eq!(counts_of(&device), counts, "nothing was uploaded");
    // The host cache kept nothing of the failed file: the next load reads it from disk.
    let mut engine = load(&mut device, &model, Some(DType::F16));
    assert_eq!(counts_of(&device), (counts.0 + 1, counts.1), "a miss");
    let tokens = engine
        .run(&greedy(&[2, 100, 200], 8), &mut |_| true)
        .unwrap();
    drop(engine);
    let mut engine = load(&mut device, &model, Some(DType::F16));
    assert_eq!(counts_of(&device), (counts.0 + 2, counts.1 + 1), "a hit");
    let again = engine
        .run(&greedy(&[2, 100, 200], 8), &mut |_| true)
        .unwrap();
    assert_eq!(tokens.new_tokens, again.new_tokens);
    drop(engine);
    let pool_end = pool_usage(cuda(&device)).unwrap();
    assert_eq!(
        pool_end.used, pool_before.used,
        "engines gave their memory back"
    );
    // Fixtures still serve on the same device.
    let mut engine = load(&mut device, fixture(FIXTURES[0]), Some(DType::F16));
    assert_greedy_reference(&mut engine, FIXTURES[0], "f16 after a failed upload");
}

/// `(uploads, host-cache hits)` through `device`'s pinned pool so far.
fn counts_of(device: &CandleDevice) -> (u64, u64) {
    let counts = device.pinned_upload_counts();
    (counts.uploads, counts.hits)
}

/// The weight file at `path` as an inspection finds it.
pub(crate) fn inspected(path: &Path) -> worker_controller::load::safetensors::InspectedFile {
    worker_controller::load::safetensors::InspectedFile::read(path).unwrap()
}

/// Uploads `path` through `pool` and keeps it, as a successful load does; whether it was a hit.
fn staged(device: &CandleDevice, pool: &mut PinnedPool, path: &Path) -> bool {
    let mut inserts = CacheInserts::default();
    let uploaded = upload_checkpoint(
        cuda(device),
        pool,
        &[inspected(path)],
        CandleDType::F32,
        &mut inserts,
        None,
        &[],
    )
    .unwrap();
    let hit = uploaded.from_host_cache();
    uploaded.in_flight.wait().unwrap();
    pool.finish_load(inserts, true);
    hit
}

/// Rewrites the file in place (same inode, same size) with one tensor's values negated, and
/// puts its modification time back.
fn negate_in_place(path: &Path, tensor: &str) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let info = metadata.info(tensor).unwrap();
    let (start, end) = info.data_offsets;
    let data = 8 + header_len;
    for value in bytes[data + start..data + end].chunks_exact_mut(4) {
        let negated = -f32::from_le_bytes(value.try_into().unwrap());
        value.copy_from_slice(&negated.to_le_bytes());
    }
    let before = std::fs::metadata(path).unwrap();
    std::fs::write(path, &bytes).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(mtime).unwrap();
    let after = std::fs::metadata(path).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(after.ino(), before.ino());
}

#[test]
fn the_host_cache_evicts_the_least_recently_used_file_and_drops_a_changed_one() {
    let _gpu = serial();
    let device = gpu();
    // Room for two files of one block each.
    let mut pool = PinnedPool::new(cuda(&device), 0, 2 * BLOCK_BYTES as u64).unwrap();
    let files: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            let dir = scratch(&format!("lru-{n}"));
            let path = dir.join("model.safetensors");
            std::fs::copy(fixture(FIXTURES[0]).join("model.safetensors"), &path).unwrap();
            path
        })
        .collect();
    let (a, b, c) = (&files[0], &files[1], &files[2]);
    // Two blocks: each miss evicts the least recently used file.
    let order = [a, b, a, c, a, b, c, b, a];
    let hits: Vec<bool> = order
        .iter()
        .map(|f| staged(&device, &mut pool, f))
        .collect();
    assert_eq!(
        hits,
        [false, false, true, false, true, false, false, true, false],
        "a b a c(evicts b) a b(evicts c) c(evicts a) b a(evicts c)"
    );
    // Now b and a are held. A same-size rewrite of b with its mtime restored is a new file.
    assert!(staged(&device, &mut pool, b));
    negate_in_place(b, "model.decoder.final_layer_norm.weight");
    assert!(
        !staged(&device, &mut pool, b),
        "a changed file is read again"
    );
    assert!(staged(&device, &mut pool, b));
}

#[test]
fn a_changed_file_is_read_again_and_serves_its_new_weights() {
    let _gpu = serial();
    let name = FIXTURES[0];
    let dir = common::copy_fixture(name, "changed-file");
    let mut device = gpu();
    let engine = load(&mut device, &dir, Some(DType::F32));
    assert!(worst_logit_diff(&engine, name) < F32_LOGIT_TOL);
    drop(engine);
    negate_in_place(
        &dir.join("model.safetensors"),
        "model.decoder.final_layer_norm.weight",
    );
    let counts = counts_of(&device);
    let engine = load(&mut device, &dir, Some(DType::F32));
    assert_eq!(counts_of(&device), (counts.0 + 1, counts.1), "a miss");
    // What the CPU computes from the changed file.
    let (mut cpu, _) = CandleDevice::open(&DeviceSpec::Cpu, None).unwrap();
    let expected = load(&mut cpu, &dir, Some(DType::F32));
    for case in reference(name).cases {
        let new: Vec<Vec<f32>> = expected.logits(&case.input_ids).unwrap().to_vec2().unwrap();
        let logits = engine.logits(&case.input_ids).unwrap();
        assert!(
            max_abs_diff(&logits, &new) < F32_LOGIT_TOL,
            "the new weights"
        );
        assert!(
            max_abs_diff(&logits, &case.logits) > 0.1,
            "not the old ones"
        );
    }
}

#[actix_rt::test]
async fn a_hundred_attach_detach_cycles_return_device_memory() {
    let _gpu = GPU_LOCK.lock().await;
    let model = opt_125m("cycles");
    // A second handle on cuda:0 (same primary context and memory pool) to read the pool.
    // Opened by the runtime's backend with the worker's prewarm options, it shares the worker's
    // pinned pool (and so its upload counts).
    let prewarm = PrewarmOptions {
        dtypes: vec![DType::F16],
        ..Default::default()
    };
    let backend = CandleBackend::default();
    let (probe, _) = backend.open(&DeviceSpec::Cuda(0), &prewarm).unwrap();
    let config = RuntimeConfig {
        workers: vec![WorkerConfig {
            device: DeviceSpec::Cuda(0),
            count: 1,
            prewarm: prewarm.clone(),
        }],
        ..Default::default()
    };
    let handle = Runtime::start(config, Arc::new(backend.clone()));
    let workers = handle.wait_ready().await.unwrap();
    let baseline = workers[0]
        .memory
        .as_ref()
        .expect("the worker reports its memory")
        .free_bytes;
    assert!(baseline > 0, "a positive baseline");
    let pool_baseline = pool_usage(cuda(&probe)).unwrap();
    let counts = counts_of(&probe);
    let (mut last, mut tokens, mut model_bytes, mut attached) = (None, Vec::new(), 0, Vec::new());
    let mut pool_after_first = None;
    for cycle in 0..100 {
        let report = handle
            .attach(Attach::new(spec(&model, Some(DType::F16))))
            .await
            .unwrap();
        model_bytes = report.bytes_moved;
        attached.push(report.memory_attached.free_bytes);
        assert!(
            report.memory_attached.free_bytes <= baseline - model_bytes,
            "cycle {cycle}: {} bytes free while attached, baseline {baseline}, model {model_bytes}",
            report.memory_attached.free_bytes
        );
        if cycle == 0 || cycle == 99 {
            let out = handle
                .generate(report.engine_id, greedy(&[2, 100, 200], 16))
                .await
                .unwrap();
            tokens.push(out.new_tokens);
        }
        last = Some(handle.detach(report.engine_id).await.unwrap());
        if cycle == 0 {
            pool_after_first = Some(pool_usage(cuda(&probe)).unwrap());
        }
    }
    let pool_after_first = pool_after_first.unwrap();
    let last = last.unwrap();
    let after = last.memory_after_detach.free_bytes;
    let drift = baseline as i64 - after as i64;
    let pool = pool_usage(cuda(&probe)).unwrap();
    println!(
        "cuda:0 free bytes: baseline {baseline}, attached {}..{}, after 100 cycles {after}, drift {:.1} MiB; \
         model {model_bytes} bytes; pool reserved {} at prewarm, {} after the first cycle, {} after 100; \
         used {} -> {} bytes",
        attached.iter().min().unwrap(),
        attached.iter().max().unwrap(),
        drift as f64 / (1 << 20) as f64,
        pool_baseline.reserved,
        pool_after_first.reserved,
        pool.reserved,
        pool_baseline.used,
        pool.used,
    );
    assert!(
        drift.abs() < 64 << 20,
        "free memory drifted by {drift} bytes"
    );
    // What the pool holds for the cycles (over what prewarm left in it) is one engine's worth
    // (its weights and the KV-cache slab it reserves at attach) plus the model build's transient
    // copies and the pool's chunk rounding, and it stops growing after the first cycle.
    let footprint = worker_controller::backend::inspect(&spec(&model, Some(DType::F16)))
        .unwrap()
        .footprint;
    let engine_bytes = footprint.needed_bytes(PrewarmOptions::default().kv_cache_tokens);
    let grown = pool.reserved - pool_baseline.reserved;
    assert!(
        grown <= engine_bytes + (64 << 20),
        "the pool grew by {grown} bytes for a {engine_bytes}-byte engine ({model_bytes} of weights)"
    );
    // After the first cycle the pool may take at most one more chunk (the stream-ordered
    // pool's fragmentation); a leak would grow it every cycle.
    assert!(
        pool.reserved - pool_after_first.reserved <= 64 << 20,
        "the pool kept growing after the first cycle: {} -> {}",
        pool_after_first.reserved,
        pool.reserved
    );
    assert_eq!(
        pool.used, pool_baseline.used,
        "detached engines hold no memory"
    );
    assert_eq!(
        counts_of(&probe),
        (counts.0 + 100, counts.1 + 99),
        "every attach after the first is a host-cache hit"
    );
    assert_eq!(tokens[0], tokens[1], "first and hundredth attach");
    handle.shutdown().await;
}

/// Greedy tokens of the OPT-125m preset computed on the CPU in f32, and each step's top-2 logit
/// margin (from one forward over the prompt and the tokens).
fn cpu_greedy_with_margins(model: &Path, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let (mut cpu, _) = CandleDevice::open(&DeviceSpec::Cpu, None).unwrap();
    let mut engine = load(&mut cpu, model, Some(DType::F32));
    let tokens = engine
        .run(&greedy(prompt, n), &mut |_| true)
        .unwrap()
        .new_tokens;
    let ids: Vec<u32> = [prompt, &tokens[..]].concat();
    let logits: Vec<Vec<f32>> = engine.logits(&ids).unwrap().to_vec2().unwrap();
    let margins = (0..n)
        .map(|step| {
            let mut row = logits[prompt.len() - 1 + step].clone();
            row.sort_by(|a, b| b.total_cmp(a));
            row[0] - row[1]
        })
        .collect();
    (tokens, margins)
}

#[actix_rt::test]
async fn engines_on_two_gpus_attach_at_the_same_time() {
    let _gpu = GPU_LOCK.lock().await;
    let gpus = worker_controller::load::cuda::device_count().unwrap();
    let expected: usize = std::env::var("WC_EXPECT_GPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if gpus < 2 {
        assert!(
            expected < 2,
            "WC_EXPECT_GPUS={expected} but this machine has {gpus} GPU(s)"
        );
        println!("two-GPU attach skipped: this machine has {gpus} GPU(s)");
        return;
    }
    let model = opt_125m("two-gpus");
    let worker = |index| WorkerConfig {
        device: DeviceSpec::Cuda(index),
        count: 1,
        prewarm: PrewarmOptions {
            dtypes: vec![DType::F16, DType::F32],
            host_cache_bytes: 0,
            ..Default::default()
        },
    };
    let config = RuntimeConfig {
        workers: vec![worker(0), worker(1)],
        ..Default::default()
    };
    let handle = Runtime::start(config, Arc::new(CandleBackend::default()));
    handle.wait_ready().await.unwrap();
    let prompt = [2u32, 100, 200];
    let attach_on = |gpu: usize, dtype: DType| {
        let handle = handle.clone();
        let spec = spec(&model, Some(dtype));
        async move {
            let report = handle
                .attach(Attach::new(spec).on_worker(gpu))
                .await
                .unwrap();
            let tokens = handle
                .generate(report.engine_id, greedy(&prompt, 8))
                .await
                .unwrap()
                .new_tokens;
            handle.detach(report.engine_id).await.unwrap();
            (report.total_ms, tokens)
        }
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    const ROUNDS: usize = 9;
    let (mut alone, mut together) = ([vec![], vec![]], [vec![], vec![]]);
    for _ in 0..ROUNDS {
        for (gpu, times) in alone.iter_mut().enumerate() {
            times.push(attach_on(gpu, DType::F16).await.0);
        }
        let ((t0, tokens0), (t1, tokens1)) =
            tokio::join!(attach_on(0, DType::F16), attach_on(1, DType::F16));
        assert_eq!(
            tokens0, tokens1,
            "the same weights give the same tokens on both GPUs"
        );
        together[0].push(t0);
        together[1].push(t1);
    }
    for gpu in 0..2 {
        let (a, t) = (median(alone[gpu].clone()), median(together[gpu].clone()));
        println!(
            "cuda:{gpu} attach to first token p50 of {ROUNDS}: alone {a:.2} ms, both GPUs at once \
             {t:.2} ms ({:.2}x); alone {:?}, together {:?}",
            t / a,
            alone[gpu],
            together[gpu]
        );
        assert!(
            t <= 1.5 * a,
            "cuda:{gpu}: {t:.2} ms together vs {a:.2} ms alone"
        );
    }
    // f32 on both GPUs against the CPU, step by step while the CPU's margins leave room for
    // f32 rounding differences.
    let (cpu, margins) = cpu_greedy_with_margins(&model, &prompt, 8);
    let comparable = margins.iter().take_while(|m| **m >= 1e-3).count();
    println!("CPU f32 greedy {cpu:?}, margins {margins:?}: comparing {comparable} steps");
    assert!(comparable > 0, "no step with a usable margin");
    for gpu in 0..2 {
        let (_, tokens) = attach_on(gpu, DType::F32).await;
        assert_eq!(
            tokens[..comparable],
            cpu[..comparable],
            "cuda:{gpu} f32 vs CPU"
        );
    }
    handle.shutdown().await;
}

const LLAMA_FIXTURES: [&str; 4] = ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3"];

/// A Llama-family fixture built on `device` in `dtype` (weights converted on the device).
fn llama_on(device: &Device, name: &str, dtype: CandleDType) -> LlamaEngine {
    let dir = fixture(name);
    let Some(config) = FamilyConfig::from_file(&dir.join("config.json"))
        .unwrap()
        .get::<LlamaConfig>()
        .cloned()
    else {
        panic!("{name} is not a Llama-family config");
    };
    let file = WeightFile::read(&dir.join("model.safetensors")).unwrap();
    let weights = DeviceWeights::upload(&[Arc::new(file)], device, dtype).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let model = LlamaModel::new(config, &weights).unwrap();
    LlamaEngine::new(
        model,
        Some(std::sync::Arc::new(tokenizer)),
        weights.device_bytes,
    )
    .with_checkpoint_files(&dir)
    .unwrap()
}

#[test]
fn llama_family_fixtures_match_transformers_on_the_gpu() {
    let _gpu = serial();
    let device = Device::new_cuda(0).unwrap();
    let mut failures = Vec::new();
    for name in LLAMA_FIXTURES {
        let reference = reference(name);
        let engine = llama_on(&device, name, CandleDType::F32);
        let diff = reference
            .cases
            .iter()
            .map(|case| max_abs_diff(&engine.logits(&case.input_ids).unwrap(), &case.logits))
            .fold(0.0, f32::max);
        println!("{name}: f32 max abs logit diff on cuda:0 = {diff:e} (limit {F32_LOGIT_TOL:e})");
        if diff >= F32_LOGIT_TOL {
            failures.push(format!("{name} f32 logits: max abs diff {diff}"));
        }
        // Every prompt and conversation whose greedy margins leave room for the precision.
        let streams = greedy_streams(&reference);
        for dtype in [CandleDType::F16, CandleDType::BF16] {
            let mut engine = llama_on(&device, name, dtype);
            let (mut compared, mut skipped) = (0, 0);
            for (i, (ids, expected, margin)) in streams.iter().enumerate() {
                if margin.is_none_or(|m| m < MIN_MARGIN) {
                    skipped += 1;
                    continue;
                }
                compared += 1;
                let out = engine
                    .run(&greedy(ids, expected.len()), &mut |_| true)
                    .unwrap();
                if out.new_tokens != *expected {
                    failures.push(format!(
                        "{name} {dtype:?} stream {i} (margin {margin:?}): {:?} != {expected:?}",
                        out.new_tokens
                    ));
                }
            }
            println!("{name} {dtype:?}: {compared} greedy streams compared, {skipped} skipped (margin < {MIN_MARGIN})");
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Every prompt and conversation of a fixture's reference: `(prompt ids, greedy new tokens, the
/// smallest top-2 logit margin along the way)`.
fn greedy_streams(reference: &Reference) -> Vec<(&[u32], &[u32], Option<f32>)> {
    let prompts = reference.cases.iter().map(|c| {
        (
            &c.input_ids[..],
            &c.greedy_new_tokens[..],
            c.min_top2_margin,
        )
    });
    let chats = reference.chat_cases.iter().map(|c| {
        (
            &c.input_ids[..],
            &c.greedy_new_tokens[..],
            c.min_top2_margin,
        )
    });
    prompts.chain(chats).collect()
}

#[test]
fn llama_family_fixtures_through_the_pinned_upload_and_the_host_cache() {
    let _gpu = serial();
    let mut device = gpu_with(PrewarmOptions {
        dtypes: vec![DType::F16, DType::BF16],
        ..Default::default()
    });
    let mut failures = Vec::new();
    for name in LLAMA_FIXTURES {
        let reference = reference(name);
        let streams: Vec<_> = greedy_streams(&reference)
            .into_iter()
            .filter(|(_, _, margin)| margin.is_some_and(|m| m >= MIN_MARGIN))
            .collect();
        let counts = counts_of(&device);
        // The first load reads the file; the other three come from the pinned host cache.
        for dtype in [DType::F16, DType::F16, DType::BF16, DType::BF16] {
            let (mut engine, _) = device
                .load_engine(&spec(fixture(name), Some(dtype)), &mut Timeline::default())
                .unwrap();
            for (i, (ids, expected, margin)) in streams.iter().enumerate() {
                let out = engine
                    .generate(&greedy(ids, expected.len()), &mut |_| true)
                    .unwrap();
                if out.new_tokens != *expected {
                    failures.push(format!(
                        "{name} {dtype} stream {i} (margin {margin:?}): {:?} != {expected:?}",
                        out.new_tokens
                    ));
                }
            }
        }
        assert_eq!(
            counts_of(&device),
            (counts.0 + 4, counts.1 + 3),
            "{name}: one read, three host-cache hits"
        );
        println!(
            "{name}: {} streams x 4 loads (f16, bf16) through the pinned path",
            streams.len()
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Greedy streams and logits of three prompts of `name` decoded together by `graphed` (its slab
/// reserved whole, so that its decode passes are captured) and by `eager`; what differs.
fn graphed_against_eager<M: worker_controller::models::CausalLm>(
    name: &str,
    dtype: CandleDType,
    eager: &M,
    graphed: &M,
    counts: impl Fn(&M) -> (usize, usize),
) -> Vec<String> {
    let mut failures = Vec::new();
    // Graphs hold the slab's addresses: only a slab reserved whole is captured.
    graphed.kv_slab().reserve(4096).unwrap();
    let compared = common::decoding::decode_both(name, eager, graphed);
    let (buckets, captured) = counts(graphed);
    println!("{name} {dtype:?}: {buckets} buckets, {captured} graphs captured");
    if captured == 0 {
        failures.push(format!("{name} {dtype:?}: no graph was captured"));
    }
    if compared.streams != compared.plain_streams {
        failures.push(format!(
            "{name} {dtype:?}: graphed {:?} != eager {:?}",
            compared.streams, compared.plain_streams
        ));
    }
    let diff = compared.logit_diff;
    let limit = if dtype == CandleDType::F32 { 1e-3 } else { 0.1 };
    println!("{name} {dtype:?}: graphed logits within {diff:e} of eager (limit {limit})");
    if diff > limit {
        failures.push(format!("{name} {dtype:?}: logits differ by {diff}"));
    }
    if dtype == CandleDType::F32 && compared.streams != compared.expected {
        failures.push(format!("{name} f32: not transformers' streams"));
    }
    failures
}

#[test]
fn decode_passes_replayed_as_cuda_graphs_equal_the_eager_passes() {
    use common::decoding::{llama_model, opt_model};
    use worker_controller::models::layers::decode_graph::GraphMode;
    let _gpu = serial();
    let device = Device::new_cuda(0).unwrap();
    // As a worker's device is: one stream, no cross-stream events (a capture needs that).
    if let Device::Cuda(cuda) = &device {
        worker_controller::load::cuda::single_stream(cuda);
    }
    let mut failures = Vec::new();
    for dtype in [CandleDType::F32, CandleDType::BF16] {
        for name in LLAMA_FIXTURES {
            let dir = fixture(name);
            let eager = llama_model(&dir, &device, dtype, GraphMode::Off);
            let graphed = llama_model(&dir, &device, dtype, GraphMode::Captured);
            let counts = |m: &LlamaModel| m.decode_graph_counts();
            failures.extend(graphed_against_eager(name, dtype, &eager, &graphed, counts));
        }
        for name in FIXTURES {
            let dir = fixture(name);
            let eager = opt_model(&dir, &device, dtype, GraphMode::Off);
            let graphed = opt_model(&dir, &device, dtype, GraphMode::Captured);
            let counts = |m: &worker_controller::models::OptModel| m.decode_graph_counts();
            failures.extend(graphed_against_eager(name, dtype, &eager, &graphed, counts));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attention of one query row over the listed key rows, in f64 on the host: `[heads, head_dim]`.
#[allow(clippy::too_many_arguments)]
fn attention_by_hand(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rows: &[usize],
    heads: usize,
    kv_heads: usize,
    slots: usize,
    head_dim: usize,
    scale: f64,
) -> Vec<f32> {
    let group = heads / kv_heads;
    let mut out = vec![0f32; heads * head_dim];
    for h in 0..heads {
        let kv = h / group;
        let at = |t: &[f32], row: usize, d: usize| t[(kv * slots + row) * head_dim + d] as f64;
        let scores: Vec<f64> = rows
            .iter()
            .map(|&r| {
                (0..head_dim)
                    .map(|d| q[h * head_dim + d] as f64 * at(k, r, d))
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
        let sum: f64 = weights.iter().sum();
        for d in 0..head_dim {
            let value: f64 = rows
                .iter()
                .zip(&weights)
                .map(|(&r, w)| w * at(v, r, d))
                .sum();
            out[h * head_dim + d] = (value / sum) as f32;
        }
    }
    out
}

#[test]
fn the_decode_attention_kernel_reads_each_sequence_through_its_slot_table() {
    use worker_controller::models::layers::attention::Heads;
    use worker_controller::models::layers::decode_attention;
    let _gpu = serial();
    let device = Device::new_cuda(0).unwrap();
    // Shapes of Llama 3 8B (32/8 heads of 128), Qwen 2.5 (28/4), OPT (12/12 of 64), 256-wide and
    // the fixtures' (4/2 of 32).
    let shapes = [
        (32, 8, 128),
        (28, 4, 128),
        (12, 12, 64),
        (8, 2, 256),
        (4, 2, 32),
    ];
    let mut failures = Vec::new();
    for (heads, kv_heads, head_dim) in shapes {
        for window in [None, Some(5)] {
            let (seqs, slots, table_len) = (3, 2000, 1500);
            let lens = [1usize, 37, 1500];
            // Each sequence's slots scattered over the slab (a permutation, strided).
            let table: Vec<u32> = (0..seqs * table_len)
                .map(|i| ((i * 7919 + 13) % slots) as u32)
                .collect();
            let numbers = |n: usize, seed: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| (((i * 2654435761 + seed) % 1000) as f32 / 500.0) - 1.0)
                    .collect()
            };
            let q = numbers(seqs * heads * head_dim, 1);
            let k = numbers(kv_heads * slots * head_dim, 2);
            let v = numbers(kv_heads * slots * head_dim, 3);
            let scale = (head_dim as f64).powf(-0.5);
            let shape = Heads {
                heads,
                kv_heads,
                head_dim,
                scale: Some(scale),
                window,
            };
            for dtype in [CandleDType::F32, CandleDType::BF16] {
                let on = |data: &[f32], dims: &[usize]| {
                    Tensor::from_slice(data, dims, &device)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                };
                let qt = on(&q, &[seqs, heads, head_dim]);
                assert!(decode_attention::applies(&qt, &shape));
                let table_t = Tensor::from_slice(&table, (seqs, table_len), &device).unwrap();
                let lens32: Vec<u32> = lens.iter().map(|&l| l as u32).collect();
                let lens_t = Tensor::from_slice(&lens32, seqs, &device).unwrap();
                let got = decode_attention::attend(
                    &qt,
                    &on(&k, &[kv_heads, slots, head_dim]),
                    &on(&v, &[kv_heads, slots, head_dim]),
                    &table_t,
                    &lens_t,
                    &shape,
                )
                .unwrap();
                let got: Vec<Vec<f32>> = got.to_dtype(CandleDType::F32).unwrap().to_vec2().unwrap();
                // The host reference reads what the device read (bf16-rounded inputs).
                let back = |t: Tensor| -> Vec<f32> {
                    t.to_dtype(CandleDType::F32)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap()
                };
                let (qr, kr, vr) = (
                    back(on(&q, &[q.len()])),
                    back(on(&k, &[k.len()])),
                    back(on(&v, &[v.len()])),
                );
                let mut worst = 0f32;
                for s in 0..seqs {
                    let first = window.map_or(0, |w| lens[s].saturating_sub(w));
                    let rows: Vec<usize> = (first..lens[s])
                        .map(|j| table[s * table_len + j] as usize)
                        .collect();
                    let q_row = &qr[s * heads * head_dim..(s + 1) * heads * head_dim];
                    let want = attention_by_hand(
                        q_row, &kr, &vr, &rows, heads, kv_heads, slots, head_dim, scale,
                    );
                    let diff = common::decoding::largest_difference(&got[s], &want);
                    worst = worst.max(diff);
                }
                let limit = if dtype == CandleDType::F32 {
                    1e-4
                } else {
                    2e-2
                };
                println!(
                    "decode attention {heads}/{kv_heads}x{head_dim} window {window:?} {dtype:?}: \
                     max abs diff {worst:e} (limit {limit})"
                );
                if worst > limit {
                    failures.push(format!(
                        "{heads}/{kv_heads}x{head_dim} {window:?} {dtype:?}: {worst}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
