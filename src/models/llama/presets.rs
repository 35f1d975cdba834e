//! The configs of published Llama-family checkpoints (exact shapes and tensor names, for
//! `make-model`), and random weights for any Llama-family config.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use super::config::LlamaConfig;
use crate::load::dtype::candle_dtype;
use crate::load::writer::{
    write_json, write_placeholder_tokenizer, write_safetensors_with_progress, Init, Progress,
    TensorSpec, Written,
};
use crate::load::LoadError;
use crate::models::family::{Config, PresetInfo};

/// A published checkpoint's `config.json` and how its weights are sharded.
pub struct Preset {
    pub name: &'static str,
    /// The `config.json` as published (the base model's).
    pub config_json: &'static str,
    /// `model-0000i-of-0000n.safetensors` files the original is split into (1: `model.safetensors`).
    pub shards: usize,
}

/// Presets accepted by `make-model`: five published checkpoints, and `llama-tiny` (a few
/// hundred thousand parameters in Llama 3.2's layout, two shards) for tests.
pub const PRESETS: [Preset; 6] = [
    Preset {
        name: "llama-3.2-1b",
        config_json: r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
  "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "use_cache": true,
  "vocab_size": 128256}"#,
        shards: 1,
    },
    Preset {
        name: "llama-3.1-8b",
        config_json: r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
  "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
  "vocab_size": 128256}"#,
        shards: 4,
    },
    Preset {
        name: "qwen2.5-7b",
        config_json: r#"{"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
  "intermediate_size": 18944, "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "qwen2",
  "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 152064}"#,
        shards: 4,
    },
    Preset {
        name: "qwen3-8b",
        config_json: r#"{"architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
  "initializer_range": 0.02, "intermediate_size": 12288, "max_position_embeddings": 40960,
  "max_window_layers": 36, "model_type": "qwen3", "num_attention_heads": 32, "num_hidden_layers": 36,
  "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000,
  "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936}"#,
        shards: 5,
    },
    Preset {
        name: "mistral-7b",
        config_json: r#"{"architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
  "sliding_window": 4096, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
  "vocab_size": 32000}"#,
        shards: 2,
    },
    Preset {
        name: "llama-tiny",
        config_json: r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 0, "eos_token_id": [1, 3], "head_dim": 16, "hidden_act": "silu", "hidden_size": 64,
  "initializer_range": 0.02, "intermediate_size": 128, "max_position_embeddings": 256, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 64, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
  "vocab_size": 512}"#,
        shards: 2,
    },
];

/// The preset called `name`.
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

impl Preset {
    /// The preset's config, resolved.
    pub fn config(&self) -> LlamaConfig {
        LlamaConfig::from_json(self.config_json).expect("preset configs are valid")
    }
}

/// The tensors of `config` as `save_pretrained` writes them: full names (`model.` prefix but
/// for `lm_head`), in state-dict order (embeddings, each layer in turn, final norm, head), each
/// with transformers' initialisation (normal(0, 0.02) matrices, ones for norms, zeros for biases).
pub fn tensor_specs(config: &LlamaConfig) -> Vec<TensorSpec> {
    let mut tensors: Vec<TensorSpec> = config
        .expected_tensors()
        .into_iter()
        .map(|(name, shape)| {
            let init = if name.ends_with("norm.weight") {
                Init::Ones
            } else if name.ends_with(".bias") {
                Init::Zeros
            } else {
                Init::Normal(0.02)
            };
            let name = if name == "lm_head.weight" {
                name
            } else {
                format!("model.{name}")
            };
            TensorSpec { name, shape, init }
        })
        .collect();
    let place = |name: &str| -> (usize, usize) {
        let layer = name
            .strip_prefix("model.layers.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        match (layer, name) {
            (Some(i), _) => (1, i),
            (None, "model.embed_tokens.weight") => (0, 0),
            (None, "lm_head.weight") => (3, 0),
            _ => (2, 0),
        }
    };
    tensors.sort_by_key(|t| place(&t.name));
    tensors
}

/// Writes a random-weight checkpoint of `preset` in `dtype` into `out`: `config.json` (the
/// published one, its dtype set to the one written), `generation_config.json` (its BOS and EOS
/// ids), and the weights in `shards` files (`None`: as many as the original) with
/// `model.safetensors.index.json` when there are several. Streams tensor by tensor.
pub fn write_checkpoint(
    preset: &Preset,
    dtype: DType,
    out: &Path,
    seed: u64,
    shards: Option<usize>,
) -> Result<Written, LoadError> {
    write_checkpoint_with_progress(preset, dtype, out, seed, shards, &mut |_, _| {})
}

