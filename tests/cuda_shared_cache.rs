//! On a GPU (`--features cuda`): the machine's shared host cache. Two workers of one GPU share
//! it; a model read on one is a hit on the other with the reference's logits, once the cache is
//! registered with the driver (straight DMA from it) and before (through the staging ring), and
//! registration runs to the whole cache in the background.
#![cfg(feature = "cuda")]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fixture, reference};
use wc_actors::{DType, DeviceSpec, ModelSpec, PrewarmOptions, Timeline};
use worker_controller::load::shared_cache::SharedCache;
use worker_controller::models::opt::OptEngine;
use worker_controller::{CandleBackend, CandleDevice};

const FIXTURE: &str = "tiny-opt-prenorm";
const CACHE_BYTES: u64 = 2 << 30;

static GPU_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn spec(model: &Path) -> ModelSpec {
    ModelSpec {
        model: model.display().to_string(),
        dtype: Some(DType::F32),
        canonical: false,
        park: None,
    }
}

/// Two prewarmed workers of cuda:0 sharing `cache`.
fn two_workers(cache: &Arc<SharedCache>) -> (CandleDevice, CandleDevice) {
    let backend = CandleBackend::with_shared_cache(cache.clone());
    let options = PrewarmOptions {
        host_cache_bytes: CACHE_BYTES,
        ..PrewarmOptions::default()
    };
    let open = || backend.open(&DeviceSpec::Cuda(0), &options).unwrap().0;
    (open(), open())
}

/// The worst f32 logit difference from transformers over the fixture's prompts.
fn worst_logit_diff(device: &mut CandleDevice) -> f32 {
    let (engine, _) = device
        .load_as::<OptEngine>(&spec(&fixture(FIXTURE)), &mut Timeline::default())
        .unwrap();
    reference(FIXTURE)
        .cases
        .iter()
        .map(|case| {
            let logits: Vec<Vec<f32>> = engine.logits(&case.input_ids).unwrap().to_vec2().unwrap();
            common::decoding::largest_difference(
                logits.iter().flatten(),
                case.logits.iter().flatten(),
            )
        })
        .fold(0.0, f32::max)
}

/// Reads the fixture on `a` (a miss), then on `b` (a hit): both give the reference's logits.
fn miss_then_hit(cache: &SharedCache, a: &mut CandleDevice, b: &mut CandleDevice) {
    let diff = worst_logit_diff(a);
    assert!(diff < 1e-4, "read from disk: {diff}");
    let counts = cache.report().counts;
    assert_eq!((counts.hits, counts.misses), (0, 1));
    let diff = worst_logit_diff(b);
    assert!(diff < 1e-4, "from the other worker's cache entry: {diff}");
    let counts = cache.report().counts;
    assert_eq!(
        (counts.hits, counts.misses),
        (1, 1),
        "a hit on the other worker"
    );
}

#[test]
fn a_model_read_on_one_worker_is_a_hit_on_the_other_once_the_cache_is_registered() {
    let _gpu = GPU_LOCK.lock().unwrap();
    let cache = Arc::new(SharedCache::create(CACHE_BYTES).unwrap());
    let (mut a, mut b) = two_workers(&cache);
    let deadline = Instant::now() + Duration::from_secs(60);
    while cache.region.registered_bytes() < cache.region.bytes() {
        assert!(Instant::now() < deadline, "registration never finished");
        std::thread::sleep(Duration::from_millis(10));
    }
    miss_then_hit(&cache, &mut a, &mut b);
}

#[test]
fn before_the_cache_is_registered_attaches_stream_through_the_staging_ring() {
    let _gpu = GPU_LOCK.lock().unwrap();
    let cache = Arc::new(SharedCache::create(CACHE_BYTES).unwrap());
    // Registration held back for good: the workers' own start of it then does nothing.
    cache
        .region
        .register_in_background(|_, _| Err("held back by the test".into()), 0);
    let (mut a, mut b) = two_workers(&cache);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(cache.region.registered_bytes(), 0);
    miss_then_hit(&cache, &mut a, &mut b);
}
