//! Continuous batching through the actor runtime with the real backend on CPU, or on the device
//! `WC_TEST_DEVICE` names (workers on threads): greedy outputs identical alone and among 16 concurrent requests for every fixture
//! with a reference, the KV-cache budget (waiting for room, refusing what never fits), a
//! cancelled stream freeing its room, the sampling parameters that run through the batch, and
//! the engine's load (batch, queue, KV-cache reservation) in the engine listing and the stats.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::meeting::MeetingBackend;
use common::{fixture, reference, scratch, slow_model, Case};
use wc_actors::{
    Attach, DeviceSpec, EngineId, EngineInfo, ErrorKind, FinishReason, GenerateError,
    GenerateRequest, Handle, ModelSpec, PrewarmOptions, Prompt, Runtime, RuntimeConfig,
    RuntimeOptions, WorkerConfig,
};
use worker_controller::CandleBackend;

/// A guard against hangs only (never a timing assertion): far above what any step here takes.
const HANG_GUARD: Duration = Duration::from_secs(300);

/// Every bundled fixture with a `reference.json` of greedy tokens.
const FIXTURES: [&str; 6] = [
    "tiny-opt-prenorm",
    "tiny-opt-postnorm-proj",
    "tiny-llama",
    "tiny-mistral",
    "tiny-qwen2",
    "tiny-qwen3",
];

/// The device these tests run on: the CPU, or the one `WC_TEST_DEVICE` names (the GPU session
/// runs this file's CUDA build with `WC_TEST_DEVICE=cuda:0`).
fn device() -> DeviceSpec {
    std::env::var("WC_TEST_DEVICE")
        .map(|d| d.parse().expect("WC_TEST_DEVICE names a device"))
        .unwrap_or(DeviceSpec::Cpu)
}

fn start(kv_cache_tokens: usize) -> Handle {
    start_with(kv_cache_tokens, Arc::new(CandleBackend::default()))
}

fn start_with(kv_cache_tokens: usize, backend: Arc<dyn wc_actors::Backend>) -> Handle {
    let config = RuntimeConfig {
        workers: vec![WorkerConfig {
            device: device(),
            count: 1,
            prewarm: PrewarmOptions {
                kv_cache_tokens,
                ..PrewarmOptions::default()
            },
        }],
        options: RuntimeOptions {
            attach_timeout: Duration::from_secs(60),
            ..RuntimeOptions::default()
        },
    };
    Runtime::start(config, backend)
}

async fn attach(handle: &Handle, name: &str) -> EngineId {
    attach_dir(handle, &fixture(name)).await
}

async fn attach_dir(handle: &Handle, dir: &std::path::Path) -> EngineId {
    handle.wait_ready().await.unwrap();
    let spec = ModelSpec {
        model: dir.display().to_string(),
        dtype: None,
        canonical: false,
        park: None,
    };
    handle.attach(Attach::new(spec)).await.unwrap().engine_id
}

