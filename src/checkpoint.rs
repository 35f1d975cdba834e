//! Finds a checkpoint (a directory or a hub id in the local Hugging Face cache) and reads its files.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::LoadError;
use crate::opt::OptConfig;

/// A checkpoint directory in the Hugging Face layout, its config read and its files located.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: OptConfig,
    /// `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub weight_files: Vec<PathBuf>,
    /// `tokenizer.json`, when the checkpoint has one.
    pub tokenizer: Option<PathBuf>,
}

/// One tensor as the file header describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorHeader {
    /// Name without the `model.` prefix.
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data_bytes: u64,
    /// Offset of the tensor's first byte from the start of the data section.
    pub data_offset: u64,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

impl Checkpoint {
    /// Resolves `model` as a directory, or as a hub id (`facebook/opt-125m`) in the local cache.
    pub fn resolve(model: &str) -> Result<Self, LoadError> {
        let dir = locate(model)?;
        let config = OptConfig::from_file(&dir.join("config.json"))?;
        let weight_files = weight_files(&dir)?;
        let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
        Ok(Self {
            dir,
            config,
            weight_files,
            tokenizer,
        })
    }

    /// Reads only the safetensors headers, checking each file is as long as its header says.
    pub fn headers(&self) -> Result<Vec<TensorHeader>, LoadError> {
        let mut out = Vec::new();
        for path in &self.weight_files {
            out.extend(read_header(path)?);
        }
        Ok(out)
    }

    /// The floating dtype the weights are stored in (that of the first float tensor).
    pub fn stored_dtype(headers: &[TensorHeader]) -> Option<wc_actors::DType> {
        headers.iter().find_map(|h| match h.dtype.as_str() {
            "F32" => Some(wc_actors::DType::F32),
            "F16" => Some(wc_actors::DType::F16),
            "BF16" => Some(wc_actors::DType::BF16),
            _ => None,
        })
    }
}

fn io_error(path: &Path, source: std::io::Error) -> LoadError {
    match source.kind() {
        std::io::ErrorKind::NotFound => LoadError::MissingFile(path.to_path_buf()),
        _ => LoadError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Where a model name points: an existing directory, or a snapshot in the Hugging Face cache.
fn locate(model: &str) -> Result<PathBuf, LoadError> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let looks_like_hub_id = !model.starts_with(['/', '.', '~'])
        && model.split('/').count() == 2
        && !model.split('/').any(str::is_empty);
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
        .map(|rev| snapshots.join(rev.trim()));
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

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.is_file() {
        return Err(LoadError::MissingFile(single));
    }
    let text = std::fs::read_to_string(&index_path).map_err(|e| io_error(&index_path, e))?;
    let index: ShardIndex =
        serde_json::from_str(&text).map_err(|e| LoadError::CorruptSafetensors {
            path: index_path.clone(),
            reason: e.to_string(),
        })?;
    let shards: BTreeSet<&String> = index.weight_map.values().collect();
    let files: Vec<PathBuf> = shards.into_iter().map(|s| dir.join(s)).collect();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(LoadError::MissingFile(missing.clone()));
    }
    Ok(files)
}

/// Strips the `model.` prefix that `OPTForCausalLM` checkpoints carry and `OPTModel` ones lack.
pub fn canonical_name(name: &str) -> &str {
    name.strip_prefix("model.").unwrap_or(name)
}

/// The tensors of one safetensors file and where its data section starts.
pub fn read_header(path: &Path) -> Result<Vec<TensorHeader>, LoadError> {
    read_header_with_start(path).map(|(headers, _)| headers)
}

/// Like [`read_header`], also returning the file offset of the data section.
pub fn read_header_with_start(path: &Path) -> Result<(Vec<TensorHeader>, u64), LoadError> {
    let corrupt = |reason: String| LoadError::CorruptSafetensors {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| corrupt(format!("only {file_len} bytes, too short for a header")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100 << 20 || 8 + header_len > file_len {
        return Err(corrupt(format!(
            "header claims {header_len} bytes but the file has {file_len}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| corrupt(e.to_string()))?;
    let entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("bad header: {e}")))?;
    let mut out = Vec::new();
    let mut data_end = 0;
    for (name, value) in entries {
        if name == "__metadata__" {
            continue;
        }
        let entry: HeaderEntry = serde_json::from_value(value)
            .map_err(|e| corrupt(format!("bad entry for `{name}`: {e}")))?;
        data_end = data_end.max(entry.data_offsets.1);
        out.push(TensorHeader {
            name: canonical_name(&name).to_string(),
            dtype: entry.dtype,
            shape: entry.shape,
            data_bytes: entry.data_offsets.1.saturating_sub(entry.data_offsets.0),
            data_offset: entry.data_offsets.0,
        });
    }
    if 8 + header_len + data_end > file_len {
        return Err(corrupt(format!(
            "file is truncated: its header needs {} bytes, the file has {file_len}",
            8 + header_len + data_end
        )));
    }
    Ok((out, 8 + header_len))
}
