//! Finds a checkpoint (a directory or a hub id in the local Hugging Face cache) and reads its files, checking every size before reading.
//!
//! Every file is opened through [`open_regular`] (regular files only: a FIFO, socket or device
//! is refused before it is opened), every small file through [`read_bounded`] (a size limit
//! each), every file must resolve inside the checkpoint, and [`parse_header`] is the one
//! safetensors header reader of the crate: the CPU load, the CUDA upload and the header-only
//! check all take tensor offsets from it, so a tensor's bytes are proven to lie inside the data
//! section before anything is built from them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::confined::directory_root;
use super::dtype::runtime_dtype;
use super::files::{ensure_regular, io_error, read_bounded};
use super::safetensors::TensorHeader;
use super::LoadError;

/// Most bytes a `config.json` may have.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Most bytes a `tokenizer.json` may have (the largest public ones are ~35 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;
/// Most bytes a `model.safetensors.index.json` may have.
pub const MAX_INDEX_BYTES: u64 = 64 << 20;
/// Most bytes a safetensors header may have: the `safetensors` crate's own limit.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// A checkpoint directory in the Hugging Face layout, its config read and its files located.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    pub dir: PathBuf,
    /// `config.json`'s `model_type` (`None` when it has none, as OPT checkpoints from before
    /// the field existed): the family table in `models/family.rs` reads the rest.
    pub model_type: Option<String>,
    /// The text of `config.json`, checked to be UTF-8 JSON of at most [`MAX_CONFIG_BYTES`].
    pub config_json: String,
    /// `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub weight_files: Vec<PathBuf>,
    /// `model.safetensors.index.json`, when the weights are sharded.
    pub index: Option<PathBuf>,
    /// `tokenizer.json`, when the checkpoint has one.
    pub tokenizer: Option<PathBuf>,
    /// The side files the engine reads when it is built, those present of [`SIDE_FILES`]
    /// (each checked to resolve inside the checkpoint).
    pub side_files: Vec<PathBuf>,
}

/// Optional files read when an engine is built: stopping ids and the chat template.
pub const SIDE_FILES: [&str; 3] = [
    "generation_config.json",
    "tokenizer_config.json",
    "chat_template.jinja",
];

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Resolves `model` as a directory, or as a hub id (`facebook/opt-125m`) in the local cache.
    /// Errors about files inside the checkpoint name them relative to its directory.
    pub fn resolve(model: &str) -> Result<Self, LoadError> {
        let located = locate(model)?;
        // Every file is named from the canonical directory and opened beneath its root, so a
        // link swapped in later cannot move what these paths point at.
        let dir = located
            .canonicalize()
            .map_err(|e| io_error(&located, e).relative_to(&located))?;
        Self::read(&dir).map_err(|e| e.relative_to(&dir))
    }

    /// Resolves `dir`, a directory admitted by its canonical path: a symlink on that path now
    /// (a directory swapped for a link since it was admitted) is refused as outside, and every
    /// later open refuses one on the way to the checkpoint's root as well.
    pub fn resolve_canonical(dir: &str) -> Result<Self, LoadError> {
        let path = Path::new(dir);
        let outside = || LoadError::OutsideCheckpoint {
            path: path.to_path_buf(),
        };
        if !path.is_absolute() {
            return Err(outside());
        }
        match path.canonicalize() {
            Ok(real) if real == path => Self::read(path).map_err(|e| e.relative_to(path)),
            Ok(_) => Err(outside()),
            Err(e) => Err(io_error(path, e)),
        }
    }

    fn read(dir: &Path) -> Result<Self, LoadError> {
        let root = directory_root(dir).to_path_buf();
        let config_path = inside(&root, dir, "config.json")?;
        let (model_type, config_json) = read_config(&config_path)?;
        let (weight_files, index) = weight_files(&root, dir)?;
        let optional = |name: &str| match inside(&root, dir, name) {
            Ok(path) => Ok(Some(path)),
            Err(LoadError::MissingFile(_)) => Ok(None),
            Err(e) => Err(e),
        };
        let tokenizer = optional("tokenizer.json")?;
        let mut side_files = Vec::new();
        for name in SIDE_FILES {
            side_files.extend(optional(name)?);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            model_type,
            config_json,
            weight_files,
            index,
            tokenizer,
            side_files,
        })
    }

    /// The floating dtype the weights are stored in (that of the first float tensor).
    pub fn stored_dtype(headers: &[TensorHeader]) -> Option<wc_actors::DType> {
        headers.iter().find_map(|h| runtime_dtype(h.dtype))
    }
}

/// Only `model_type`: what a checkpoint knows of its config before a family reads the rest.
#[derive(Deserialize)]
struct ModelTypeOnly {
    model_type: Option<String>,
}

