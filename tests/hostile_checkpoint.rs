//! A corpus of hostile checkpoints, each built here at test time: every one is a typed 4xx error within 2 s, from the check and from a real load, and the worker loads a good model afterwards.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{copy_fixture, cpu_worker, fixture, scratch, spec};
use serde_json::{json, Value};
use wc_actors::{ErrorKind, ModelSpec, Timeline, WorkerDevice};
use worker_controller::backend::inspect;
use worker_controller::load::LoadError;

const GOOD: &str = "tiny-opt-prenorm";
/// What the issue allows for refusing any hostile checkpoint.
const PROMPTLY: Duration = Duration::from_secs(2);

/// Asserts that `dir` is refused, by the check and by a load on a worker, promptly, with an error
/// `expected` accepts and of `kind`; then that the same worker loads the good fixture and kept
/// nothing of the hostile checkpoint.
fn assert_refused(dir: &Path, kind: ErrorKind, expected: impl Fn(&LoadError) -> bool) {
    let started = Instant::now();
    let err = inspect(&spec(dir)).expect_err("the check refuses it");
    assert!(
        started.elapsed() < PROMPTLY,
        "check took {:?}",
        started.elapsed()
    );
    assert!(expected(&err), "unexpected error from the check: {err:?}");
    assert!(
        !err.to_string().contains(&*dir.to_string_lossy()),
        "the message names files relative to the checkpoint: {err}"
    );

    let mut device = cpu_worker();
    let started = Instant::now();
    let refused = device
        .load(
            &spec(dir),
            &wc_actors::Handoff::default(),
            &mut Timeline::default(),
        )
        .err()
        .expect("the load refuses it");
    assert!(
        started.elapsed() < PROMPTLY,
        "load took {:?}",
        started.elapsed()
    );
    assert_eq!(refused.kind, kind, "{}", refused.message);
    assert_eq!(refused.message, err.to_string());
    assert!(!device.host_cache_holds(&dir.join("model.safetensors")));

    let (mut engine, _) = device
        .load(
            &spec(&fixture(GOOD)),
            &wc_actors::Handoff::default(),
            &mut Timeline::default(),
        )
        .expect("the worker still loads a good model");
    engine.warm_up().expect("and runs it");
}

/// The fixture's weights split into header JSON and data section.
fn fixture_weights() -> (serde_json::Map<String, Value>, Vec<u8>) {
    let bytes = std::fs::read(fixture(GOOD).join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

fn safetensors_bytes(header: &serde_json::Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let text = serde_json::to_string(header).unwrap();
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text.as_bytes());
    bytes.extend(data);
    bytes
}

/// A copy of the good fixture whose weights' header is changed by `edit`.
fn with_header(test: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> PathBuf {
    let dir = copy_fixture(GOOD, test);
    let (mut header, data) = fixture_weights();
    edit(&mut header);
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(&header, &data),
    )
    .unwrap();
    dir
}

fn corrupt_with(words: &'static [&'static str]) -> impl Fn(&LoadError) -> bool {
    move |e| {
        matches!(e, LoadError::CorruptSafetensors { path, .. } if path == Path::new("model.safetensors"))
            && words.iter().all(|w| e.to_string().contains(w))
    }
}

const BIAS: &str = "model.decoder.final_layer_norm.bias";
const WEIGHT: &str = "model.decoder.final_layer_norm.weight";

#[test]
fn byte_length_not_matching_shape_and_dtype() {
    let dir = with_header("byte-length", |h| h[BIAS]["shape"] = json!([100]));
    assert_refused(
        &dir,
        ErrorKind::InvalidModel,
        corrupt_with(&["needs 400 bytes"]),
    );
}

#[test]
fn overlapping_offsets() {
    let dir = with_header("overlap", |h| {
        h[BIAS]["data_offsets"] = h[WEIGHT]["data_offsets"].clone();
    });
    assert_refused(&dir, ErrorKind::InvalidModel, corrupt_with(&["overlaps"]));
}

