//! On GPUs (`--features cuda`): peer copies between two workers of this process, on two GPUs
//! when the machine has them (`cuMemcpyPeerAsync`), else on one (`cuMemcpyDtoDAsync`). A model
//! serving on worker 0 and asked for on worker 1 is copied, answers as the host-path engine does
//! (greedy tokens), the source serves during and after the copy, and worker 1's device memory is
//! back where it was once the copy is detached; the link `/workers` reports matches the driver.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fixture;
use wc_actors::{
    Attach, DType, DeviceSpec, GenerateRequest, Handle, LinkKind, ModelSpec, PrewarmOptions,
    Prompt, Runtime, RuntimeConfig, RuntimeOptions, WorkerConfig,
};
use worker_controller::CandleBackend;

/// Slack for the device's own allocations between two reads of its free memory.
const SLACK_BYTES: u64 = 64 << 20;

fn start(devices: &[DeviceSpec]) -> Handle {
    let config = RuntimeConfig {
        workers: devices
            .iter()
            .map(|device| WorkerConfig {
                device: device.clone(),
                count: 1,
                prewarm: PrewarmOptions {
                    dtypes: vec![DType::F32, DType::BF16],
                    kv_cache_tokens: 1024,
                    ..PrewarmOptions::default()
                },
            })
            .collect(),
        options: RuntimeOptions {
            attach_timeout: Duration::from_secs(120),
            ..RuntimeOptions::default()
        },
    };
    Runtime::start(config, Arc::new(CandleBackend::default()))
}

async fn tokens(handle: &Handle, engine: &str) -> Vec<u32> {
    let request = GenerateRequest {
        prompt: Prompt::Ids(vec![1, 5, 7, 9]),
        max_new_tokens: 12,
        ignore_eos: true,
        ..Default::default()
    };
    let out = handle.generate(engine, request).await;
    out.unwrap_or_else(|e| panic!("{engine}: {e}")).new_tokens
}

async fn free_bytes(handle: &Handle, worker: usize) -> u64 {
    let workers = handle.list_workers().await.unwrap();
    workers[worker].memory.as_ref().unwrap().free_bytes
}

async fn attach(
    handle: &Handle,
    model: &ModelSpec,
    worker: usize,
    name: &str,
) -> wc_actors::AttachReport {
    let request = Attach {
        worker: Some(worker),
        name: Some(name.into()),
        ..Attach::new(model.clone())
    };
    handle
        .attach(request)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[actix_rt::test]
async fn a_model_serving_on_one_gpu_worker_is_copied_to_another_and_answers_the_same() {
    let gpus = worker_controller::load::cuda::device_count().unwrap();
    let devices = match gpus {
        0 => panic!("no GPU"),
        1 => [DeviceSpec::Cuda(0), DeviceSpec::Cuda(0)],
        _ => [DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)],
    };
    let handle = start(&devices);
    handle.wait_ready().await.unwrap();
    let workers = handle.list_workers().await.unwrap();
    let link = workers[1].peers[0].link;
    eprintln!(
        "{gpus} GPU(s); link 0 -> 1: {link:?}; prewarm {:?}",
        workers[1].prewarm
    );
    if gpus == 1 {
        assert_eq!(link, LinkKind::SameDevice);
    }
    assert!(workers[1].peers[0].copy);

    for (name, dtype) in [
        ("tiny-llama", DType::BF16),
        ("tiny-opt-prenorm", DType::F32),
    ] {
        let model = ModelSpec {
            model: fixture(name).display().to_string(),
            dtype: Some(dtype),
            canonical: false,
            park: None,
        };
        let host = attach(&handle, &model, 0, "host").await;
        assert_eq!(host.source, "host", "{name}");
        let expected = tokens(&handle, "host").await;
        let baseline = free_bytes(&handle, 1).await;

        let (copy, during) =
            tokio::join!(attach(&handle, &model, 1, "copy"), tokens(&handle, "host"));
        assert_eq!(copy.source, "peer:0", "{name}: {copy:?}");
        assert_eq!(
            during, expected,
            "{name}: the source serves during the copy"
        );
        eprintln!(
            "{name} {dtype}: copied {} bytes at {:.1} GB/s, first token in {:.1} ms ({})",
            copy.bytes_moved,
            copy.bandwidth_gb_per_s,
            copy.total_ms,
            copy.phases_summary()
        );
        assert_eq!(
            tokens(&handle, "copy").await,
            expected,
            "{name}: the copy's tokens"
        );
        assert_eq!(
            tokens(&handle, "host").await,
            expected,
            "{name}: the source after"
        );

        handle.detach("copy").await.unwrap();
        let after = free_bytes(&handle, 1).await;
        assert!(
            after + SLACK_BYTES >= baseline,
            "{name}: worker 1 free {after} after the detach, {baseline} before the copy"
        );
        handle.detach("host").await.unwrap();
    }
    handle.shutdown().await;
}
