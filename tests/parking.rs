//! The device tier of the weight cache (`[prewarm] park_detached`): a detached model's weights
//! stay on the device, a re-attach of the same files reads and copies nothing and answers as
//! before, parked weights count as free memory and are freed (least recently used first) the
//! moment an attach needs the room, and a file changed on disk is never served from them.

mod common;

use common::{copy_fixture, fixture, spec};
use wc_actors::{
    Anchor, DeviceSpec, GenerateRequest, Handoff, PrewarmOptions, Prompt, Timeline, WarmEngine,
    WorkerDevice,
};
use worker_controller::CandleDevice;

fn device(park_detached: bool, memory_limit_bytes: u64) -> CandleDevice {
    let options = PrewarmOptions {
        park_detached,
        memory_limit_bytes,
        kv_cache_tokens: 256,
        host_cache_bytes: 0,
        ..PrewarmOptions::default()
    };
    CandleDevice::open(&DeviceSpec::Cpu, Some(&options))
        .unwrap()
        .0
}

fn attach(device: &mut CandleDevice, dir: &std::path::Path) -> (WarmEngine, Timeline) {
    let mut timeline = Timeline::default();
    timeline.mark(Anchor::Requested);
    let warm = device
        .attach(&spec(dir), &Handoff::default(), &mut timeline)
        .unwrap_or_else(|e| panic!("{}: {}", dir.display(), e.message));
    (warm, timeline)
}

/// Greedy tokens of a fixed prompt.
fn tokens(warm: &mut WarmEngine) -> Vec<u32> {
    let request = GenerateRequest {
        prompt: Prompt::Ids(vec![1, 5, 7, 9]),
        max_new_tokens: 8,
        ignore_eos: true,
        ..Default::default()
    };
    warm.engine
        .generate(&request, &mut |_| true)
        .unwrap()
        .new_tokens
}

/// Weight bytes on the device of `dir` (its footprint, in its stored dtype).
fn weight_bytes(dir: &std::path::Path) -> u64 {
    worker_controller::inspect(&spec(dir))
        .unwrap()
        .footprint
        .device_bytes
}

#[test]
fn a_parked_model_reattaches_without_a_read_and_answers_as_before() {
    let model = fixture("tiny-llama");
    let mut device = device(true, 0);
    let baseline = device.memory().unwrap();
    let (mut first, _) = attach(&mut device, &model);
    assert!(first.bytes_moved > 0, "the first attach reads the files");
    let expected = tokens(&mut first);
    drop(first);
    let parked = device.memory().unwrap();
    assert_eq!(
        parked.parked_bytes,
        weight_bytes(&model),
        "the weights stay"
    );
    assert_eq!(
        parked.free_bytes, baseline.free_bytes,
        "parked weights count as free: an attach that needs the room frees them"
    );
    let (mut again, timeline) = attach(&mut device, &model);
    assert_eq!(again.bytes_moved, 0, "nothing read or copied");
    assert_eq!(device.memory().unwrap().parked_bytes, 0, "lent again");
    assert_eq!(tokens(&mut again), expected, "the same answers");
    let phases = timeline.phases();
    let copy = phases
        .iter()
        .find(|p| p.anchor == Anchor::WeightsOnDevice)
        .expect("weights_on_device is marked");
    assert!(copy.ms < 5.0, "no copy: {} ms", copy.ms);
    drop(again);
    assert_eq!(device.memory().unwrap().parked_bytes, weight_bytes(&model));
}

#[test]
fn parked_weights_make_room_for_an_attach_that_needs_it() {
    let (a, b) = (fixture("tiny-llama"), fixture("tiny-qwen3"));
    let need = |dir: &std::path::Path| {
        worker_controller::inspect(&spec(dir))
            .unwrap()
            .footprint
            .needed_bytes(256)
    };
    // Room for either model with its KV cache, not for both.
    let limit = need(&a).max(need(&b)) + weight_bytes(&a).min(weight_bytes(&b)) / 2;
    let mut device = device(true, limit);
    let (first, _) = attach(&mut device, &a);
    drop(first);
    assert_eq!(device.memory().unwrap().parked_bytes, weight_bytes(&a));
    let (second, _) = attach(&mut device, &b);
    assert!(second.bytes_moved > 0);
    assert_eq!(
        device.memory().unwrap().parked_bytes,
        0,
        "the parked model was freed for the one that needed its room"
    );
    drop(second);
    let (third, _) = attach(&mut device, &a);
    assert!(third.bytes_moved > 0, "a freed model is read again");
    drop(third);
    assert_eq!(
        device.memory().unwrap().parked_bytes,
        weight_bytes(&a),
        "the last detached model is parked; the one before made room for it"
    );
}

#[test]
fn without_park_detached_a_detach_frees_the_weights() {
    let model = fixture("tiny-opt-prenorm");
    let mut device = device(false, 0);
    let (first, _) = attach(&mut device, &model);
    drop(first);
    assert_eq!(device.memory().unwrap().parked_bytes, 0);
    let (again, _) = attach(&mut device, &model);
    assert!(again.bytes_moved > 0, "read again");
}

#[test]
fn a_file_changed_on_disk_is_never_served_from_parked_weights() {
    let dir = copy_fixture("tiny-opt-prenorm", "parking-changed");
    let mut device = device(true, 0);
    let (mut first, _) = attach(&mut device, &dir);
    let before = tokens(&mut first);
    drop(first);
    // A new version of the weights (same bytes but one tensor, a new inode).
    let weights = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let replacement = dir.join("model.safetensors.new");
    std::fs::write(&replacement, &bytes).unwrap();
    std::fs::rename(&replacement, &weights).unwrap();
    let (mut again, _) = attach(&mut device, &dir);
    assert!(again.bytes_moved > 0, "the changed file is read");
    let _ = (before, tokens(&mut again));
    drop(again);
    assert_eq!(
        device.memory().unwrap().parked_bytes,
        weight_bytes(&dir),
        "only the current version stays parked"
    );
}
