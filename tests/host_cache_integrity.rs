//! The worker's host cache serves a file only while it is the same file, and keeps only what a successful load read.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::copy_fixture;
use wc_actors::{DeviceSpec, ModelSpec, PrewarmOptions, Timeline};
use worker_controller::load::LoadError;
use worker_controller::models::opt::OptEngine;
use worker_controller::CandleDevice;

const GOOD: &str = "tiny-opt-prenorm";
const IDS: [u32; 4] = [2, 506, 79, 268];

fn cached_worker() -> CandleDevice {
    let options = PrewarmOptions {
        host_cache_bytes: 64 << 20,
        ..PrewarmOptions::default()
    };
    CandleDevice::open(&DeviceSpec::Cpu, Some(&options))
        .unwrap()
        .0
}

fn load(device: &mut CandleDevice, dir: &Path) -> Result<OptEngine, LoadError> {
    let spec = ModelSpec {
        model: dir.display().to_string(),
        dtype: None,
        canonical: false,
        park: None,
    };
    device
        .load_as::<worker_controller::models::OptEngine>(&spec, &mut Timeline::default())
        .map(|(engine, _)| engine)
}

fn logits(engine: &OptEngine) -> Vec<Vec<f32>> {
    engine.logits(&IDS).unwrap().to_vec2().unwrap()
}

/// The same weights file with every float32 weight negated: same size, same header.
fn negated(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for word in bytes[8 + n..].chunks_exact_mut(4) {
        word[3] ^= 0x80;
    }
    bytes
}

#[test]
fn a_same_size_copy_keeping_the_mtime_serves_the_new_weights() {
    let dir = copy_fixture(GOOD, "cp-p");
    let path = dir.join("model.safetensors");
    let mut device = cached_worker();
    let old = logits(&load(&mut device, &dir).unwrap());
    assert!(device.host_cache_holds(&path), "the first load is cached");

    // What `cp -p new model.safetensors` does: rewrite the file in place (same inode, same
    // size), then put the old modification time back. Only the change time differs, and the
    // kernel keeps it at clock-tick granularity (up to a second on some file systems): the
    // copy is repeated until the change time moved, however coarse the clock.
    let meta = std::fs::metadata(&path).unwrap();
    let changed = |m: &std::fs::Metadata| (m.ctime(), m.ctime_nsec());
    let new_bytes = negated(&path);
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        std::fs::write(&path, &new_bytes).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(meta.modified().unwrap()).unwrap();
        drop(file);
        let after = std::fs::metadata(&path).unwrap();
        if changed(&after) != changed(&meta) {
            break after;
        }
        assert!(Instant::now() < deadline, "the change time never moved");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (meta.len(), meta.modified().unwrap())
    );

    let served = logits(&load(&mut device, &dir).unwrap());
    assert_ne!(served, old, "the old weights were served from the cache");
    let fresh = logits(&load(&mut cached_worker(), &dir).unwrap());
    assert_eq!(served, fresh, "the worker serves what a fresh worker reads");
}

#[test]
fn a_failed_load_leaves_nothing_in_the_host_cache() {
    let dir = copy_fixture(GOOD, "failed-attach");
    let weights = dir.join("model.safetensors");
    let tokenizer = std::fs::read(dir.join("tokenizer.json")).unwrap();
    // Weights and config pass the check; the load reads the weights, then fails on this.
    std::fs::write(dir.join("tokenizer.json"), b"{\"not\": \"a tokenizer\"}").unwrap();
    let mut device = cached_worker();
    let err = load(&mut device, &dir).err().unwrap();
    assert!(matches!(err, LoadError::InvalidTokenizer { .. }), "{err}");
    assert!(
        !device.host_cache_holds(&weights),
        "the weights of a failed load stay out of the cache"
    );

    std::fs::write(dir.join("tokenizer.json"), tokenizer).unwrap();
    load(&mut device, &dir).unwrap();
    assert!(
        device.host_cache_holds(&weights),
        "a successful load is cached"
    );
}
