//! Writes random-weight checkpoints in the Hugging Face layout, one tensor at a time: each
//! safetensors header is written first (every shape is known up front), then each tensor's bytes
//! are generated in bounded chunks, on every core, and written straight to the file, so an 8B
//! model (16 GB in bf16) never has more than a few MiB per core in memory. Several files get a
//! `model.safetensors.index.json`, as `save_pretrained` writes it. A caller may watch the bytes
//! go out through a progress callback ([`Progress`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde_json::{json, Value};

use super::error::{DeviceError, LoadError};

/// How a tensor is filled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal(0, std), as transformers initialises matrices.
    Normal(f32),
    Ones,
    Zeros,
}

/// One tensor to write: its full name in the file, its shape and how it is filled.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl TensorSpec {
    fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// Elements generated (by one thread) and written per step.
const CHUNK: usize = 1 << 20;

/// The bytes of `n` elements of chunk `chunk` of tensor `t`, from a generator seeded by `seed`,
/// the tensor's name and the chunk's index: the values depend on neither the thread count nor
/// how the tensors are split into files.
fn chunk_bytes(
    t: &TensorSpec,
    normal: Option<Normal<f32>>,
    seed: u64,
    chunk: usize,
    n: usize,
    dtype: candle_core::DType,
) -> Vec<u8> {
    let name_hash = t.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = StdRng::seed_from_u64(seed ^ name_hash ^ (chunk as u64).rotate_left(32));
    let values: Vec<f32> = match (t.init, normal) {
        (Init::Normal(_), Some(normal)) => (0..n).map(|_| normal.sample(&mut rng)).collect(),
        (Init::Ones, _) => vec![1.0; n],
        _ => vec![0.0; n],
    };
    match dtype {
        candle_core::DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        candle_core::DType::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    /// The weight files, in order (`model.safetensors`, or `model-0000i-of-0000n.safetensors`).
    pub files: Vec<String>,
    /// Bytes of tensor data, over all files.
    pub data_bytes: u64,
}

/// Told the weight bytes written so far and the total, over all files: after each header with
/// nothing yet, and after every wave of chunks, the last call with `written == total`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// The file names of `shards` weight files, as `save_pretrained` names them.
pub fn shard_names(shards: usize) -> Vec<String> {
    if shards <= 1 {
        return vec!["model.safetensors".into()];
    }
    (1..=shards)
        .map(|i| format!("model-{i:05}-of-{shards:05}.safetensors"))
        .collect()
}

/// Writes `tensors` in `dtype` into `shards` files in `dir` (split in order, by size, each file
/// at least one tensor), with an index when there are several. Values come from one random
/// stream seeded with `seed`, tensor by tensor in order, so the same tensors and seed give the
/// same weights however they are sharded.
pub fn write_safetensors(
    dir: &Path,
    tensors: &[TensorSpec],
    dtype: candle_core::DType,
    shards: usize,
    seed: u64,
) -> Result<Written, LoadError> {
    write_safetensors_with_progress(dir, tensors, dtype, shards, seed, &mut |_, _| {})
}

/// [`write_safetensors`], telling `progress` the weight bytes written so far and the total.
pub fn write_safetensors_with_progress(
    dir: &Path,
    tensors: &[TensorSpec],
    dtype: candle_core::DType,
    shards: usize,
    seed: u64,
    progress: Progress<'_>,
) -> Result<Written, LoadError> {
    let size = match dtype {
        candle_core::DType::F32 => 4u64,
        candle_core::DType::F16 | candle_core::DType::BF16 => 2,
        other => {
            return Err(LoadError::Device(DeviceError::other(format!(
                "cannot write weights in {other:?}: use f32, f16 or bf16"
            ))))
        }
    };
    let shards = shards.clamp(1, tensors.len().max(1));
    let total: u64 = tensors.iter().map(|t| t.elements() * size).sum();
    // In order: a tensor starts the next shard when it begins past that shard's share of the
    // bytes, or when the tensors left are just enough to give every later shard one.
    let mut assignment = Vec::with_capacity(tensors.len());
    let (mut offset, mut shard, mut in_shard) = (0u64, 0usize, 0usize);
    for (i, t) in tensors.iter().enumerate() {
        let later = shards - 1 - shard;
        let past_share = offset as u128 * shards as u128 >= total as u128 * (shard as u128 + 1);
        if in_shard > 0 && later > 0 && (past_share || tensors.len() - i <= later) {
            shard += 1;
            in_shard = 0;
        }
        assignment.push(shard);
        in_shard += 1;
        offset += t.elements() * size;
    }
    let names = shard_names(shards);
    std::fs::create_dir_all(dir).map_err(|e| crate::load::io_error(dir, e))?;
    let mut weight_map = BTreeMap::new();
    let mut done = 0u64;
    progress(0, total);
    for (shard, file_name) in names.iter().enumerate() {
        let members: Vec<&TensorSpec> = tensors
            .iter()
            .zip(&assignment)
            .filter(|(_, s)| **s == shard)
            .map(|(t, _)| t)
            .collect();
        let path = dir.join(file_name);
        let mut tell = |bytes: u64| {
            done += bytes;
            progress(done, total);
        };
        write_file(&path, &members, dtype, size, seed, &mut tell)?;
        for t in members {
            weight_map.insert(t.name.clone(), file_name.clone());
        }
    }
    if shards > 1 {
        let index = json!({
            "metadata": {"total_size": total},
            "weight_map": weight_map,
        });
        let path = dir.join("model.safetensors.index.json");
        write_json(&path, &index)?;
    }
    Ok(Written {
        files: names,
        data_bytes: total,
    })
}

/// One safetensors file: the header (padded with spaces to 8 bytes, as the `safetensors` crate
/// pads it), then each tensor's data in order; `wrote` is told the data bytes of each wave of
/// chunks once they are in the file's buffer.
fn write_file(
    path: &Path,
    tensors: &[&TensorSpec],
    dtype: candle_core::DType,
    size: u64,
    seed: u64,
    wrote: &mut dyn FnMut(u64),
) -> Result<(), LoadError> {
    let io = |e| crate::load::io_error(path, e);
    let dtype_name = match dtype {
        candle_core::DType::F32 => "F32",
        candle_core::DType::F16 => "F16",
        _ => "BF16",
    };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for t in tensors {
        let bytes = t.elements() * size;
        header.insert(
            t.name.clone(),
            json!({"dtype": dtype_name, "shape": t.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = Value::Object(header).to_string().into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = BufWriter::with_capacity(8 << 20, File::create(path).map_err(io)?);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    for t in tensors {
        let normal = match t.init {
            Init::Normal(std) => Some(Normal::new(0f32, std).map_err(|e| {
                LoadError::Device(DeviceError::other(format!(
                    "bad standard deviation for `{}`: {e}",
                    t.name
                )))
            })?),
            _ => None,
        };
        let elements = t.elements() as usize;
        let chunks = elements.div_ceil(CHUNK);
        // Chunks are generated a wave at a time, one thread each, and written in order.
        for wave in (0..chunks).step_by(threads) {
            let generated: Vec<Vec<u8>> = std::thread::scope(|scope| {
                let workers: Vec<_> = (wave..chunks.min(wave + threads))
                    .map(|chunk| {
                        let n = CHUNK.min(elements - chunk * CHUNK);
                        scope.spawn(move || chunk_bytes(t, normal, seed, chunk, n, dtype))
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().expect("a chunk generator panicked"))
                    .collect()
            });
            let mut bytes_out = 0u64;
            for bytes in generated {
                out.write_all(&bytes).map_err(io)?;
                bytes_out += bytes.len() as u64;
            }
            wrote(bytes_out);
        }
    }
    out.flush().map_err(io)?;
    Ok(())
}

/// Writes a placeholder `tokenizer.json` for a random-weight model of `vocab_size` tokens: a
/// word-level vocabulary `t0`, `t1`, ... (`t0` also stands for any unknown word), split on
/// whitespace, so that every token decodes to text and text prompts of those words encode.
/// It makes a `make-model` checkpoint servable with text prompts; it is no real language's.
pub fn write_placeholder_tokenizer(dir: &Path, vocab_size: usize) -> Result<(), LoadError> {
    let vocab: serde_json::Map<String, Value> = (0..vocab_size)
        .map(|i| (format!("t{i}"), json!(i)))
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
    });
    let path = dir.join("tokenizer.json");
    let text = serde_json::to_string(&tokenizer).expect("JSON values serialise");
    std::fs::write(&path, text).map_err(|e| crate::load::io_error(&path, e))
}

/// Writes `value` as pretty JSON with a trailing newline.
pub fn write_json(path: &Path, value: &Value) -> Result<(), LoadError> {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    text.push('\n');
    std::fs::write(path, text).map_err(|e| crate::load::io_error(path, e))
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