/// Reads `config.json` (a regular file of at most [`MAX_CONFIG_BYTES`], UTF-8 JSON): its
/// `model_type` and its text. A family checks the rest (`models/family.rs`).
pub fn read_config(path: &Path) -> Result<(Option<String>, String), LoadError> {
    let invalid = |reason: String| LoadError::InvalidConfig {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = read_bounded(path, MAX_CONFIG_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
    let model_type = model_type_of(&text).map_err(|e| invalid(e.to_string()))?;
    Ok((model_type, text))
}

/// The `model_type` of a `config.json` text (a JSON object; `None` when it has none).
pub fn model_type_of(text: &str) -> Result<Option<String>, serde_json::Error> {
    serde_json::from_str::<ModelTypeOnly>(text).map(|probe| probe.model_type)
}

/// Where a model name points: an existing directory, or a snapshot in the Hugging Face cache.
fn locate(model: &str) -> Result<PathBuf, LoadError> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let looks_like_hub_id = !model.starts_with(['/', '.', '~'])
        && model.split('/').count() == 2
        && !model.split('/').any(|part| part.is_empty() || part == "..");
    if path.exists() || !looks_like_hub_id {
        return Err(LoadError::ModelNotFound(path.to_path_buf()));
    }
    let cache_dirs = hub_cache_dirs();
    let repo_dir_name = format!("models--{}", model.replace('/', "--"));
    for cache in &cache_dirs {
        let repo = cache.join(&repo_dir_name);
        if let Some(snapshot) = cached_snapshot(&repo) {
            return Ok(snapshot);
        }
    }
    Err(LoadError::HubModelNotCached {
        id: model.to_string(),
        looked_in: cache_dirs.iter().map(|c| c.join(&repo_dir_name)).collect(),
    })
}

/// `owner/name` as the hub spells repository ids (letters, digits, `.`, `_`, `-`; not `.`/`..`).
pub fn is_hub_id(model: &str) -> bool {
    let part = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.len() <= 96
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    matches!(model.split_once('/'), Some((owner, name)) if part(owner) && part(name))
}

/// The Hugging Face hub cache locations, in the order `huggingface_hub` uses them.
pub fn hub_cache_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(cache) = std::env::var_os("HF_HUB_CACHE") {
        dirs.push(PathBuf::from(cache));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        dirs.push(PathBuf::from(home).join("hub"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cache/huggingface/hub"));
    }
    dirs.dedup();
    dirs
}

/// `refs/main`'s snapshot, or the only snapshot there is, if it has a `config.json`.
pub fn cached_snapshot(repo: &Path) -> Option<PathBuf> {
    let snapshots = repo.join("snapshots");
    let by_ref = std::fs::read_to_string(repo.join("refs/main"))
        .ok()
        .map(|rev| rev.trim().to_string())
        .filter(|rev| is_plain_name(rev))
        .map(|rev| snapshots.join(rev));
    let candidates = by_ref.into_iter().chain(
        std::fs::read_dir(&snapshots)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    candidates
        .into_iter()
        .find(|dir| dir.join("config.json").is_file())
}

/// One path component, not `.` or `..`: what a file name inside a directory may be.
fn is_plain_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    )
}

/// `dir/relative`, checked to exist and to resolve (symlinks followed) inside `root`. Relative
/// paths with `..`, absolute paths and symlinks leading out are refused.
fn inside(root: &Path, dir: &Path, relative: &str) -> Result<PathBuf, LoadError> {
    let path = dir.join(relative);
    let plain = Path::new(relative)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !plain || relative.is_empty() {
        return Err(LoadError::OutsideCheckpoint { path });
    }
    let resolved = path.canonicalize().map_err(|e| io_error(&path, e))?;
    if !resolved.starts_with(root) {
        return Err(LoadError::OutsideCheckpoint { path });
    }
    Ok(path)
}

/// `model.safetensors` if there is one (of whatever type: a FIFO is refused when opened, not
/// taken for missing), else every shard named by `model.safetensors.index.json`.
fn weight_files(root: &Path, dir: &Path) -> Result<(Vec<PathBuf>, Option<PathBuf>), LoadError> {
    let single = dir.join("model.safetensors");
    if std::fs::symlink_metadata(&single).is_ok() {
        let single = inside(root, dir, "model.safetensors")?;
        ensure_regular(
            &single,
            &std::fs::metadata(&single).map_err(|e| io_error(&single, e))?,
        )?;
        return Ok((vec![single], None));
    }
    let index_path = match inside(root, dir, "model.safetensors.index.json") {
        Ok(path) => path,
        Err(LoadError::MissingFile(_)) => return Err(LoadError::MissingFile(single)),
        Err(e) => return Err(e),
    };
    let text = read_bounded(&index_path, MAX_INDEX_BYTES)?;
    let index: ShardIndex =
        serde_json::from_slice(&text).map_err(|e| LoadError::CorruptSafetensors {
            path: index_path.clone(),
            reason: e.to_string(),
        })?;
    let shards: BTreeSet<&String> = index.weight_map.values().collect();
    let files = shards
        .into_iter()
        .map(|shard| inside(root, dir, shard))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((files, Some(index_path)))
}
