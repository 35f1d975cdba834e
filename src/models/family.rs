//! THE family table: which family reads a checkpoint's `config.json` (by its `model_type`), and
//! what each one offers the floors above: config parse, expected tensors, KV bytes per token,
//! parameter count, engine build, prewarm and `make-model` presets.
//!
//! A new family is a folder under `models/` (its config implementing [`Config`]) and one row in
//! [`FAMILIES`]; error messages, prewarm, `make-model` and `serve --help` read the table.

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use tokenizers::Tokenizer;
use wc_actors::DType;

use super::{llama, opt};
use crate::load::writer::Written;
use crate::load::{Checkpoint, DeviceWeights, LoadError};

/// Most parameters a config may imply (about 1.1 trillion), for every family.
pub const MAX_PARAMETERS: u64 = 1 << 40;

/// The `model_type` of a `config.json` that has none: OPT checkpoints from before the field.
pub const MISSING_MODEL_TYPE: &str = "opt";

/// What every family's parsed and checked `config.json` tells the floors above it.
pub trait Config: std::fmt::Debug + Send + Sync + 'static {
    /// The `model_type` it was read as.
    fn model_type(&self) -> &str;

    /// Every tensor the model needs, by its name without the `model.` prefix, with its shape.
    fn expected_tensors(&self) -> Vec<(String, Vec<usize>)>;

    /// Weights the model reads as one (e.g. a layer's q/k/v projections), to be stored so by
    /// [`DeviceWeights::fuse`] before the engine is built; none unless the family says.
    fn fused_groups(&self) -> Vec<crate::load::weights::FusedGroup> {
        Vec::new()
    }

    /// Elements of keys and values one token takes in the KV cache, every layer.
    fn kv_elements_per_token(&self) -> u64;

    /// Tokens in the model's vocabulary.
    fn vocab_size(&self) -> usize;

    /// The most positions (prompt plus generated tokens) one sequence may use.
    fn max_positions(&self) -> usize;

    /// Builds the engine from weights on the device, with the checkpoint's tokenizer and the
    /// side files of `dir` (stopping ids, chat template), batching within `kv_cache_tokens`.
    fn build_engine(
        &self,
        weights: &DeviceWeights,
        tokenizer: Option<Arc<Tokenizer>>,
        dir: &Path,
        kv_cache_tokens: usize,
    ) -> Result<Box<dyn wc_actors::Engine>, LoadError>;

    /// For [`FamilyConfig::get`].
    fn as_any(&self) -> &dyn Any;

    /// Number of parameters, from [`Self::expected_tensors`].
    fn parameter_count(&self) -> u64 {
        self.expected_tensors()
            .iter()
            .map(|(_, shape)| shape.iter().map(|&d| d as u64).product::<u64>())
            .sum()
    }
}

/// What `make-model` says of a preset before writing it.
pub struct PresetInfo {
    pub parameters: u64,
    /// The dtype the published checkpoint is in.
    pub default_dtype: DType,
    /// Whether the preset may be written in several shards.
    pub shardable: bool,
}

/// A family's preset writer: preset name, dtype, output directory, seed, shards (`None`: as
/// the published checkpoint), and a callback told the weight bytes written so far and the total.
pub type WritePreset = fn(
    &str,
    DType,
    &Path,
    u64,
    Option<usize>,
    &mut dyn FnMut(u64, u64),
) -> Result<Written, LoadError>;

/// One row of the table: a family and what the crate calls it for.
pub struct Family {
    /// The family's name in messages and prewarm steps.
    pub name: &'static str,
    /// The `model_type`s of `config.json` this family reads.
    pub model_types: &'static [&'static str],
    /// Parses and checks the text of a `config.json` of one of `model_types`.
    pub parse: fn(&str) -> Result<Box<dyn Config>, LoadError>,
    /// Runs a tiny random model of the family in a dtype, so that every kernel its forward
    /// uses is loaded before any model is known.
    pub prewarm: fn(&Device, candle_core::DType) -> Result<(), LoadError>,
    /// `make-model` preset names.
    pub presets: fn() -> Vec<&'static str>,
    /// The preset called so, if the family has it.
    pub preset: fn(&str) -> Option<PresetInfo>,
    /// Writes a preset's random-weight checkpoint (`name`, dtype, `out`, seed, shards, progress)
    /// with a placeholder tokenizer; returns the files written (relative to `out`) and the weight bytes.
    pub write_preset: WritePreset,
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every family this engine runs.
pub static FAMILIES: [Family; 2] = [opt::FAMILY, llama::FAMILY];

