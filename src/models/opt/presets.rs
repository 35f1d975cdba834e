//! The shapes of published OPT models, and random-weight checkpoints made from them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use super::config::OptConfig;
use crate::load::dtype::candle_dtype;
use crate::load::writer::{write_placeholder_tokenizer, Progress, Written};
use crate::load::LoadError;
use crate::models::family::{Config, PresetInfo};

/// Preset names accepted by `make-model`.
pub const PRESETS: [&str; 3] = ["opt-125m", "opt-350m", "tiny"];

/// The config of a preset, as facebook published it (`tiny`: the bundled fixtures' shape).
pub fn preset(name: &str) -> Option<OptConfig> {
    let mut cfg: OptConfig = serde_json::from_str("{}").expect("defaults parse");
    match name {
        "opt-125m" => {}
        "opt-350m" => {
            cfg.hidden_size = 1024;
            cfg.num_hidden_layers = 24;
            cfg.num_attention_heads = 16;
            cfg.ffn_dim = 4096;
            cfg.word_embed_proj_dim = Some(512);
            cfg.do_layer_norm_before = false;
        }
        "tiny" => {
            cfg.vocab_size = 512;
            cfg.hidden_size = 128;
            cfg.num_hidden_layers = 2;
            cfg.num_attention_heads = 4;
            cfg.ffn_dim = 512;
            cfg.max_position_embeddings = 128;
        }
        _ => return None,
    }
    if cfg.word_embed_proj_dim.is_none() {
        cfg.word_embed_proj_dim = Some(cfg.hidden_size);
    }
    Some(cfg)
}

/// Random weights with every tensor of `config`, on `device` in `dtype`: normal(0, 0.02) for
/// matrices, ones for layer-norm scales and zeros for biases, as transformers initialises them.
pub fn random_weights(
    config: &OptConfig,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> Result<HashMap<String, Tensor>, LoadError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0f32, 0.02).expect("valid normal distribution");
    let mut out = HashMap::new();
    for (name, shape) in config.expected_tensors() {
        let tensor = if name.contains("layer_norm") && name.ends_with(".weight") {
            Tensor::ones(shape, dtype, device)?
        } else if name.ends_with(".bias") {
            Tensor::zeros(shape, dtype, device)?
        } else {
            let count = shape.iter().product();
            let values: Vec<f32> = (0..count).map(|_| normal.sample(&mut rng)).collect();
            Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?
        };
        out.insert(name, tensor);
    }
    Ok(out)
}

/// Writes a random-weight checkpoint in the Hugging Face layout (`config.json`, `model.safetensors`).
pub fn write_checkpoint(
    config: &OptConfig,
    dtype: DType,
    out: &Path,
    seed: u64,
) -> Result<u64, LoadError> {
    let io = |source| LoadError::Io {
        path: out.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(out).map_err(io)?;
    let weights = random_weights(config, &Device::Cpu, dtype, seed)?;
    let prefixed: HashMap<String, Tensor> = weights
        .into_iter()
        .map(|(name, t)| (format!("model.{name}"), t))
        .collect();
    let path = out.join("model.safetensors");
    candle_core::safetensors::save(&prefixed, &path)?;
    let mut json = serde_json::to_value(config).expect("config serialises");
    let fields = json.as_object_mut().expect("config is an object");
    fields.insert(
        "architectures".into(),
        serde_json::json!(["OPTForCausalLM"]),
    );
    fields.insert(
        "dtype".into(),
        serde_json::json!(match dtype {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            _ => "float32",
        }),
    );
    let text = serde_json::to_string_pretty(&json).expect("json serialises");
    std::fs::write(out.join("config.json"), text).map_err(io)?;
    Ok(std::fs::metadata(&path).map_err(io)?.len())
}

/// The family table's preset lookup.
pub fn info(name: &str) -> Option<PresetInfo> {
    preset(name).map(|config| PresetInfo {
        parameters: config.parameter_count(),
        default_dtype: wc_actors::DType::F16,
        shardable: false,
    })
}

/// The family table's preset writer: `model.safetensors`, `config.json` and a placeholder
/// `tokenizer.json`; OPT presets are one file (`shards` other than 1 is refused). The weights are
/// made in memory and saved at once (OPT presets are at most a few hundred MB), so `progress` is
/// told only when the file is written.
pub fn write_preset(
    name: &str,
    dtype: wc_actors::DType,
    out: &Path,
    seed: u64,
    shards: Option<usize>,
    progress: Progress<'_>,
) -> Result<Written, LoadError> {
    let config = preset(name).ok_or_else(|| LoadError::InvalidConfig {
        path: out.to_path_buf(),
        reason: format!("no OPT preset `{name}`"),
    })?;
    if shards.is_some_and(|n| n != 1) {
        return Err(LoadError::InvalidConfig {
            path: out.to_path_buf(),
            reason: "OPT presets are written as one file".into(),
        });
    }
    let data_bytes = write_checkpoint(&config, candle_dtype(dtype), out, seed)?;
    progress(data_bytes, data_bytes);
    write_placeholder_tokenizer(out, config.vocab_size)?;
    Ok(Written {
        files: ["model.safetensors", "config.json", "tokenizer.json"]
            .map(String::from)
            .to_vec(),
        data_bytes,
    })
}
