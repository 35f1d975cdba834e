//! Inspecting a model spec once: the checkpoint resolved, its config read by its family, every
//! weight file's identity and parsed header, the footprint ([`inspect`]). The backend keeps what
//! it found while the files stay unchanged ([`CheckCache`]) and hands it down to the attach
//! ([`Inspected::handoff`]), to a worker process too, so no header is parsed twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use wc_actors::{DType, Footprint, Handoff, ModelSpec};

use crate::load::dtype::stored_candle_dtype;
use crate::load::safetensors::InspectedFile;
use crate::load::{Checkpoint, FileKey, LoadError, TensorHeader};
use crate::models::FamilyConfig;

/// A spec resolved and checked from its headers alone: what an attach needs before it reads
/// any tensor data.
#[derive(Clone, Debug)]
pub struct Inspected {
    pub checkpoint: Checkpoint,
    /// `config.json`, read by the family its `model_type` names.
    pub config: FamilyConfig,
    /// Every weight file, in the checkpoint's order, with its identity and header.
    pub files: Vec<InspectedFile>,
    /// The dtype the weights will be held in on the device.
    pub dtype: DType,
    pub footprint: Footprint,
    /// [`Self::handoff`], encoded on first use (a kept inspection hands down the same bytes to
    /// every attach).
    handed: OnceLock<Handoff>,
}

/// What travels in a [`Handoff`]: the inspection less the parsed config (re-read from the
/// config text it carries, which reads no file).
#[derive(Serialize, Deserialize)]
struct HandedDown {
    checkpoint: Checkpoint,
    files: Vec<InspectedFile>,
    dtype: DType,
    footprint: Footprint,
}

impl Inspected {
    /// The inspection as bytes for the attach that follows it.
    pub fn handoff(&self) -> Handoff {
        self.handed.get_or_init(|| self.encode()).clone()
    }

    fn encode(&self) -> Handoff {
        let handed = HandedDown {
            checkpoint: self.checkpoint.clone(),
            files: self.files.clone(),
            dtype: self.dtype,
            footprint: Footprint {
                handoff: Handoff::default(),
                ..self.footprint.clone()
            },
        };
        let bytes = bincode::serde::encode_to_vec(&handed, bincode::config::standard())
            .expect("an inspection serialises");
        Handoff(Arc::new(bytes))
    }

    /// The inspection a [`Self::handoff`] carries.
    pub fn from_handoff(handoff: &Handoff) -> Result<Self, LoadError> {
        let (handed, _): (HandedDown, usize) =
            bincode::serde::decode_from_slice(&handoff.0, bincode::config::standard()).map_err(
                |e| LoadError::InvalidHandoff {
                    reason: e.to_string(),
                },
            )?;
        Ok(Self {
            config: FamilyConfig::of(&handed.checkpoint)?,
            checkpoint: handed.checkpoint,
            files: handed.files,
            dtype: handed.dtype,
            footprint: handed.footprint,
            handed: OnceLock::from(handoff.clone()),
        })
    }

    /// The weight files a [`Self::handoff`] names (for the serving process's cache plan).
    pub fn files_of(handoff: &Handoff) -> Result<Vec<InspectedFile>, LoadError> {
        let (handed, _): (HandedDown, usize) =
            bincode::serde::decode_from_slice(&handoff.0, bincode::config::standard()).map_err(
                |e| LoadError::InvalidHandoff {
                    reason: e.to_string(),
                },
            )?;
        Ok(handed.files)
    }

    /// Whether every weight file is still the version inspected (identity only, no read).
    pub fn files_unchanged(&self) -> bool {
        self.files
            .iter()
            .all(|f| FileKey::of(&f.key.path).ok().as_ref() == Some(&f.key))
    }

    /// The files this inspection read, for revalidation: the weights, `config.json`, the
    /// shard index, the tokenizer and the side files.
    fn keys(&self) -> Result<Vec<FileKey>, LoadError> {
        let ckpt = &self.checkpoint;
        let mut keys: Vec<FileKey> = self.files.iter().map(|f| f.key.clone()).collect();
        let others = std::iter::once(ckpt.dir.join("config.json"))
            .chain(ckpt.index.iter().cloned())
            .chain(ckpt.tokenizer.iter().cloned())
            .chain(ckpt.side_files.iter().cloned());
        for path in others {
            keys.push(FileKey::of(&path)?);
        }
        Ok(keys)
    }
}