/// [`write_checkpoint`], telling `progress` the weight bytes written so far and the total.
pub fn write_checkpoint_with_progress(
    preset: &Preset,
    dtype: DType,
    out: &Path,
    seed: u64,
    shards: Option<usize>,
    progress: Progress<'_>,
) -> Result<Written, LoadError> {
    let config = preset.config();
    let mut config_json: serde_json::Value =
        serde_json::from_str(preset.config_json).expect("preset configs are JSON");
    let dtype_name = match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    };
    config_json["torch_dtype"] = dtype_name.into();
    std::fs::create_dir_all(out).map_err(|e| crate::load::io_error(out, e))?;
    write_json(&out.join("config.json"), &config_json)?;
    let generation = serde_json::json!({
        "_from_model_config": true,
        "bos_token_id": config_json["bos_token_id"],
        "eos_token_id": config_json["eos_token_id"],
    });
    write_json(&out.join("generation_config.json"), &generation)?;
    write_safetensors_with_progress(
        out,
        &tensor_specs(&config),
        dtype,
        shards.unwrap_or(preset.shards),
        seed,
        progress,
    )
}

/// Random weights with every tensor of `config`, on `device` in `dtype`: normal(0, 0.02) for
/// matrices, ones for norm scales and zeros for biases, as transformers initialises them.
pub fn random_weights(
    config: &LlamaConfig,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> Result<HashMap<String, Tensor>, LoadError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0f32, 0.02).expect("valid normal distribution");
    let mut out = HashMap::new();
    for (name, shape) in config.expected_tensors() {
        let tensor = if name.ends_with("norm.weight") {
            Tensor::ones(shape, dtype, device)?
        } else if name.ends_with(".bias") {
            Tensor::zeros(shape, dtype, device)?
        } else {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            Tensor::from_vec(values, shape, &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?
        };
        out.insert(name, tensor);
    }
    Ok(out)
}

/// The family table's preset lookup.
pub fn info(name: &str) -> Option<PresetInfo> {
    preset(name).map(|p| PresetInfo {
        parameters: p.config().parameter_count(),
        default_dtype: wc_actors::DType::BF16,
        shardable: true,
    })
}

/// The family table's preset writer: the weights in `shards` files (`None`: as the original),
/// `config.json`, `generation_config.json`, a placeholder `tokenizer.json` and, when sharded,
/// `model.safetensors.index.json`; `progress` is told the weight bytes as they are written.
pub fn write_preset(
    name: &str,
    dtype: wc_actors::DType,
    out: &Path,
    seed: u64,
    shards: Option<usize>,
    progress: Progress<'_>,
) -> Result<Written, LoadError> {
    let preset = preset(name).ok_or_else(|| LoadError::InvalidConfig {
        path: out.to_path_buf(),
        reason: format!("no Llama-family preset `{name}`"),
    })?;
    let mut written =
        write_checkpoint_with_progress(preset, candle_dtype(dtype), out, seed, shards, progress)?;
    write_placeholder_tokenizer(out, preset.config().vocab_size)?;
    let sharded = written.files.len() > 1;
    written
        .files
        .extend(["config.json", "generation_config.json", "tokenizer.json"].map(String::from));
    if sharded {
        written.files.push("model.safetensors.index.json".into());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameter counts as published (billions, rounded as the model cards do).
    #[test]
    fn presets_have_their_published_sizes() {
        let expect = [
            ("llama-3.2-1b", 1.236),
            ("llama-3.1-8b", 8.030),
            ("qwen2.5-7b", 7.6),
            ("qwen3-8b", 8.19),
            ("mistral-7b", 7.24),
        ];
        for (name, billions) in expect {
            let params = preset(name).unwrap().config().parameter_count() as f64 / 1e9;
            assert!(
                (params - billions).abs() / billions < 0.01,
                "{name}: {params:.3}B, expected ~{billions}B"
            );
        }
    }

    #[test]
    fn preset_switches_follow_the_family() {
        let q = preset("qwen2.5-7b").unwrap().config();
        assert!(q.qkv_bias && q.layer_windows.iter().all(Option::is_none));
        let m = preset("mistral-7b").unwrap().config();
        assert!(m.layer_windows.iter().all(|w| *w == Some(4096)));
        let l = preset("llama-3.2-1b").unwrap().config();
        assert!(l.tie_word_embeddings && l.head_dim == 64);
    }
}
