//! The actor runtime with the real OPT backend on CPU: attach, generate, stream, detach and errors, against the fixtures' references.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::meeting::MeetingBackend;
use common::{copy_fixture, fixture, reference, Case};
use wc_actors::{
    Anchor, Attach, AttachError, AttachReport, DeviceSpec, EngineId, ErrorKind, FinishReason,
    GenerateRequest, Handle, ModelSpec, PrewarmOptions, Prompt, Runtime, RuntimeConfig,
    RuntimeOptions, WorkerConfig, WorkerState,
};
use worker_controller::CandleBackend;

const PRENORM: &str = "tiny-opt-prenorm";
const POSTNORM: &str = "tiny-opt-postnorm-proj";

/// A guard against hangs only (never a timing assertion): far above what any step here takes.
const HANG_GUARD: Duration = Duration::from_secs(300);

fn spec(dir: &Path) -> ModelSpec {
    ModelSpec {
        model: dir.display().to_string(),
        dtype: None,
        canonical: false,
        park: None,
    }
}

/// Bytes of tensor data in a safetensors file: everything after the 8-byte length and the header.
/// Bytes of the KV slab an engine of the checkpoint in `dir` reserves at attach: the worker's
/// default budget of tokens.
fn kv_slab_bytes(dir: &Path) -> u64 {
    let footprint = worker_controller::backend::inspect(&spec(dir))
        .unwrap()
        .footprint;
    footprint.kv_bytes_per_token * PrewarmOptions::default().kv_cache_tokens as u64
}

fn safetensors_data_bytes(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    bytes.len() as u64 - 8 - header_len
}

/// `count` CPU workers with `prewarm`, and an attach timeout long enough to notice waiting.
fn start(count: usize, prewarm: PrewarmOptions) -> Handle {
    Runtime::start(
        runtime_config(count, prewarm),
        Arc::new(CandleBackend::default()),
    )
}

fn runtime_config(count: usize, prewarm: PrewarmOptions) -> RuntimeConfig {
    RuntimeConfig {
        workers: vec![WorkerConfig {
            device: DeviceSpec::Cpu,
            count,
            prewarm,
        }],
        options: RuntimeOptions {
            attach_timeout: Duration::from_secs(60),
            ..RuntimeOptions::default()
        },
    }
}

async fn ready(handle: &Handle) {
    let workers = handle.wait_ready().await.unwrap();
    for w in &workers {
        assert_eq!(
            w.state,
            WorkerState::Idle,
            "worker {} after prewarm",
            w.worker
        );
    }
}

fn greedy(case: &Case) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Text(case.prompt.clone()),
        max_new_tokens: case.greedy_new_tokens.len(),
        ignore_eos: true,
        ..Default::default()
    }
}

/// Generates every reference case of `name` with `engine` and checks tokens and text.
async fn generate_reference(handle: &Handle, engine: EngineId, name: &str) {
    let cases = reference(name).cases;
    assert!(!cases.is_empty(), "{name} has reference cases");
    for case in cases {
        let out = handle.generate(engine, greedy(&case)).await.unwrap();
        assert_eq!(out.prompt_ids, case.input_ids, "{name} {:?}", case.prompt);
        assert_eq!(
            out.new_tokens, case.greedy_new_tokens,
            "{name} {:?}",
            case.prompt
        );
        assert_eq!(out.text, case.greedy_text, "{name} {:?}", case.prompt);
        assert_eq!(out.finish_reason, FinishReason::Length);
    }
}

