//! The Hugging Face `config.json` of the Llama family (llama, mistral, qwen2, qwen3), checked and
//! resolved into the few switches the one decoder needs, and the tensor list it implies.

use serde::Deserialize;
use serde_json::Value;

use super::rope::rope;
pub use super::rope::{RopeScaling, ROPE_TYPES};
use crate::load::LoadError;
use crate::models::text::generation_config::token_ids;

/// The `model_type`s this decoder runs.
pub const MODEL_TYPES: [&str; 4] = ["llama", "mistral", "qwen2", "qwen3"];

/// Bounds checked before anything is allocated from a config's numbers.
pub mod limits {
    pub const HIDDEN: usize = 65536;
    pub const INTERMEDIATE: usize = 1 << 20;
    pub const LAYERS: usize = 512;
    pub const HEADS: usize = 1024;
    pub const HEAD_DIM: usize = 1024;
    pub const VOCAB: usize = 1 << 20;
    pub const POSITIONS: usize = 1 << 24;
}

/// A Llama-family model's shape and switches, resolved from its `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on `q_proj`, `k_proj` and `v_proj` (qwen2; llama and qwen3 with `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on `o_proj` (llama and qwen3 with `attention_bias`).
    pub o_bias: bool,
    /// Biases on the MLP projections (llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Per-head RMSNorm of queries and keys before RoPE (qwen3).
    pub qk_norm: bool,
    /// Per layer: how many positions back (the token itself included) a query sees; `None` is all.
    pub layer_windows: Vec<Option<usize>>,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint was saved in, when it says.
    pub dtype: Option<String>,
}

/// `config.json` as written, before defaults and checks.
#[derive(Deserialize)]
struct Raw {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    vocab_size: usize,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    hidden_act: Option<String>,
    partial_rotary_factor: Option<f64>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    #[serde(alias = "torch_dtype")]
    dtype: Option<String>,
}

fn invalid(reason: impl Into<String>) -> LoadError {
    LoadError::InvalidConfig {
        path: "config.json".into(),
        reason: reason.into(),
    }
}

