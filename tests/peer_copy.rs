//! Peer copies on CPU workers (threads of one process): a model attached (or parked) on one
//! worker and asked for on another is copied from the first worker's memory instead of read
//! from the host, the report says `peer:<worker>` with the weights phases on the usual anchors,
//! the copy answers as the host-path engine does while that one keeps serving, the target's
//! memory is back where it was once the copy is detached, and a peer that fails mid-copy fails
//! that attach alone.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{copy_fixture, fixture, spec};
use wc_actors::{
    Anchor, Attach, AttachError, AttachReport, DeviceSpec, ErrorKind, GenerateRequest, Handle,
    LinkKind, MemoryInfo, ModelSpec, PrewarmOptions, Prompt, Runtime, RuntimeConfig,
    RuntimeOptions, WorkerConfig, WorkerState,
};
use worker_controller::CandleBackend;

fn start(backend: Arc<CandleBackend>, count: usize) -> Handle {
    let config = RuntimeConfig {
        workers: vec![WorkerConfig {
            device: DeviceSpec::Cpu,
            count,
            prewarm: PrewarmOptions {
                kv_cache_tokens: 256,
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

async fn attach_on(
    handle: &Handle,
    model: ModelSpec,
    worker: usize,
    name: &str,
) -> Result<AttachReport, AttachError> {
    handle
        .attach(Attach {
            worker: Some(worker),
            name: Some(name.into()),
            ..Attach::new(model)
        })
        .await
}

/// Greedy tokens of a fixed prompt.
async fn tokens(handle: &Handle, engine: &str) -> Vec<u32> {
    let request = GenerateRequest {
        prompt: Prompt::Ids(vec![1, 5, 7, 9]),
        max_new_tokens: 8,
        ignore_eos: true,
        ..Default::default()
    };
    let out = handle.generate(engine, request).await;
    out.unwrap_or_else(|e| panic!("{engine}: {e}")).new_tokens
}

async fn memory(handle: &Handle, worker: usize) -> MemoryInfo {
    let workers = handle.list_workers().await.unwrap();
    workers[worker].memory.clone().expect("memory reported")
}

fn phase_ms(report: &AttachReport, anchor: Anchor) -> Option<f64> {
    report
        .phases
        .iter()
        .find(|p| p.anchor == anchor)
        .map(|p| p.ms)
}

#[actix_rt::test]
async fn a_model_attached_on_one_worker_is_copied_to_another_and_answers_the_same() {
    let backend = Arc::new(CandleBackend::default());
    let handle = start(backend, 3);
    handle.wait_ready().await.unwrap();
    let model = spec(&fixture("tiny-llama"));
    let baseline = memory(&handle, 1).await;

    let host = attach_on(&handle, model.clone(), 0, "host").await.unwrap();
    assert_eq!(host.source, "host");
    let expected = tokens(&handle, "host").await;

    // The source serves while the copy reads its weights.
    let (copy, during) = tokio::join!(
        attach_on(&handle, model.clone(), 1, "copy"),
        tokens(&handle, "host")
    );
    let copy = copy.unwrap();
    assert_eq!(during, expected);
    assert_eq!(
        (copy.source.as_str(), copy.worker),
        ("peer:0", 1),
        "{copy:?}"
    );
    assert_eq!(copy.source_fallback, None);
    assert_eq!(
        copy.bytes_moved,
        weight_bytes(&model),
        "every weight byte copied"
    );
    assert!(
        copy.memory_attached.resident.len() == 1,
        "{:?}",
        copy.memory_attached
    );
    assert!(
        phase_ms(&copy, Anchor::WeightsOnDevice).is_some(),
        "{copy:?}"
    );
    assert!(copy.timeline.get(Anchor::FirstToken).is_some());
    assert_eq!(
        tokens(&handle, "copy").await,
        expected,
        "the copy answers as the original"
    );
    assert_eq!(
        tokens(&handle, "host").await,
        expected,
        "the source keeps serving"
    );

    // Other files (a copy of the checkpoint elsewhere) are other weights: read from the host.
    let other = spec(&copy_fixture("tiny-llama", "peer_copy_other_files"));
    let elsewhere = attach_on(&handle, other, 2, "other").await.unwrap();
    assert_eq!(elsewhere.source, "host");
    assert_eq!(elsewhere.source_fallback, None);

    // `/workers` lists each pair: no interconnect on the CPU, yet a copy can be planned.
    let workers = handle.list_workers().await.unwrap();
    let links = &workers[1].peers;
    assert_eq!(links.len(), 2);
    assert!(
        links.iter().all(|l| l.link == LinkKind::None && l.copy),
        "{links:?}"
    );

    handle.detach("copy").await.unwrap();
    let after = memory(&handle, 1).await;
    assert_eq!(
        after.free_bytes, baseline.free_bytes,
        "the copy's bytes given back"
    );
    assert!(
        after.resident.is_empty() && after.parked_bytes == 0,
        "{after:?}"
    );
    assert_eq!(tokens(&handle, "host").await, expected);
    handle.shutdown().await;
}

fn weight_bytes(model: &ModelSpec) -> u64 {
    worker_controller::inspect(model)
        .unwrap()
        .footprint
        .device_bytes
}

#[actix_rt::test]
async fn a_parked_copy_on_another_worker_is_copied_and_stays_parked_there() {
    let backend = Arc::new(CandleBackend::default());
    let handle = start(backend, 2);
    handle.wait_ready().await.unwrap();
    let parked = ModelSpec {
        park: Some(true),
        ..spec(&fixture("tiny-llama"))
    };
    attach_on(&handle, parked.clone(), 0, "first")
        .await
        .unwrap();
    let expected = tokens(&handle, "first").await;
    handle.detach("first").await.unwrap();
    assert!(memory(&handle, 0).await.parked_bytes > 0);

    let copy = attach_on(&handle, spec(&fixture("tiny-llama")), 1, "copy")
        .await
        .unwrap();
    assert_eq!(copy.source, "peer:0", "{copy:?}");
    assert_eq!(tokens(&handle, "copy").await, expected);
    let source = memory(&handle, 0).await;
    assert!(
        source.parked_bytes > 0,
        "still parked on worker 0: {source:?}"
    );
    // Asked for anywhere: worker 0 holds it parked, so it goes there and moves nothing.
    handle.detach("copy").await.unwrap();
    let again = handle.attach(Attach::new(parked.clone())).await.unwrap();
    assert_eq!(
        (again.worker, again.source.as_str(), again.bytes_moved),
        (0, "parked", 0)
    );
    handle.shutdown().await;
}

#[actix_rt::test]
async fn a_peer_that_fails_mid_copy_fails_only_that_attach() {
    let backend = Arc::new(CandleBackend::default());
    let handle = start(backend.clone(), 2);
    handle.wait_ready().await.unwrap();
    let model = spec(&fixture("tiny-llama"));
    let baseline = memory(&handle, 1).await;
    attach_on(&handle, model.clone(), 0, "source")
        .await
        .unwrap();
    let expected = tokens(&handle, "source").await;

    backend.fail_next_peer_copy_after(2);
    let failed = attach_on(&handle, model.clone(), 1, "copy")
        .await
        .unwrap_err();
    match &failed {
        AttachError::Load(e) => {
            assert_eq!(e.kind, ErrorKind::Internal, "{e:?}");
            assert!(e.message.contains("worker 0"), "{}", e.message);
        }
        other => panic!("expected a load error, got {other:?}"),
    }
    let workers = handle.list_workers().await.unwrap();
    assert_eq!(workers[1].state, WorkerState::Idle, "the target survives");
    assert_eq!((workers[0].failures, workers[1].failures), (0, 0));
    assert_eq!(memory(&handle, 1).await.free_bytes, baseline.free_bytes);
    assert_eq!(
        tokens(&handle, "source").await,
        expected,
        "the source keeps serving"
    );

    // The next attach copies as usual.
    let copy = attach_on(&handle, model, 1, "copy").await.unwrap();
    assert_eq!(copy.source, "peer:0");
    assert_eq!(tokens(&handle, "copy").await, expected);
    handle.shutdown().await;
}

#[test]
fn a_backend_device_loaded_directly_keeps_no_weights_once_the_engine_is_gone() {
    let backend = CandleBackend::default();
    let options = PrewarmOptions {
        kv_cache_tokens: 256,
        ..PrewarmOptions::default()
    };
    let (mut device, report) = backend.open(&DeviceSpec::Cpu, &options).unwrap();
    assert!(
        report.peer.is_some(),
        "a backend's device lends to its peers"
    );
    let mut timeline = wc_actors::Timeline::default();
    let (engine, _) = device
        .load_engine(&spec(&fixture("tiny-llama")), &mut timeline)
        .unwrap();
    drop(engine);
    let memory = wc_actors::WorkerDevice::memory(&device).unwrap();
    assert!(memory.resident.is_empty(), "{memory:?}");
}
