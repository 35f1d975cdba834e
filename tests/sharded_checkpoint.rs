//! Sharded checkpoints on the CPU backend: the sharded fixture gives the single-file model's
//! logits, and every broken shard set (a truncated shard, an index naming a missing file, a tensor
//! in two shards, shards of two dtypes) is a typed error that leaves the worker's memory where it
//! was and the worker loading a good model afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use common::{cpu_worker, fixture, scratch, spec};
use serde_json::Value;
use wc_actors::{ErrorKind, Timeline, WorkerDevice};
use worker_controller::load::weights::DeviceWeights;
use worker_controller::load::LoadError;
use worker_controller::load::WeightFile;
use worker_controller::models::llama::{LlamaEngine, LlamaModel};
use worker_controller::models::LlamaConfig;

const SHARDED: &str = "tiny-llama-sharded";
const SHARDS: [&str; 2] = [
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
];

/// A writable copy of the sharded fixture (every file of it).
fn sharded_copy(test: &str) -> PathBuf {
    let dir = scratch(test);
    for entry in std::fs::read_dir(fixture(SHARDED)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// A shard's header (JSON object) and data section.
fn read_shard(path: &Path) -> (serde_json::Map<String, Value>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header.as_object().unwrap().clone(), bytes[8 + n..].to_vec())
}

fn write_shard(path: &Path, header: &serde_json::Map<String, Value>, data: &[u8]) {
    let json = serde_json::to_vec(header).unwrap();
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend(json);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// Loads `dir` on a fresh worker and expects a refusal of `kind` that `expected` accepts; then
/// checks the worker's memory is where it was and that it loads the good sharded fixture.
fn assert_refused(dir: &Path, kind: ErrorKind, expected: impl Fn(&LoadError) -> bool) {
    let direct = worker_controller::backend::inspect(&spec(dir))
        .err()
        .or_else(|| {
            let mut device = cpu_worker();
            device
                .load_engine(&spec(dir), &mut Timeline::default())
                .err()
        })
        .expect("refused by the check or by the load");
    assert!(expected(&direct), "unexpected error: {direct:?}");
    let mut device = cpu_worker();
    let before = device.memory().unwrap();
    let refused = device
        .load(
            &spec(dir),
            &wc_actors::Handoff::default(),
            &mut Timeline::default(),
        )
        .err()
        .expect("the worker refuses it");
    assert_eq!(refused.kind, kind, "{}", refused.message);
    assert!(
        !refused.message.contains(&*dir.to_string_lossy()),
        "files are named relative to the checkpoint: {}",
        refused.message
    );
    assert_eq!(device.memory().unwrap(), before, "memory back where it was");
    let (mut engine, _) = device
        .load(
            &spec(&fixture(SHARDED)),
            &wc_actors::Handoff::default(),
            &mut Timeline::default(),
        )
        .expect("the worker still loads a good model");
    engine.warm_up().expect("and runs it");
}

#[test]
fn the_sharded_fixture_gives_the_single_file_models_logits() {
    let single = scratch("single-file");
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for shard in SHARDS {
        let (h, d) = read_shard(&fixture(SHARDED).join(shard));
        for (name, mut entry) in h {
            if name == "__metadata__" {
                continue;
            }
            let offsets = entry["data_offsets"].as_array().unwrap();
            let (start, end) = (
                offsets[0].as_u64().unwrap() as usize,
                offsets[1].as_u64().unwrap() as usize,
            );
            let at = data.len();
            data.extend_from_slice(&d[start..end]);
            entry["data_offsets"] = serde_json::json!([at, at + end - start]);
            header.insert(name, entry);
        }
    }
    write_shard(&single.join("model.safetensors"), &header, &data);
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture(SHARDED).join(file), single.join(file)).unwrap();
    }
    let ids = [1u32, 15, 27, 99, 3];
    let (sharded, one_file) = (logits(&fixture(SHARDED), &ids), logits(&single, &ids));
    assert_eq!(
        sharded, one_file,
        "two shards and one file hold the same model"
    );
}

