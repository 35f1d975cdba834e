//! The device tier of the weight cache (`[prewarm] park_detached`): a detached model's weights
//! stay on the device, a re-attach of the same files reads and copies nothing and answers as
//! before, parked weights count as free memory and are freed (least recently used first) the
//! moment an attach needs the room, and a file changed on disk is never served from them. A
//! model's own `park` (`ModelSpec::park`) overrides the device's `park_detached` either way, and
//! the device's memory lists the parked models and those in its host cache.

mod common;

use common::{copy_fixture, fixture, spec};
use wc_actors::{
    Anchor, DeviceSpec, GenerateRequest, Handoff, PrewarmOptions, Prompt, TierEntry, Timeline,
    WarmEngine, WorkerDevice,
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
    attach_parking(device, dir, None)
}

/// [`attach`] with the model's own `park` setting.
fn attach_parking(
    device: &mut CandleDevice,
    dir: &std::path::Path,
    park: Option<bool>,
) -> (WarmEngine, Timeline) {
    let mut timeline = Timeline::default();
    timeline.mark(Anchor::Requested);
    let spec = wc_actors::ModelSpec { park, ..spec(dir) };
    let warm = device
        .attach(&spec, &Handoff::default(), &mut timeline)
        .unwrap_or_else(|e| panic!("{}: {}", dir.display(), e.message));
    (warm, timeline)
}

/// The parked models the device's memory lists.
fn parked(device: &CandleDevice) -> Vec<TierEntry> {
    device.memory().unwrap().parked
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

#[test]
fn a_model_whose_park_is_false_is_never_parked_under_park_detached() {
    let model = fixture("tiny-llama");
    let mut device = device(true, 0);
    let (first, _) = attach_parking(&mut device, &model, Some(false));
    assert!(first.bytes_moved > 0);
    drop(first);
    assert_eq!(device.memory().unwrap().parked_bytes, 0, "freed on detach");
    assert_eq!(parked(&device), vec![]);
    let (again, _) = attach_parking(&mut device, &model, Some(false));
    assert_eq!(
        again.bytes_moved,
        first_bytes(&model),
        "read and copied again"
    );
    drop(again);
    assert_eq!(device.memory().unwrap().parked_bytes, 0);
    // The same files, saying nothing: the device's park_detached parks them.
    let (unset, _) = attach_parking(&mut device, &model, None);
    drop(unset);
    assert_eq!(device.memory().unwrap().parked_bytes, weight_bytes(&model));
}

#[test]
fn a_model_whose_park_is_true_is_parked_without_park_detached() {
    let model = fixture("tiny-llama");
    let mut device = device(false, 0);
    let (first, _) = attach_parking(&mut device, &model, Some(true));
    assert!(first.bytes_moved > 0);
    assert_eq!(parked(&device), vec![], "lent to the live engine");
    drop(first);
    assert_eq!(device.memory().unwrap().parked_bytes, weight_bytes(&model));
    let dir = model.canonicalize().unwrap().display().to_string();
    assert_eq!(
        parked(&device),
        vec![TierEntry {
            model: dir,
            bytes: weight_bytes(&model)
        }]
    );
    let (again, _) = attach_parking(&mut device, &model, Some(true));
    assert_eq!(again.bytes_moved, 0, "from the parked weights");
    assert_eq!(parked(&device), vec![], "lent again");
    drop(again);
    assert_eq!(parked(&device).len(), 1);
    // Another model that says nothing follows park_detached (off): not parked.
    let other = fixture("tiny-qwen3");
    let (plain, _) = attach_parking(&mut device, &other, None);
    drop(plain);
    assert_eq!(
        device.memory().unwrap().parked_bytes,
        weight_bytes(&model),
        "only the model that asked for it stays"
    );
}

#[test]
fn the_last_engine_on_parked_weights_decides_whether_they_stay() {
    let model = fixture("tiny-opt-prenorm");
    let mut device = device(false, 0);
    let (kept, _) = attach_parking(&mut device, &model, Some(true));
    drop(kept);
    assert_eq!(device.memory().unwrap().parked_bytes, weight_bytes(&model));
    // The same files as a model that may not stay: served from the parked weights, freed after.
    let (borrowed, _) = attach_parking(&mut device, &model, Some(false));
    assert_eq!(borrowed.bytes_moved, 0, "the parked weights are used");
    drop(borrowed);
    assert_eq!(device.memory().unwrap().parked_bytes, 0);
    let (again, _) = attach_parking(&mut device, &model, Some(true));
    assert!(again.bytes_moved > 0, "gone: read again");
}

#[test]
fn the_device_memory_lists_the_models_in_its_host_cache() {
    let (a, b) = (fixture("tiny-llama"), fixture("tiny-opt-prenorm"));
    let options = PrewarmOptions {
        kv_cache_tokens: 256,
        host_cache_bytes: 64 << 20,
        ..PrewarmOptions::default()
    };
    let mut device = CandleDevice::open(&DeviceSpec::Cpu, Some(&options))
        .unwrap()
        .0;
    assert_eq!(device.memory().unwrap().host_cache, vec![]);
    drop(attach(&mut device, &a));
    drop(attach(&mut device, &b));
    let memory = device.memory().unwrap();
    let listed: Vec<String> = memory.host_cache.iter().map(|m| m.model.clone()).collect();
    let dir = |d: &std::path::Path| d.canonicalize().unwrap().display().to_string();
    assert_eq!(listed, vec![dir(&b), dir(&a)], "most recently used first");
    let bytes: u64 = memory.host_cache.iter().map(|m| m.bytes).sum();
    assert_eq!(bytes, memory.host_cache_used_bytes);
    assert!(memory.host_cache.iter().all(|m| m.bytes > 0));
}

/// Weight bytes a first attach of `dir` moves (its files' data).
fn first_bytes(dir: &std::path::Path) -> u64 {
    worker_controller::inspect(&spec(dir))
        .unwrap()
        .footprint
        .file_bytes
}