/// Lists engines until the only one satisfies `ready` (the caller's hang guard bounds it).
async fn engine_when(handle: &Handle, ready: impl Fn(&EngineInfo) -> bool) -> EngineInfo {
    loop {
        let engines = handle.list_engines().await.unwrap();
        if let Some(engine) = engines.into_iter().find(|e| ready(e)) {
            return engine;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn greedy(case: &Case) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Ids(case.input_ids.clone()),
        max_new_tokens: case.greedy_new_tokens.len(),
        ignore_eos: true,
        ..Default::default()
    }
}

/// A request unlike the reference ones: another prompt and length, sampled or greedy.
fn filler(index: usize, vocab: u32) -> GenerateRequest {
    let ids = (0..2 + index % 7).map(|j| 3 + ((index * 13 + j * 5) as u32 % (vocab - 3)));
    GenerateRequest {
        prompt: Prompt::Ids(ids.collect()),
        max_new_tokens: 3 + index * 2,
        ignore_eos: true,
        temperature: if index % 2 == 0 { 0.0 } else { 0.8 },
        seed: Some(index as u64),
        ..Default::default()
    }
}

#[actix_rt::test]
async fn greedy_outputs_are_the_same_alone_and_among_sixteen_concurrent_requests() {
    let run = async {
        // The wrapper (meeting no one) records the largest batch each step ran.
        let backend = Arc::new(MeetingBackend::new(CandleBackend::default(), 1));
        let meeting = backend.meeting.clone();
        let handle = start_with(32768, backend);
        for name in FIXTURES {
            let engine = attach(&handle, name).await;
            let cases = reference(name).cases;
            let vocab = cases[0].logits[0].len() as u32;
            let mut alone_texts = Vec::new();
            for case in &cases {
                let alone = handle.generate(engine, greedy(case)).await.unwrap();
                assert_eq!(alone.new_tokens, case.greedy_new_tokens, "{name} alone");
                alone_texts.push(alone.text);
            }
            // The reference cases among fillers: 16 requests at once, the cases in the middle.
            let mut requests: Vec<(Option<(&Case, &String)>, GenerateRequest)> = (0..16
                - cases.len())
                .map(|i| (None, filler(i, vocab)))
                .collect();
            for (i, case) in cases.iter().enumerate() {
                requests.insert(3 + 4 * i, (Some((case, &alone_texts[i])), greedy(case)));
            }
            let before = meeting.largest_batch();
            assert!(
                before <= 1,
                "{name}: one request at a time so far ({before})"
            );
            let runs = requests
                .iter()
                .map(|(_, request)| handle.generate(engine, request.clone()));
            let outputs = futures_util::future::join_all(runs).await;
            // The sixteen shared steps: "among" is not "one after another".
            let shared = meeting.largest_batch();
            assert!(shared > 1, "{name}: the largest batch stepped was {shared}");
            meeting.reset_largest_batch();
            for ((case, request), output) in requests.iter().zip(outputs) {
                let output = output.unwrap();
                assert_eq!(output.new_tokens.len(), request.max_new_tokens, "{name}");
                if let Some((case, alone_text)) = case {
                    assert_eq!(
                        output.new_tokens, case.greedy_new_tokens,
                        "{name} {:?} among 16",
                        case.prompt
                    );
                    assert_eq!(&output.text, *alone_text, "{name} {:?}", case.prompt);
                }
            }
            handle.detach(engine).await.unwrap();
        }
        handle.shutdown().await;
    };
    tokio::time::timeout(HANG_GUARD, run).await.unwrap();
}

#[actix_rt::test]
async fn requests_wait_for_room_in_the_budget_and_one_that_never_fits_is_refused() {
    let run = async {
        // Room for one request of 4 prompt tokens and 20 new ones at a time.
        let handle = start(30);
        let engine = attach(&handle, "tiny-opt-prenorm").await;
        let request = |first: u32| GenerateRequest {
            prompt: Prompt::Ids(vec![2, first, 7, 9]),
            max_new_tokens: 20,
            ignore_eos: true,
            ..Default::default()
        };
        let runs = (0..4).map(|i| handle.generate(engine, request(10 + i)));
        for output in futures_util::future::join_all(runs).await {
            assert_eq!(output.unwrap().new_tokens.len(), 20);
        }
        let too_big = GenerateRequest {
            max_new_tokens: 27,
            ..request(10)
        };
        match handle.generate(engine, too_big).await {
            Err(GenerateError::Engine(e)) => {
                assert_eq!(e.kind, ErrorKind::InvalidRequest);
                assert!(e.message.contains("KV-cache"), "{}", e.message);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        handle.shutdown().await;
    };
    tokio::time::timeout(HANG_GUARD, run).await.unwrap();
}

#[actix_rt::test]
async fn a_cancelled_stream_frees_its_room_at_the_next_step() {
    let run = async {
        let dir = scratch("batching-cancel");
        let slow = slow_model(&dir);
        // The budget holds the long request (3 + 3000 tokens) or the short one (3 + 200), not
        // both: the short one runs only once the long one's room is free, and on the slow
        // model the long one takes far longer to finish than the test waits.
        let backend = Arc::new(MeetingBackend::new(CandleBackend::default(), 1));
        let meeting = backend.meeting.clone();
        let handle = start_with(3100, backend);
        let engine = attach_dir(&handle, &slow).await;
        let request = |max_new_tokens| GenerateRequest {
            prompt: Prompt::Ids(vec![2, 11, 12]),
            max_new_tokens,
            ignore_eos: true,
            ..Default::default()
        };
        let mut stream = handle.generate_stream(engine, request(3000));
        assert!(stream.tokens.recv().await.is_some(), "a first token");
        drop(stream);
        let next = handle.generate(engine, request(200)).await.unwrap();
        assert_eq!(next.new_tokens.len(), 200);
        assert_eq!(next.finish_reason, FinishReason::Length);
        // The cancelled sequence (the engine actor's first, id 1) left the batch: it was
        // cancelled once, made no token after that, and stopped far short of its 3000.
        assert_eq!(meeting.cancels(), 1, "one sequence cancelled");
        assert_eq!(meeting.tokens_after_cancel(), 0, "stepped after its cancel");
        let made = meeting.tokens_of(1);
        assert!(
            (1..3000).contains(&made),
            "the cancelled one made {made} tokens"
        );
        assert_eq!(meeting.tokens_of(2), 200);
        // Only the second request ran to its end: the engine counts its 200 tokens only.
        let settled = engine_when(&handle, |e| {
            e.requests_running == 0 && e.requests_waiting == 0
        })
        .await;
        assert_eq!(settled.total_tokens, 200, "{settled:?}");
        assert_eq!(settled.kv_cache_tokens_reserved, 0, "{settled:?}");
        handle.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    };
    tokio::time::timeout(HANG_GUARD, run).await.unwrap();
}

#[actix_rt::test]
async fn a_request_asking_for_zero_tokens_finishes_at_once() {
    let run = async {
        let handle = start(32768);
        let engine = attach(&handle, "tiny-opt-prenorm").await;
        let output = handle
            .generate(
                engine,
                GenerateRequest {
                    prompt: Prompt::Ids(vec![2, 5]),
                    max_new_tokens: 0,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(output.new_tokens.is_empty());
        assert_eq!(output.finish_reason, FinishReason::Length);
        handle.shutdown().await;
    };
    tokio::time::timeout(HANG_GUARD, run).await.unwrap();
}

#[actix_rt::test]
async fn the_listing_shows_the_batch_the_requests_waiting_for_room_and_the_kv_reservation() {
    let run = async {
        let dir = scratch("batching-load");
        let slow = slow_model(&dir);
        // Each request reserves 4 + 600 tokens: the budget holds two of the three at a time.
        let handle = start(1500);
        let engine = attach_dir(&handle, &slow).await;
        let idle = engine_when(&handle, |_| true).await;
        assert_eq!(
            (idle.kv_cache_tokens_reserved, idle.kv_cache_tokens_budget),
            (0, 1500)
        );
        let long = |first: u32| GenerateRequest {
            prompt: Prompt::Ids(vec![2, first, 7, 9]),
            max_new_tokens: 600,
            ignore_eos: true,
            ..Default::default()
        };
        let streams: Vec<_> = (0..3)
            .map(|i| handle.generate_stream(engine, long(10 + i)))
            .collect();
        let busy = engine_when(&handle, |e| {
            e.requests_running == 2 && e.requests_waiting == 1
        })
        .await;
        assert_eq!(busy.kv_cache_tokens_reserved, 2 * 604, "{busy:?}");
        assert_eq!(busy.kv_cache_tokens_budget, 1500);
        assert_eq!(busy.kv_cache_usage, 1208.0 / 1500.0);
        let stats = handle.stats().await.unwrap();
        assert_eq!((stats.requests_running, stats.requests_waiting), (2, 1));
        assert_eq!(
            (stats.kv_cache_tokens_reserved, stats.kv_cache_tokens_budget),
            (1208, 1500)
        );

        // The first request leaves early: the third takes its room.
        let mut streams = streams.into_iter();
        drop(streams.next());
        let moved = engine_when(&handle, |e| e.requests_waiting == 0).await;
        assert_eq!(moved.requests_running, 2, "{moved:?}");
        assert_eq!(moved.kv_cache_tokens_reserved, 1208);
        for stream in streams {
            assert_eq!(stream.output.await.unwrap().new_tokens.len(), 600);
        }
        // A request counts until its answer reaches the controller, just after the engine wrote
        // its batch empty: wait for both.
        let done = engine_when(&handle, |e| {
            e.requests_running == 0 && e.requests_waiting == 0
        })
        .await;
        assert_eq!(done.kv_cache_tokens_reserved, 0);
        assert_eq!(done.kv_cache_usage, 0.0);
        let stats = handle.stats().await.unwrap();
        assert_eq!(
            (stats.requests_running, stats.kv_cache_tokens_reserved),
            (0, 0)
        );
        handle.shutdown().await;
    };
    tokio::time::timeout(HANG_GUARD, run).await.unwrap();
}