/// Logits of `ids` from the checkpoint in `dir`, read by the CPU loader (every weight file).
fn logits(dir: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    let checked = worker_controller::backend::inspect(&spec(dir)).unwrap();
    let files: Vec<Arc<WeightFile>> = checked
        .checkpoint
        .weight_files
        .iter()
        .map(|path| Arc::new(WeightFile::read(path).unwrap()))
        .collect();
    let weights = DeviceWeights::upload(&files, &Device::Cpu, DType::F32).unwrap();
    let Some(config) = checked.config.get::<LlamaConfig>() else {
        panic!("a Llama-family fixture");
    };
    let model = LlamaModel::new(config.clone(), &weights).unwrap();
    let engine = LlamaEngine::new(model, None, weights.device_bytes);
    engine.logits(ids).unwrap().to_vec2().unwrap()
}

#[test]
fn a_truncated_shard_is_refused() {
    let dir = sharded_copy("truncated-shard");
    let path = dir.join(SHARDS[1]);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    assert_refused(&dir, ErrorKind::InvalidModel, |e| {
        matches!(e, LoadError::CorruptSafetensors { path, reason }
            if path == Path::new(SHARDS[1]) && reason.contains("truncated"))
    });
}

#[test]
fn an_index_naming_a_missing_shard_is_refused() {
    let dir = sharded_copy("missing-shard");
    std::fs::remove_file(dir.join(SHARDS[1])).unwrap();
    assert_refused(
        &dir,
        ErrorKind::NotFound,
        |e| matches!(e, LoadError::MissingFile(path) if path == Path::new(SHARDS[1])),
    );
}

#[test]
fn a_tensor_in_two_shards_is_refused() {
    let dir = sharded_copy("tensor-twice");
    // Shard 2 gets a copy of shard 1's first tensor, appended to its data.
    let (first, first_data) = read_shard(&dir.join(SHARDS[0]));
    let (name, entry) = first
        .iter()
        .find(|(name, _)| *name != "__metadata__")
        .map(|(n, e)| (n.clone(), e.clone()))
        .unwrap();
    let offsets = entry["data_offsets"].as_array().unwrap();
    let (start, end) = (
        offsets[0].as_u64().unwrap() as usize,
        offsets[1].as_u64().unwrap() as usize,
    );
    let (mut second, mut second_data) = read_shard(&dir.join(SHARDS[1]));
    let at = second_data.len();
    second_data.extend_from_slice(&first_data[start..end]);
    let mut copy = entry.clone();
    copy["data_offsets"] = serde_json::json!([at, at + end - start]);
    second.insert(name.clone(), copy);
    write_shard(&dir.join(SHARDS[1]), &second, &second_data);
    let canonical = name.trim_start_matches("model.").to_string();
    assert_refused(
        &dir,
        ErrorKind::InvalidModel,
        move |e| matches!(e, LoadError::DuplicateTensor(n) if *n == canonical),
    );
}

#[test]
fn shards_of_two_dtypes_are_refused() {
    let dir = sharded_copy("two-dtypes");
    // Shard 2 rewritten in f16 (the fixture is f32): the same names and shapes, half the bytes.
    let (header, data) = read_shard(&dir.join(SHARDS[1]));
    let mut f16_header = serde_json::Map::new();
    let mut f16_data = Vec::new();
    let mut entries: Vec<(String, Value)> = header.into_iter().collect();
    entries.sort_by_key(|(_, e)| e["data_offsets"][0].as_u64().unwrap_or(0));
    for (name, mut entry) in entries {
        if name == "__metadata__" {
            f16_header.insert(name, entry);
            continue;
        }
        assert_eq!(entry["dtype"], "F32", "the fixture is f32");
        let offsets = entry["data_offsets"].as_array().unwrap();
        let (start, end) = (
            offsets[0].as_u64().unwrap() as usize,
            offsets[1].as_u64().unwrap() as usize,
        );
        let at = f16_data.len();
        for value in data[start..end].chunks_exact(4) {
            let v = f32::from_le_bytes(value.try_into().unwrap());
            f16_data.extend(half::f16::from_f32(v).to_le_bytes());
        }
        entry["dtype"] = "F16".into();
        entry["data_offsets"] = serde_json::json!([at, f16_data.len()]);
        f16_header.insert(name, entry);
    }
    write_shard(&dir.join(SHARDS[1]), &f16_header, &f16_data);
    assert_refused(&dir, ErrorKind::InvalidModel, |e| {
        matches!(e, LoadError::ShardsDisagree { first, first_dtype, other, other_dtype }
            if first == Path::new(SHARDS[0]) && first_dtype == "f32"
                && other == Path::new(SHARDS[1]) && other_dtype == "f16")
    });
}