/// What every attach report to a prewarmed worker must satisfy.
fn check_attach_report(report: &AttachReport, model_dir: &Path) {
    let timeline = &report.timeline;
    for anchor in [
        Anchor::Requested,
        Anchor::WeightsRead,
        Anchor::WeightsOnDevice,
        Anchor::EngineReady,
        Anchor::FirstToken,
    ] {
        assert!(
            timeline.get(anchor).is_some(),
            "{} is marked: {timeline:?}",
            anchor.name()
        );
    }
    let instants: Vec<u64> = Anchor::ALL
        .iter()
        .map(|a| timeline.resolved(*a).unwrap())
        .collect();
    assert!(
        instants.windows(2).all(|w| w[0] <= w[1]),
        "anchors requested..first_token are monotone: {timeline:?}"
    );
    let anchors: Vec<Anchor> = report.phases.iter().map(|p| p.anchor).collect();
    assert_eq!(
        anchors,
        Anchor::ALL[1..],
        "one phase per anchor after requested"
    );
    let sum: f64 = report.phases.iter().map(|p| p.ms).sum();
    assert!(
        (sum - report.total_ms).abs() < 1e-6,
        "phases sum to {sum} but total_ms is {}",
        report.total_ms
    );
    assert!(report.total_ms > 0.0);
    for phase in &report.phases {
        assert!(phase.ms >= 0.0, "{phase:?}");
        if matches!(phase.anchor, Anchor::ProcessStarted | Anchor::DeviceReady) {
            assert_eq!(phase.ms, 0.0, "a prewarmed worker skips {:?}", phase.anchor);
        }
    }
    let data_bytes = safetensors_data_bytes(&model_dir.join("model.safetensors"));
    assert!(data_bytes > 0);
    assert_eq!(report.bytes_moved, data_bytes, "bytes moved");
    assert!(
        report.prewarm.is_some(),
        "the report carries the worker's prewarm"
    );
    assert_eq!(report.model, model_dir.display().to_string());
    assert_eq!(report.device, DeviceSpec::Cpu);
}

#[actix_rt::test]
async fn attach_generate_detach_and_reattach_on_the_same_worker() {
    let run = async {
        let handle = start(1, PrewarmOptions::default());
        ready(&handle).await;
        let dir = fixture(PRENORM);

        let first = handle.attach(Attach::new(spec(&dir))).await.unwrap();
        check_attach_report(&first, &dir);
        assert_eq!(first.worker, 0);
        generate_reference(&handle, first.engine_id, PRENORM).await;
        let detached = handle.detach(first.engine_id).await.unwrap();
        assert_eq!(detached.engine_id, first.engine_id);
        let workers = handle.list_workers().await.unwrap();
        assert_eq!(workers[0].state, WorkerState::Idle);
        assert_eq!(workers[0].engine, None);
        assert!(handle.list_engines().await.unwrap().is_empty());

        let second = handle
            .attach(Attach::new(spec(&dir)).on_worker(0))
            .await
            .unwrap();
        check_attach_report(&second, &dir);
        assert_eq!(second.worker, 0);
        assert_ne!(second.engine_id, first.engine_id, "ids are never reused");
        generate_reference(&handle, second.engine_id, PRENORM).await;
        // The detached engine is gone for good.
        let gone = handle
            .generate(first.engine_id, greedy(&reference(PRENORM).cases[0]))
            .await
            .unwrap_err();
        assert_eq!(gone.status_code(), 404, "{gone}");

        let stats = handle.stats().await.unwrap();
        assert_eq!(stats.attaches_succeeded, 2);
        assert_eq!(stats.detaches, 1);
        handle.shutdown().await;
    };
    tokio::time::timeout(HANG_GUARD, run).await.unwrap();
}

