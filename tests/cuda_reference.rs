//! On a GPU (`--features cuda`): the fixtures match transformers (f32 logits within 1e-3, f16 greedy
//! tokens equal) and attach/detach cycles give device memory back.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use candle_core::DType as CandleDType;
use common::{fixture, reference, scratch};
use wc_actors::{
    Attach, DType, DeviceSpec, GenerateRequest, ModelSpec, PrewarmOptions, Prompt, Runtime,
    RuntimeConfig, Timeline, WorkerConfig,
};
use worker_controller::{CandleBackend, CandleDevice};

const FIXTURES: [&str; 2] = ["tiny-opt-prenorm", "tiny-opt-postnorm-proj"];

fn gpu() -> CandleDevice {
    CandleDevice::open(&DeviceSpec::Cuda(0), Some(&PrewarmOptions::default()))
        .unwrap()
        .0
}

#[test]
fn f32_logits_match_transformers_within_1e3_on_the_gpu() {
    let mut device = gpu();
    for name in FIXTURES {
        let spec = ModelSpec {
            model: fixture(name).display().to_string(),
            dtype: Some(DType::F32),
        };
        let (engine, _) = device.load_opt(&spec, &mut Timeline::default()).unwrap();
        for case in reference(name).cases {
            let logits: Vec<Vec<f32>> = engine
                .logits(&case.input_ids)
                .unwrap()
                .to_dtype(CandleDType::F32)
                .unwrap()
                .to_vec2()
                .unwrap();
            let diff = logits
                .iter()
                .zip(&case.logits)
                .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
                .fold(0.0f32, f32::max);
            println!("{name}: f32 max abs diff on cuda:0 = {diff:e}");
            assert!(diff < 1e-3, "{name}: {diff}");
        }
    }
}

#[test]
fn f16_greedy_tokens_equal_transformers_on_the_gpu() {
    let mut device = gpu();
    for name in FIXTURES {
        let spec = ModelSpec {
            model: fixture(name).display().to_string(),
            dtype: Some(DType::F16),
        };
        let (mut engine, _) = device.load_opt(&spec, &mut Timeline::default()).unwrap();
        for case in reference(name).cases {
            let request = GenerateRequest {
                prompt: Prompt::Ids(case.input_ids.clone()),
                max_new_tokens: case.greedy_new_tokens.len(),
                ignore_eos: true,
                ..Default::default()
            };
            let out = engine.run(&request, &mut |_| true).unwrap();
            assert_eq!(out.new_tokens, case.greedy_new_tokens, "{name} f16");
        }
    }
}

/// Writes the OPT-125m preset (random weights, f16) once per test process.
fn opt_125m() -> String {
    let dir = scratch("opt-125m-f16");
    let config = worker_controller::opt::presets::preset("opt-125m").unwrap();
    worker_controller::opt::presets::write_checkpoint(&config, CandleDType::F16, &dir, 0).unwrap();
    dir.display().to_string()
}

#[actix_rt::test]
async fn a_hundred_attach_detach_cycles_return_device_memory() {
    let model = opt_125m();
    let config = RuntimeConfig {
        workers: vec![WorkerConfig {
            device: DeviceSpec::Cuda(0),
            count: 1,
            prewarm: PrewarmOptions {
                dtypes: vec![DType::F16],
                ..Default::default()
            },
        }],
        ..Default::default()
    };
    let handle = Runtime::start(config, Arc::new(CandleBackend));
    let workers = handle.wait_ready().await.unwrap();
    let baseline = workers[0].memory.unwrap().free_bytes;
    let mut last = None;
    for _ in 0..100 {
        let spec = ModelSpec {
            model: model.clone(),
            dtype: Some(DType::F16),
        };
        let report = handle.attach(Attach::new(spec)).await.unwrap();
        last = Some(handle.detach(report.engine_id).await.unwrap());
    }
    let last = last.unwrap();
    let after = last.memory_after_detach.free_bytes;
    let drift = baseline as i64 - after as i64;
    println!(
        "cuda:0 free bytes: baseline {baseline}, attached {}, after 100 cycles {after}, drift {:.1} MiB",
        last.memory_attached.free_bytes,
        drift as f64 / (1 << 20) as f64
    );
    assert!(
        drift.abs() < 64 << 20,
        "free memory drifted by {drift} bytes"
    );
    handle.shutdown().await;
}

#[actix_rt::test]
async fn engines_on_two_gpus_attach_at_the_same_time() {
    let gpus = worker_controller::cuda::device_count().unwrap();
    if gpus < 2 {
        println!("two-GPU attach skipped: this machine has {gpus} GPU(s)");
        return;
    }
    let model = opt_125m();
    let worker = |index| WorkerConfig {
        device: DeviceSpec::Cuda(index),
        count: 1,
        prewarm: PrewarmOptions {
            dtypes: vec![DType::F16],
            host_cache_bytes: 0,
            ..Default::default()
        },
    };
    let config = RuntimeConfig {
        workers: vec![worker(0), worker(1)],
        ..Default::default()
    };
    let handle = Runtime::start(config, Arc::new(CandleBackend));
    handle.wait_ready().await.unwrap();
    let spec = ModelSpec {
        model: model.clone(),
        dtype: Some(DType::F16),
    };
    let attach_on = |gpu: usize| {
        let handle = handle.clone();
        let spec = spec.clone();
        async move {
            let report = handle
                .attach(Attach::new(spec).on_worker(gpu))
                .await
                .unwrap();
            let request = GenerateRequest {
                prompt: Prompt::Ids(vec![2, 100, 200]),
                max_new_tokens: 8,
                ignore_eos: true,
                ..Default::default()
            };
            let tokens = handle
                .generate(report.engine_id, request)
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
    let (mut alone, mut together) = (vec![Vec::new(), Vec::new()], vec![Vec::new(), Vec::new()]);
    for _ in 0..9 {
        for gpu in 0..2 {
            alone[gpu].push(attach_on(gpu).await.0);
        }
        let ((t0, tokens0), (t1, tokens1)) = tokio::join!(attach_on(0), attach_on(1));
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
            "cuda:{gpu} attach to first token p50: alone {a:.2} ms, both GPUs at once {t:.2} ms ({:.2}x)",
            t / a
        );
    }
    handle.shutdown().await;
}