/// Every `model_type` this engine runs, in the table's order.
pub fn model_types() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .flat_map(|f| f.model_types.iter().copied())
        .collect()
}

/// The model types as a message lists them: `` `opt`, `llama` and `qwen3` ``.
pub fn model_types_listed() -> String {
    let quoted: Vec<String> = model_types().iter().map(|t| format!("`{t}`")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The family that reads `model_type`.
pub fn family_of(model_type: &str) -> Result<&'static Family, LoadError> {
    FAMILIES
        .iter()
        .find(|f| f.model_types.contains(&model_type))
        .ok_or_else(|| LoadError::UnknownModelType {
            found: model_type.to_string(),
            supported: model_types_listed(),
        })
}

/// A checkpoint's `config.json`, read by the family its `model_type` names.
#[derive(Clone, Debug)]
pub struct FamilyConfig {
    pub family: &'static Family,
    config: Arc<dyn Config>,
}

impl std::ops::Deref for FamilyConfig {
    type Target = dyn Config;

    fn deref(&self) -> &Self::Target {
        self.config.as_ref()
    }
}

impl FamilyConfig {
    /// Parses and checks the text of a `config.json` whose `model_type` is `model_type`
    /// (`None`: [`MISSING_MODEL_TYPE`]); every dimension is bounded before anything is
    /// allocated from it, and the parameters it implies are at most [`MAX_PARAMETERS`].
    pub fn parse(model_type: Option<&str>, text: &str) -> Result<Self, LoadError> {
        let family = family_of(model_type.unwrap_or(MISSING_MODEL_TYPE))?;
        let config = Self {
            family,
            config: Arc::from((family.parse)(text)?),
        };
        let parameters = config.parameter_count();
        if parameters > MAX_PARAMETERS {
            return Err(LoadError::InvalidConfig {
                path: "config.json".into(),
                reason: format!(
                    "the config implies {parameters} parameters, over the limit of {MAX_PARAMETERS}"
                ),
            });
        }
        Ok(config)
    }

    /// The config of `checkpoint`, read by its family; errors name `config.json` in it.
    pub fn of(checkpoint: &Checkpoint) -> Result<Self, LoadError> {
        let path = checkpoint.dir.join("config.json");
        Self::parse(checkpoint.model_type.as_deref(), &checkpoint.config_json)
            .map_err(|e| at_config(e, &path))
    }

    /// Reads and checks the `config.json` at `path` (a regular file, size-bounded).
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let (model_type, text) = crate::load::checkpoint::read_config(path)?;
        Self::parse(model_type.as_deref(), &text).map_err(|e| at_config(e, path))
    }

    /// Parses and checks the text of a `config.json`, its `model_type` read from it.
    pub fn from_json(text: &str) -> Result<Self, LoadError> {
        let model_type =
            crate::load::checkpoint::model_type_of(text).map_err(|e| LoadError::InvalidConfig {
                path: "config.json".into(),
                reason: e.to_string(),
            })?;
        Self::parse(model_type.as_deref(), text)
    }

    /// The family's own config type, when it is `T`.
    pub fn get<T: Config>(&self) -> Option<&T> {
        self.config.as_any().downcast_ref()
    }

    /// Device bytes of the keys and values one token takes in the KV cache, every layer, at
    /// `dtype_bytes` per element.
    pub fn kv_bytes_per_token(&self, dtype_bytes: u64) -> u64 {
        self.kv_elements_per_token() * dtype_bytes
    }
}

/// An invalid config's error naming the file at `path`.
fn at_config(error: LoadError, path: &Path) -> LoadError {
    match error {
        LoadError::InvalidConfig { reason, .. } => LoadError::InvalidConfig {
            path: path.to_path_buf(),
            reason,
        },
        other => other,
    }
}
