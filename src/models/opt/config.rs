//! OPT's `config.json`, with the field names and defaults of Hugging Face `OPTConfig`, and the tensor list it implies.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::{OptEngine, OptModel};
use crate::load::{DeviceWeights, LoadError};
use crate::models::family::Config;

/// The hyper-parameters of an OPT model, as written in its `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    #[serde(default = "d::vocab")]
    pub vocab_size: usize,
    #[serde(default = "d::hidden")]
    pub hidden_size: usize,
    #[serde(default = "d::layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d::ffn")]
    pub ffn_dim: usize,
    #[serde(default = "d::positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "d::yes")]
    pub do_layer_norm_before: bool,
    #[serde(default)]
    pub _remove_final_layer_norm: bool,
    /// Width of the token embeddings; differs from `hidden_size` in OPT-350m (`project_in/out`).
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    #[serde(default = "d::heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d::relu")]
    pub activation_function: String,
    #[serde(default = "d::yes")]
    pub enable_bias: bool,
    #[serde(default = "d::yes")]
    pub layer_norm_elementwise_affine: bool,
    #[serde(default = "d::yes")]
    pub tie_word_embeddings: bool,
    #[serde(default = "d::bos")]
    pub bos_token_id: u32,
    #[serde(default = "d::bos")]
    pub eos_token_id: u32,
    #[serde(default = "d::pad")]
    pub pad_token_id: u32,
    /// The dtype the checkpoint was saved in (`torch_dtype` in older files).
    #[serde(
        default,
        alias = "torch_dtype",
        skip_serializing_if = "Option::is_none"
    )]
    pub dtype: Option<String>,
}

fn default_model_type() -> String {
    "opt".into()
}