/// Resolves `spec` and checks every tensor's presence, shape and dtype from the headers alone
/// (each weight file's header checked against the file's length; no tensor data is read).
/// Errors name files relative to the checkpoint directory.
pub fn inspect(spec: &ModelSpec) -> Result<Inspected, LoadError> {
    let checkpoint = if spec.canonical {
        Checkpoint::resolve_canonical(&spec.model)?
    } else {
        Checkpoint::resolve(&spec.model)?
    };
    let dir = checkpoint.dir.clone();
    inspect_checkpoint(spec, checkpoint).map_err(|e| e.relative_to(&dir))
}

fn inspect_checkpoint(spec: &ModelSpec, checkpoint: Checkpoint) -> Result<Inspected, LoadError> {
    let config = FamilyConfig::of(&checkpoint)?;
    let files = read_headers(&checkpoint)?;
    let headers: Vec<&TensorHeader> = files.iter().flat_map(|f| &f.header.tensors).collect();
    let mut by_name = HashMap::with_capacity(headers.len());
    for header in &headers {
        stored_candle_dtype(&header.name, header.dtype)?;
        if by_name.insert(header.name.as_str(), *header).is_some() {
            return Err(LoadError::DuplicateTensor(header.name.clone()));
        }
    }
    for (name, shape) in config.expected_tensors() {
        let header = by_name
            .get(name.as_str())
            .ok_or_else(|| LoadError::MissingTensor(name.clone()))?;
        if header.shape != shape {
            return Err(LoadError::WrongShape {
                name,
                expected: shape,
                found: header.shape.clone(),
            });
        }
    }
    let dtype = spec
        .dtype
        .or_else(|| {
            headers
                .iter()
                .find_map(|h| crate::load::dtype::runtime_dtype(h.dtype))
        })
        .unwrap_or(DType::F32);
    let elements: u64 = headers.iter().map(|h| h.elements()).sum();
    let footprint = Footprint {
        device_bytes: elements * dtype.size(),
        kv_bytes_per_token: config.kv_bytes_per_token(dtype.size()),
        file_bytes: headers.iter().map(|h| h.data_bytes).sum(),
        dtype,
        handoff: Handoff::default(),
        weights: String::new(),
    };
    let mut inspected = Inspected {
        checkpoint,
        config,
        files,
        dtype,
        footprint,
        handed: OnceLock::new(),
    };
    inspected.footprint.weights = super::parking::ParkKey::of(&inspected).identity();
    Ok(inspected)
}

/// Every weight file's header, parsed once; shards of one checkpoint are saved in one dtype,
/// and a shard in another is a different checkpoint's file.
fn read_headers(checkpoint: &Checkpoint) -> Result<Vec<InspectedFile>, LoadError> {
    let mut files = Vec::with_capacity(checkpoint.weight_files.len());
    let mut first: Option<(&std::path::PathBuf, DType)> = None;
    for path in &checkpoint.weight_files {
        let file = InspectedFile::read(path)?;
        if let Some(dtype) = Checkpoint::stored_dtype(&file.header.tensors) {
            match first {
                None => first = Some((path, dtype)),
                Some((first_path, first_dtype)) if first_dtype != dtype => {
                    return Err(LoadError::ShardsDisagree {
                        first: first_path.clone(),
                        first_dtype: first_dtype.to_string(),
                        other: path.clone(),
                        other_dtype: dtype.to_string(),
                    })
                }
                Some(_) => {}
            }
        }
        files.push(file);
    }
    Ok(files)
}

type CheckEntry = (Vec<FileKey>, Arc<Inspected>);

/// A backend's inspections, kept per model and dtype while the files they read stay unchanged.
#[derive(Debug, Default)]
pub struct CheckCache {
    entries: Mutex<HashMap<String, CheckEntry>>,
}

impl CheckCache {
    /// [`inspect`], or its kept result when every file it read is unchanged.
    pub fn inspect(&self, spec: &ModelSpec) -> Result<Arc<Inspected>, LoadError> {
        let key = format!("{}\u{0}{:?}\u{0}{}", spec.model, spec.dtype, spec.canonical);
        let cached = self
            .entries
            .lock()
            .map(|c| c.get(&key).cloned())
            .unwrap_or(None);
        if let Some((keys, inspected)) = cached {
            let unchanged = keys
                .iter()
                .all(|k| FileKey::of(&k.path).ok().as_ref() == Some(k));
            if unchanged {
                return Ok(inspected);
            }
        }
        let inspected = match inspect(spec) {
            Ok(inspected) => Arc::new(inspected),
            Err(e) => {
                if let Ok(mut c) = self.entries.lock() {
                    c.remove(&key);
                }
                return Err(e);
            }
        };
        let keys = inspected
            .keys()
            .map_err(|e| e.relative_to(&inspected.checkpoint.dir))?;
        if let Ok(mut c) = self.entries.lock() {
            c.insert(key, (keys, inspected.clone()));
        }
        Ok(inspected)
    }
}