#[test]
fn offsets_out_of_range() {
    let dir = with_header("out-of-range", |h| {
        let len = h[BIAS]["data_offsets"][1].as_u64().unwrap()
            - h[BIAS]["data_offsets"][0].as_u64().unwrap();
        h[BIAS]["data_offsets"] = json!([1u64 << 40, (1u64 << 40) + len]);
    });
    assert_refused(
        &dir,
        ErrorKind::InvalidModel,
        corrupt_with(&["data_offsets"]),
    );
}

#[test]
fn shape_whose_product_overflows() {
    let dir = with_header("overflow", |h| {
        h[BIAS]["shape"] = json!([1u64 << 32, 1u64 << 32, 1u64 << 32]);
    });
    assert_refused(&dir, ErrorKind::InvalidModel, corrupt_with(&["overflows"]));
}

#[test]
fn header_length_of_two_to_the_63() {
    let dir = copy_fixture(GOOD, "header-2-63");
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 63).to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    assert_refused(
        &dir,
        ErrorKind::InvalidModel,
        corrupt_with(&["over the limit"]),
    );
}

#[test]
fn fifo_named_model_safetensors_is_not_a_regular_file() {
    let dir = copy_fixture(GOOD, "fifo");
    let path = dir.join("model.safetensors");
    std::fs::remove_file(&path).unwrap();
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    assert_refused(&dir, ErrorKind::InvalidModel, |e| {
        matches!(e, LoadError::NotRegularFile { kind: "a FIFO", .. })
            && e.to_string() == "`model.safetensors` is a FIFO, not a regular file"
    });
}

/// Peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[test]
fn sizes_are_compared_before_any_data_is_read() {
    for (test, len) in [("tail-1gib", 1u64 << 30), ("sparse-100gb", 100_000_000_000)] {
        let dir = copy_fixture(GOOD, test);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("model.safetensors"))
            .unwrap();
        let declared = file.metadata().unwrap().len();
        file.set_len(declared + len).unwrap();
        let before = peak_rss();
        assert_refused(
            &dir,
            ErrorKind::InvalidModel,
            corrupt_with(&["bytes after"]),
        );
        let grown = peak_rss().saturating_sub(before);
        assert!(
            grown < 64 << 20,
            "peak RSS grew by {grown} bytes for {test}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn config_of_50_mb() {
    let dir = copy_fixture(GOOD, "big-config");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("config.json"))
        .unwrap();
    file.set_len(50 << 20).unwrap();
    assert_refused(
        &dir,
        ErrorKind::InvalidModel,
        |e| matches!(e, LoadError::FileTooLarge { path, bytes, .. } if path == Path::new("config.json") && *bytes == 50 << 20),
    );
}

#[test]
fn absurd_dimensions_in_the_config() {
    let edits = [
        ("hidden", json!({"hidden_size": 1_000_000_000u64})),
        ("hidden-float", json!({"hidden_size": 1e9})),
        ("vocab", json!({"vocab_size": 1_000_000_000_000u64})),
        ("layers", json!({"num_hidden_layers": 1_000_000u64})),
        ("heads", json!({"num_attention_heads": 3})),
        (
            "product",
            json!({"hidden_size": 65536, "ffn_dim": 262144, "num_attention_heads": 1, "num_hidden_layers": 1000}),
        ),
    ];
    for (name, edit) in edits {
        let dir = copy_fixture(GOOD, &format!("config-{name}"));
        let path = dir.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for (key, value) in edit.as_object().unwrap() {
            config[key] = value.clone();
        }
        std::fs::write(&path, config.to_string()).unwrap();
        assert_refused(
            &dir,
            ErrorKind::InvalidModel,
            |e| matches!(e, LoadError::InvalidConfig { path, .. } if path == Path::new("config.json")),
        );
    }
}

/// A sharded copy of the good fixture whose index names `shard` for every tensor.
fn sharded(test: &str, shard: &str) -> PathBuf {
    let dir = copy_fixture(GOOD, test);
    let (header, _) = fixture_weights();
    let weight_map: serde_json::Map<String, Value> =
        header.keys().map(|k| (k.clone(), json!(shard))).collect();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({ "metadata": {}, "weight_map": weight_map }).to_string(),
    )
    .unwrap();
    dir
}