#[actix_rt::test]
async fn two_engines_on_two_workers_generate_concurrently() {
    let run = async {
        // Each engine's step waits (up to 10 s) for the other's to be running too. The wrapper
        // forwards `batch()`, so the engines run the batched path `serve` runs.
        let backend = Arc::new(MeetingBackend::new(CandleBackend::default(), 2));
        let meeting = backend.meeting.clone();
        let handle = Runtime::start(runtime_config(2, PrewarmOptions::default()), backend);
        ready(&handle).await;
        let (pre_dir, post_dir) = (fixture(PRENORM), fixture(POSTNORM));
        let (pre, post) = tokio::join!(
            handle.attach(Attach::new(spec(&pre_dir)).named("pre")),
            handle.attach(Attach::new(spec(&post_dir)).named("post")),
        );
        let (pre, post) = (pre.unwrap(), post.unwrap());
        check_attach_report(&pre, &pre_dir);
        check_attach_report(&post, &post_dir);
        assert_ne!(pre.worker, post.worker, "each engine has its own worker");

        let engines = handle.list_engines().await.unwrap();
        assert_eq!(engines.len(), 2);
        let workers = handle.list_workers().await.unwrap();
        assert!(workers.iter().all(|w| w.state == WorkerState::Serving));

        tokio::join!(
            generate_reference(&handle, pre.engine_id, PRENORM),
            generate_reference(&handle, post.engine_id, POSTNORM),
        );
        assert_eq!(
            meeting.max_running(),
            2,
            "the two engines' steps overlapped"
        );
        assert!(meeting.steps() > 0, "the engines ran batched steps");
        assert_eq!(meeting.generations(), 0, "no one-at-a-time generation");
        // Addressed by name too.
        let case = &reference(POSTNORM).cases[0];
        let by_name = handle.generate("post", greedy(case)).await.unwrap();
        assert_eq!(by_name.new_tokens, case.greedy_new_tokens);
        handle.shutdown().await;
    };
    tokio::time::timeout(HANG_GUARD, run).await.unwrap();
}

/// Also the entry point for plain tokio programs: the runtime on its own thread and system.
#[tokio::test]
async fn streamed_tokens_add_up_to_the_greedy_text() {
    let run = async {
        let config = RuntimeConfig {
            workers: vec![WorkerConfig::default()],
            ..RuntimeConfig::default()
        };
        let handle = Runtime::start_in_background(config, Arc::new(CandleBackend::default()));
        ready(&handle).await;
        let report = handle
            .attach(Attach::new(spec(&fixture(PRENORM))))
            .await
            .unwrap();
        for case in reference(PRENORM).cases {
            let mut stream = handle.generate_stream(report.engine_id, greedy(&case));
            let mut events = Vec::new();
            while let Some(event) = stream.tokens.recv().await {
                events.push(event);
            }
            let out = stream.output.await.unwrap();
            assert_eq!(
                events.len(),
                out.new_tokens.len(),
                "one event per new token"
            );
            let ids: Vec<u32> = events.iter().map(|e| e.id).collect();
            assert_eq!(ids, case.greedy_new_tokens, "{:?}", case.prompt);
            let text: String = events.iter().map(|e| e.text.as_str()).collect();
            assert_eq!(text, case.greedy_text, "{:?}", case.prompt);
            assert_eq!(out.text, case.greedy_text);
        }
        handle.shutdown().await;
    };
    tokio::time::timeout(HANG_GUARD, run).await.unwrap();
}

#[actix_rt::test]
async fn bad_models_fail_with_their_status_and_leave_the_worker_usable() {
    let run = async {
        let handle = start(1, PrewarmOptions::default());
        ready(&handle).await;

        let missing = Path::new("/no/such/model/dir");
        let err = handle
            .attach(Attach::new(spec(missing)).on_worker(0))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AttachError::Load(e) if e.kind == ErrorKind::NotFound),
            "{err:?}"
        );
        assert_eq!(err.status_code(), 404, "{err}");
        assert!(err.to_string().contains("/no/such/model/dir"), "{err}");

        let dir = copy_fixture(PRENORM, "runtime-truncated");
        let weights = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights).unwrap();
        std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
        let err = handle
            .attach(Attach::new(spec(&dir)).on_worker(0))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AttachError::Load(e) if e.kind == ErrorKind::InvalidModel),
            "{err:?}"
        );
        assert_eq!(err.status_code(), 422, "{err}");
        assert_eq!(err.error_type(), "invalid_model");

        let workers = handle.list_workers().await.unwrap();
        assert_eq!(workers[0].state, WorkerState::Idle, "{:?}", workers[0]);
        assert_eq!(workers[0].engine, None);
        assert_eq!(
            workers[0].failures, 0,
            "a bad model is not a worker failure"
        );
        assert!(handle.list_engines().await.unwrap().is_empty());
        let stats = handle.stats().await.unwrap();
        assert_eq!(stats.attaches_failed, 2);

        let good = fixture(PRENORM);
        let report = handle
            .attach(Attach::new(spec(&good)).on_worker(0))
            .await
            .unwrap();
        check_attach_report(&report, &good);
        generate_reference(&handle, report.engine_id, PRENORM).await;
        let _ = std::fs::remove_dir_all(dir);
        handle.shutdown().await;
    };
    tokio::time::timeout(HANG_GUARD, run).await.unwrap();
}

