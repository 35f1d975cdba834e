//! The model layer: which family a checkpoint is (from `config.json`'s `model_type`), the
//! [`CausalLm`] trait every family implements, and the engine, generation loop, sampler and chat
//! template they share.
//!
//! Adding a family means a folder here, a [`ModelConfig`] variant and a [`CausalLm`] impl.

pub mod batch;
pub mod chat_template;
pub mod decode_attention;
pub mod detokenizer;
pub mod engine;
pub mod generate;
pub mod generation_config;
pub mod kv_cache;
pub mod kv_pass;
pub mod kv_slab;
pub mod llama;
pub mod matmul;
pub mod opt;
pub mod packing;
pub mod prompt;
pub mod sampler;
pub mod sequence;
pub mod text_files;
pub mod writer;

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::error::LoadError;
use crate::weights::DeviceWeights;
pub use engine::TextEngine;
pub use llama::{LlamaConfig, LlamaEngine, LlamaModel};
pub use opt::{OptConfig, OptEngine, OptModel};

/// Most parameters a config may imply (about 1.1 trillion), for every family.
pub const MAX_PARAMETERS: u64 = opt::config::MAX_PARAMETERS;

/// The `model_type`s this engine runs, as named in errors and `--help`.
pub const SUPPORTED_MODEL_TYPES: [&str; 5] = ["opt", "llama", "mistral", "qwen2", "qwen3"];

/// A causal language model the shared generation loop can drive.
pub trait CausalLm {
    /// The keys and values of one sequence's tokens so far.
    type Cache: TokenCache;

    /// An empty cache for one sequence.
    fn new_cache(&self) -> Self::Cache;

    /// Runs `ids` after the tokens already in `cache` (appending them to it) and returns f32
    /// logits: `[ids.len(), vocab]` when `all_positions`, else `[vocab]` for the last token.
    fn forward_tokens(
        &self,
        ids: &[u32],
        cache: &mut Self::Cache,
        all_positions: bool,
    ) -> candle_core::Result<Tensor>;

    /// Runs several sequences in one pass, each's new tokens after those in its own cache
    /// (appending them to it); returns f32 logits `[sequences, vocab]` of each one's last token.
    fn forward_batch(&self, seqs: &mut [(&[u32], &mut Self::Cache)])
        -> candle_core::Result<Tensor>;

    fn vocab_size(&self) -> usize;

    /// The most positions (prompt plus generated tokens) one sequence may use.
    fn max_positions(&self) -> usize;

    /// End-of-sequence ids from `config.json` (the engine adds `generation_config.json`'s).
    fn eos_ids(&self) -> Vec<u32>;

    /// A token to run the one-step warm-up after attach with.
    fn warm_up_token(&self) -> u32;

    fn device(&self) -> &Device;

    /// The keys and values of every sequence of this model (reserved when an engine attaches).
    fn kv_slab(&self) -> &kv_slab::KvSlab;
}

/// What the generation loop needs to know of a cache.
pub trait TokenCache {
    /// Tokens already in the cache: the position the next token gets.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A checkpoint's `config.json`, read as the family its `model_type` names.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    Opt(OptConfig),
    Llama(LlamaConfig),
}

/// Only `model_type`, to choose the family before reading the rest.
#[derive(serde::Deserialize)]
struct ModelTypeOnly {
    model_type: Option<String>,
}

impl ModelConfig {
    /// Reads `config.json` (a regular file, size-bounded) and checks it for the family its
    /// `model_type` names.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        crate::checkpoint::read_config(path)
    }

    /// Parses and checks the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self, LoadError> {
        let invalid = |reason: String| LoadError::InvalidConfig {
            path: "config.json".into(),
            reason,
        };
        let probe: ModelTypeOnly =
            serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        // OPT checkpoints from before `model_type` existed have none; OptConfig defaults it.
        match probe.model_type.as_deref().unwrap_or("opt") {
            "opt" => {
                let config: OptConfig =
                    serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
                config.validate()?;
                Ok(Self::Opt(config))
            }
            t if llama::config::FAMILIES.contains(&t) => {
                let config = Self::Llama(LlamaConfig::from_json(text)?);
                let parameters = config.parameter_count();
                if parameters > MAX_PARAMETERS {
                    return Err(invalid(format!(
                        "the config implies {parameters} parameters, over the limit of {MAX_PARAMETERS}"
                    )));
                }
                Ok(config)
            }
            other => Err(LoadError::UnknownModelType(other.to_string())),
        }
    }

    /// The OPT config, when this is one.
    pub fn as_opt(&self) -> Option<&OptConfig> {
        match self {
            Self::Opt(c) => Some(c),
            Self::Llama(_) => None,
        }
    }

    /// The family's name for messages: `opt` or `llama` (for every Llama-family `model_type`).
    pub fn family(&self) -> &'static str {
        match self {
            Self::Opt(_) => "opt",
            Self::Llama(_) => "llama",
        }
    }

    pub fn model_type(&self) -> &str {
        match self {
            Self::Opt(c) => &c.model_type,
            Self::Llama(c) => &c.model_type,
        }
    }

    /// Every tensor the model needs, by its name without the `model.` prefix, with its shape.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            Self::Opt(c) => c.expected_tensors(),
            Self::Llama(c) => c.expected_tensors(),
        }
    }

    /// Device bytes of the keys and values one token takes in the KV cache, every layer, at
    /// `dtype_bytes` per element.
    pub fn kv_bytes_per_token(&self, dtype_bytes: u64) -> u64 {
        let per_layer = match self {
            Self::Opt(c) => c.hidden_size,
            Self::Llama(c) => c.num_key_value_heads * c.head_dim,
        };
        let layers = match self {
            Self::Opt(c) => c.num_hidden_layers,
            Self::Llama(c) => c.num_hidden_layers,
        };
        2 * (per_layer * layers) as u64 * dtype_bytes
    }

    /// Tokens in the model's vocabulary.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Opt(c) => c.vocab_size,
            Self::Llama(c) => c.vocab_size,
        }
    }

    /// The most positions (prompt plus generated tokens) one sequence may use.
    pub fn max_positions(&self) -> usize {
        match self {
            Self::Opt(c) => c.max_position_embeddings,
            Self::Llama(c) => c.max_position_embeddings,
        }
    }

    pub fn parameter_count(&self) -> u64 {
        self.expected_tensors()
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>() as u64)
            .sum()
    }

    /// Builds the engine from weights on the device, with the checkpoint's tokenizer and the
    /// stopping ids and chat template of the files in `dir` (`generation_config.json`,
    /// `tokenizer_config.json`, `chat_template.jinja`; each optional), batching requests within
    /// `kv_cache_tokens`.
    pub fn build_engine(
        &self,
        weights: &DeviceWeights,
        tokenizer: Option<std::sync::Arc<Tokenizer>>,
        dir: &Path,
        kv_cache_tokens: usize,
    ) -> Result<Box<dyn wc_actors::Engine>, LoadError> {
        Ok(match self {
            Self::Opt(c) => Box::new(
                OptEngine::new(
                    OptModel::new(c.clone(), weights)?,
                    tokenizer,
                    weights.device_bytes,
                )
                .with_kv_cache_tokens(kv_cache_tokens)?
                .with_checkpoint_files(dir)?,
            ),
            Self::Llama(c) => Box::new(
                LlamaEngine::new(
                    LlamaModel::new(c.clone(), weights)?,
                    tokenizer,
                    weights.device_bytes,
                )
                .with_kv_cache_tokens(kv_cache_tokens)?
                .with_checkpoint_files(dir)?,
            ),
        })
    }
}