/// Weights outside any checkpoint, for links and indexes to point at.
fn outside_weights(test: &str) -> PathBuf {
    let dir = scratch(&format!("{test}-outside"));
    let path = dir.join("outside.safetensors");
    std::fs::copy(fixture(GOOD).join("model.safetensors"), &path).unwrap();
    path
}

fn outside(e: &LoadError) -> bool {
    matches!(e, LoadError::OutsideCheckpoint { .. })
}

#[test]
fn index_pointing_outside_the_directory() {
    let target = outside_weights("index-escape");
    let relative = format!(
        "../{}/outside.safetensors",
        target
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
    );
    for (test, shard) in [
        ("index-dotdot", relative.as_str()),
        ("index-absolute", target.to_str().unwrap()),
    ] {
        let dir = sharded(test, shard);
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        assert_refused(&dir, ErrorKind::InvalidModel, outside);
    }
}

#[test]
fn symlinks_escaping_the_directory() {
    let target = outside_weights("symlink-escape");
    let dir = copy_fixture(GOOD, "symlink-single");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink(&target, dir.join("model.safetensors")).unwrap();
    assert_refused(&dir, ErrorKind::InvalidModel, outside);

    let dir = sharded("symlink-shard", "shard.safetensors");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink(&target, dir.join("shard.safetensors")).unwrap();
    assert_refused(&dir, ErrorKind::InvalidModel, outside);
}

#[test]
fn a_symlink_inside_the_directory_is_followed() {
    let dir = copy_fixture(GOOD, "symlink-inside");
    std::fs::rename(dir.join("model.safetensors"), dir.join("weights.bin")).unwrap();
    std::os::unix::fs::symlink("weights.bin", dir.join("model.safetensors")).unwrap();
    inspect(&spec(&dir)).expect("a link within the checkpoint is fine");
}

#[test]
fn a_hub_cache_miss_does_not_reveal_the_cache_paths() {
    let err = inspect(&ModelSpec {
        model: "no-such-org/no-such-model".into(),
        dtype: None,
        canonical: false,
        park: None,
    })
    .err()
    .unwrap();
    assert!(matches!(err, LoadError::HubModelNotCached { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "`no-such-org/no-such-model` is not a directory and is not in the local Hugging Face cache"
    );
    assert_eq!(wc_actors::EngineError::from(err).kind, ErrorKind::NotFound);
}

#[test]
fn a_hub_snapshot_may_link_into_its_blobs_but_not_beyond_its_repo() {
    let repo = scratch("hub-layout").join("models--acme--tiny-opt");
    let (blobs, snapshot) = (repo.join("blobs"), repo.join("snapshots/0123abcd"));
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    for (i, file) in ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .enumerate()
    {
        std::fs::copy(fixture(GOOD).join(file), blobs.join(format!("blob{i}"))).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob{i}"), snapshot.join(file)).unwrap();
    }
    inspect(&spec(&snapshot)).expect("links into the repo's blobs are inside the checkpoint");

    let target = outside_weights("hub-layout");
    std::fs::remove_file(snapshot.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink(&target, snapshot.join("model.safetensors")).unwrap();
    assert_refused(&snapshot, ErrorKind::InvalidModel, outside);
}

#[test]
fn a_huge_string_in_the_header_comes_back_as_a_short_message() {
    let huge = "F".repeat(8 << 20);
    let dir = with_header("huge-string", |h| h[BIAS]["dtype"] = json!(huge));
    let short = |e: &LoadError| {
        let text = e.to_string();
        matches!(e, LoadError::CorruptSafetensors { .. })
            && text.len() < 1024
            && text.contains("more bytes")
    };
    assert_refused(&dir, ErrorKind::InvalidModel, short);
    let config = copy_fixture(GOOD, "huge-config-string");
    std::fs::write(
        config.join("config.json"),
        format!("{{\"model_type\": \"opt\", \"hidden_size\": \"{huge}\"}}"),
    )
    .unwrap();
    let err = inspect(&spec(&config)).expect_err("refused");
    assert!(
        err.to_string().len() < 1024,
        "{} bytes",
        err.to_string().len()
    );
}