#[actix_rt::test]
async fn a_model_larger_than_the_worker_does_not_fit_at_once() {
    let run = async {
        let handle = start(
            1,
            PrewarmOptions {
                memory_limit_bytes: 1_000_000,
                ..Default::default()
            },
        );
        ready(&handle).await;
        let workers = handle.list_workers().await.unwrap();
        assert_eq!(workers[0].memory.as_ref().unwrap().total_bytes, 1_000_000);
        let dir = fixture(PRENORM);
        // f32 weights: the device needs the stored data and a full KV cache of the worker's
        // budget (2 x layers x hidden x 4 bytes per token).
        let footprint = worker_controller::backend::inspect(&spec(&dir))
            .unwrap()
            .footprint;
        let weights = safetensors_data_bytes(&dir.join("model.safetensors"));
        assert_eq!(footprint.device_bytes, weights);
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let per_token = 2
            * 4
            * config["num_hidden_layers"].as_u64().unwrap()
            * config["hidden_size"].as_u64().unwrap();
        assert_eq!(footprint.kv_bytes_per_token, per_token);
        let needed = weights + per_token * PrewarmOptions::default().kv_cache_tokens as u64;
        assert!(needed > 1_000_000);

        // attach_timeout is 60 s: an answer within 10 s means it did not wait for a worker.
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            handle.attach(Attach::new(spec(&dir))),
        )
        .await
        .expect("DoesNotFit is answered without waiting for the attach timeout");
        let err = result.unwrap_err();
        assert_eq!(
            err,
            AttachError::DoesNotFit {
                needed_bytes: needed,
                free_bytes: 1_000_000
            }
        );
        assert_eq!(err.status_code(), 507);
        let text = err.to_string();
        assert!(
            text.contains(&needed.to_string()) && text.contains("1000000"),
            "{text}"
        );
        let workers = handle.list_workers().await.unwrap();
        assert_eq!(workers[0].state, WorkerState::Idle);
        handle.shutdown().await;
    };
    tokio::time::timeout(HANG_GUARD, run).await.unwrap();
}

#[actix_rt::test]
async fn detach_gives_back_exactly_the_engines_memory() {
    let run = async {
        let handle = start(1, PrewarmOptions::default());
        ready(&handle).await;
        let idle = handle.list_workers().await.unwrap()[0]
            .memory
            .clone()
            .unwrap();
        let dir = fixture(PRENORM);
        let report = handle.attach(Attach::new(spec(&dir))).await.unwrap();
        let engines = handle.list_engines().await.unwrap();
        assert_eq!(engines.len(), 1);
        let device_bytes = engines[0].device_bytes;
        assert_eq!(
            device_bytes,
            safetensors_data_bytes(&dir.join("model.safetensors")) + kv_slab_bytes(&dir),
            "f32 weights held in f32, and the KV slab reserved at attach"
        );
        assert_eq!(report.memory_before, idle);
        assert_eq!(
            report.memory_attached.free_bytes,
            report.memory_before.free_bytes - device_bytes
        );

        let detached = handle.detach(report.engine_id).await.unwrap();
        assert_eq!(detached.memory_before_attach, report.memory_before);
        assert_eq!(detached.memory_attached, report.memory_attached);
        assert_eq!(
            detached.memory_attached.free_bytes,
            detached.memory_before_attach.free_bytes - device_bytes
        );
        assert_eq!(
            detached.memory_after_detach.free_bytes,
            detached.memory_before_attach.free_bytes
        );
        let worker = &handle.list_workers().await.unwrap()[0];
        assert_eq!(worker.memory, Some(detached.memory_after_detach));
        handle.shutdown().await;
    };
    tokio::time::timeout(HANG_GUARD, run).await.unwrap();
}