impl LlamaConfig {
    /// Parses and checks the text of a Llama-family `config.json`.
    pub fn from_json(text: &str) -> Result<Self, LoadError> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        Self::resolve(raw)
    }

    fn resolve(raw: Raw) -> Result<Self, LoadError> {
        let t = raw.model_type.as_str();
        if !MODEL_TYPES.contains(&t) {
            return Err(LoadError::WrongFamily {
                expected: "llama",
                found: raw.model_type.clone(),
            });
        }
        let in_range = |name: &str, value: usize, max: usize| {
            if value == 0 || value > max {
                Err(invalid(format!("{name} is {value}; supported: 1 to {max}")))
            } else {
                Ok(value)
            }
        };
        let hidden = in_range("hidden_size", raw.hidden_size, limits::HIDDEN)?;
        let intermediate = in_range(
            "intermediate_size",
            raw.intermediate_size,
            limits::INTERMEDIATE,
        )?;
        let layers = in_range("num_hidden_layers", raw.num_hidden_layers, limits::LAYERS)?;
        let heads = in_range(
            "num_attention_heads",
            raw.num_attention_heads,
            limits::HEADS,
        )?;
        let kv_heads = in_range(
            "num_key_value_heads",
            raw.num_key_value_heads.unwrap_or(heads),
            heads,
        )?;
        if heads % kv_heads != 0 {
            return Err(invalid(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if hidden % heads == 0 => hidden / heads,
            None => {
                return Err(invalid(format!(
                    "hidden_size {hidden} is not divisible by num_attention_heads {heads} (and no head_dim is given)"
                )))
            }
        };
        let head_dim = in_range("head_dim", head_dim, limits::HEAD_DIM)?;
        if head_dim % 2 != 0 {
            return Err(invalid(format!(
                "head_dim {head_dim} is odd; rotary embeddings need an even head_dim"
            )));
        }
        let vocab = in_range("vocab_size", raw.vocab_size, limits::VOCAB)?;
        let default_positions = match t {
            "llama" => 2048,
            "mistral" => 4096 * 32,
            _ => 32768,
        };
        let positions = in_range(
            "max_position_embeddings",
            raw.max_position_embeddings.unwrap_or(default_positions),
            limits::POSITIONS,
        )?;
        let eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(eps.is_finite() && eps > 0.0) {
            return Err(invalid(format!("rms_norm_eps must be positive, got {eps}")));
        }
        match raw.hidden_act.as_deref() {
            None | Some("silu") => {}
            Some(other) => {
                return Err(invalid(format!(
                    "hidden_act `{other}` is not supported; supported: `silu`"
                )))
            }
        }
        if let Some(f) = raw.partial_rotary_factor.filter(|f| *f != 1.0) {
            return Err(invalid(format!(
                "partial_rotary_factor {f} is not supported; supported: 1.0"
            )));
        }
        let (rope_theta, rope_scaling) =
            rope(&raw.rope_parameters, &raw.rope_scaling, raw.rope_theta)?;
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias, mlp_bias, qk_norm) = match t {
            "llama" => (
                attention_bias,
                attention_bias,
                raw.mlp_bias.unwrap_or(false),
                false,
            ),
            "mistral" => (false, false, false, false),
            "qwen2" => (true, false, false, false),
            _ => (attention_bias, attention_bias, false, true),
        };
        let layer_windows = windows(&raw, layers)?;
        let bos_token_id = token_ids(raw.bos_token_id.as_ref(), "bos_token_id")
            .map_err(invalid)?
            .first()
            .copied();
        let eos_token_ids =
            token_ids(raw.eos_token_id.as_ref(), "eos_token_id").map_err(invalid)?;
        Ok(Self {
            model_type: raw.model_type,
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: eps,
            vocab_size: vocab,
            max_position_embeddings: positions,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias,
            qk_norm,
            layer_windows,
            rope_theta,
            rope_scaling,
            bos_token_id,
            eos_token_ids,
            dtype: raw.dtype,
        })
    }

    /// Every tensor the model needs, by its name without the `model.` prefix, with its shape.
    /// `lm_head.weight` is listed only when the embeddings are not tied.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_attention_heads * d, self.num_key_value_heads * d);
        let mut out = vec![("embed_tokens.weight".to_string(), vec![self.vocab_size, h])];
        let mut linear = |name: String, o: usize, i: usize, bias: bool| {
            out.push((format!("{name}.weight"), vec![o, i]));
            if bias {
                out.push((format!("{name}.bias"), vec![o]));
            }
        };
        for layer in 0..self.num_hidden_layers {
            let p = format!("layers.{layer}");
            linear(format!("{p}.self_attn.q_proj"), q, h, self.qkv_bias);
            linear(format!("{p}.self_attn.k_proj"), kv, h, self.qkv_bias);
            linear(format!("{p}.self_attn.v_proj"), kv, h, self.qkv_bias);
            linear(format!("{p}.self_attn.o_proj"), h, q, self.o_bias);
            linear(format!("{p}.mlp.gate_proj"), i, h, self.mlp_bias);
            linear(format!("{p}.mlp.up_proj"), i, h, self.mlp_bias);
            linear(format!("{p}.mlp.down_proj"), h, i, self.mlp_bias);
        }
        for layer in 0..self.num_hidden_layers {
            let p = format!("layers.{layer}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            if self.qk_norm {
                out.push((format!("{p}.self_attn.q_norm.weight"), vec![d]));
                out.push((format!("{p}.self_attn.k_norm.weight"), vec![d]));
            }
        }
        out.push(("norm.weight".into(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".into(), vec![self.vocab_size, h]));
        }
        out
    }

    /// Inverse frequencies of the rotary embedding (`[head_dim / 2]`), computed in f32 as
    /// transformers does.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base = self.rope_theta as f32;
        let default = (0..d / 2).map(|i| 1.0f32 / base.powf((2 * i) as f32 / d as f32));
        match &self.rope_scaling {
            RopeScaling::Default => default.collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                );
                let old_len = *original_max_position_embeddings as f32;
                let low_freq_wavelen = old_len / low;
                let high_freq_wavelen = old_len / high;
                default
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_len / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

/// The attention window of each layer: `layer_types` when given, else the family's rule
/// (mistral: every layer when `sliding_window` is set; qwen2/qwen3: layers from
/// `max_window_layers` on, and only with `use_sliding_window`; llama: none).
fn windows(raw: &Raw, layers: usize) -> Result<Vec<Option<usize>>, LoadError> {
    let window = match raw.model_type.as_str() {
        "mistral" => raw.sliding_window,
        "qwen2" | "qwen3" if raw.use_sliding_window == Some(true) => raw.sliding_window,
        _ => None,
    };
    if window == Some(0) {
        return Err(invalid("sliding_window must be at least 1"));
    }
    if let Some(types) = &raw.layer_types {
        if types.len() != layers {
            return Err(invalid(format!(
                "layer_types has {} entries for {layers} layers",
                types.len()
            )));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                "full_attention" => Ok(None),
                "sliding_attention" => window.map(Some).ok_or_else(|| {
                    invalid("layer_types names `sliding_attention` but no sliding_window is set")
                }),
                other => Err(invalid(format!(
                    "layer type `{other}` is not supported; supported: `full_attention`, `sliding_attention`"
                ))),
            })
            .collect();
    }
    let first_windowed = match raw.model_type.as_str() {
        "qwen2" | "qwen3" => raw.max_window_layers.unwrap_or(28),
        _ => 0,
    };
    Ok((0..layers)
        .map(|i| window.filter(|_| i >= first_windowed))
        .collect())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