/// Defaults of transformers' `OPTConfig` (those of facebook/opt-125m).
mod d {
    pub fn vocab() -> usize {
        50272
    }
    pub fn hidden() -> usize {
        768
    }
    pub fn layers() -> usize {
        12
    }
    pub fn ffn() -> usize {
        3072
    }
    pub fn positions() -> usize {
        2048
    }
    pub fn heads() -> usize {
        12
    }
    pub fn relu() -> String {
        "relu".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn bos() -> u32 {
        2
    }
    pub fn pad() -> u32 {
        1
    }
}

/// OPT's learned positions start at index 2 (fairseq's padding offset).
pub const POSITION_OFFSET: usize = 2;

/// Limits on a config's dimensions, checked before anything is sized from them: far above any
/// released OPT (175B: vocab 50272, hidden 12288, ffn 49152, 96 layers, 2048 positions).
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_WIDTH: usize = 1 << 16;
pub const MAX_FFN: usize = 1 << 18;
pub const MAX_LAYERS: usize = 1 << 10;
pub const MAX_POSITIONS: usize = 1 << 20;
/// Most parameters a config may imply (about 1.1 trillion).
pub const MAX_PARAMETERS: u64 = 1 << 40;

/// Layer norm epsilon of `nn.LayerNorm`'s default, which OPT uses.
pub const LAYER_NORM_EPS: f64 = 1e-5;

impl OptConfig {
    /// Reads and checks `config.json` (a regular file of at most 1 MiB).
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text = crate::load::read_bounded(path, crate::load::MAX_CONFIG_BYTES)?;
        let config: OptConfig =
            serde_json::from_slice(&text).map_err(|e| LoadError::InvalidConfig {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        config.validate().map_err(|e| match e {
            LoadError::InvalidConfig { reason, .. } => LoadError::InvalidConfig {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Checks that the numbers describe a model this engine can run.
    pub fn validate(&self) -> Result<(), LoadError> {
        if self.model_type != "opt" {
            return Err(LoadError::WrongFamily {
                expected: "opt",
                found: self.model_type.clone(),
            });
        }
        let invalid = |reason: String| LoadError::InvalidConfig {
            path: "config.json".into(),
            reason,
        };
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(invalid(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.vocab_size == 0 || self.max_position_embeddings == 0 || self.ffn_dim == 0 {
            return Err(invalid(
                "vocab_size, ffn_dim and max_position_embeddings must be positive".into(),
            ));
        }
        let bounds = [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("ffn_dim", self.ffn_dim, MAX_FFN),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            (
                "num_attention_heads",
                self.num_attention_heads,
                self.hidden_size,
            ),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_POSITIONS,
            ),
            ("word_embed_proj_dim", self.embed_dim(), MAX_WIDTH),
        ];
        for (name, value, max) in bounds {
            if value > max {
                return Err(invalid(format!(
                    "{name} {value} is over the limit of {max}"
                )));
            }
        }
        if self.embed_dim() == 0 {
            return Err(invalid("word_embed_proj_dim must be positive".into()));
        }
        let parameters = self.parameter_count();
        if parameters > MAX_PARAMETERS {
            return Err(invalid(format!(
                "the config implies {parameters} parameters, over the limit of {MAX_PARAMETERS}"
            )));
        }
        if !matches!(
            self.activation_function.as_str(),
            "relu" | "gelu" | "gelu_new"
        ) {
            return Err(invalid(format!(
                "unsupported activation_function `{}`",
                self.activation_function
            )));
        }
        Ok(())
    }

    pub fn embed_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// OPT-350m style: embeddings narrower than the hidden size, with `project_in` / `project_out`.
    pub fn has_projections(&self) -> bool {
        self.embed_dim() != self.hidden_size
    }

    pub fn has_final_layer_norm(&self) -> bool {
        self.do_layer_norm_before && !self._remove_final_layer_norm
    }

    /// Every tensor the model needs, by its name without the `model.` prefix, with its shape.
    /// `lm_head.weight` is listed only when the embeddings are not tied.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, e, f) = (self.hidden_size, self.embed_dim(), self.ffn_dim);
        let mut out = vec![
            (
                "decoder.embed_tokens.weight".to_string(),
                vec![self.vocab_size, e],
            ),
            (
                "decoder.embed_positions.weight".to_string(),
                vec![self.max_position_embeddings + POSITION_OFFSET, h],
            ),
        ];
        if self.has_projections() {
            out.push(("decoder.project_in.weight".into(), vec![h, e]));
            out.push(("decoder.project_out.weight".into(), vec![e, h]));
        }
        let norm = |out: &mut Vec<(String, Vec<usize>)>, prefix: &str| {
            if self.layer_norm_elementwise_affine {
                out.push((format!("{prefix}.weight"), vec![h]));
                out.push((format!("{prefix}.bias"), vec![h]));
            }
        };
        let linear = |out: &mut Vec<(String, Vec<usize>)>, prefix: &str, o: usize, i: usize| {
            out.push((format!("{prefix}.weight"), vec![o, i]));
            if self.enable_bias {
                out.push((format!("{prefix}.bias"), vec![o]));
            }
        };
        for layer in 0..self.num_hidden_layers {
            let p = format!("decoder.layers.{layer}");
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                linear(&mut out, &format!("{p}.self_attn.{proj}"), h, h);
            }
            norm(&mut out, &format!("{p}.self_attn_layer_norm"));
            linear(&mut out, &format!("{p}.fc1"), f, h);
            linear(&mut out, &format!("{p}.fc2"), h, f);
            norm(&mut out, &format!("{p}.final_layer_norm"));
        }
        if self.has_final_layer_norm() {
            norm(&mut out, "decoder.final_layer_norm");
        }
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".into(), vec![self.vocab_size, e]));
        }
        out
    }
}

/// The family table's parse: `config.json`'s text read as OPT's and checked.
pub fn parse(text: &str) -> Result<Box<dyn Config>, LoadError> {
    let config: OptConfig = serde_json::from_str(text).map_err(|e| LoadError::InvalidConfig {
        path: "config.json".into(),
        reason: e.to_string(),
    })?;
    config.validate()?;
    Ok(Box::new(config))
}

impl Config for OptConfig {
    fn model_type(&self) -> &str {
        &self.model_type
    }

    fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        OptConfig::expected_tensors(self)
    }

    fn kv_elements_per_token(&self) -> u64 {
        2 * (self.hidden_size * self.num_hidden_layers) as u64
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn max_positions(&self) -> usize {
        self.max_position_embeddings
    }

    fn build_engine(
        &self,
        weights: &DeviceWeights,
        tokenizer: Option<Arc<Tokenizer>>,
        dir: &Path,
        kv_cache_tokens: usize,
    ) -> Result<Box<dyn wc_actors::Engine>, LoadError> {
        let model = OptModel::new(self.clone(), weights)?;
        let engine =
            OptEngine::attached(model, tokenizer, weights.device_bytes, kv_cache_tokens, dir)?;
        Ok(Box::new(engine))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_125m_defaults_have_125m_parameters() {
        let cfg: OptConfig = serde_json::from_str("{}").unwrap();
        let params = cfg.parameter_count();
        assert!((125_000_000..125_300_000).contains(&params), "{params}");
    }
}
