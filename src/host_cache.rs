//! What a worker keeps from the disk for recently loaded models: checked metadata, weight bytes, tokenizers.
//!
//! Every entry is keyed by the file's path, length and modification time, so a checkpoint that
//! changes on disk is read again. Weight bytes are kept within a byte budget, least recently
//! used first out; this is the CPU form of the pinned host cache in `cuda.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use tokenizers::Tokenizer;
use wc_actors::ModelSpec;

use crate::backend::{check, CheckedCheckpoint};
use crate::error::LoadError;

/// Identifies a file's contents without reading it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub path: PathBuf,
    pub len: u64,
    pub modified: Option<SystemTime>,
}

impl FileKey {
    pub fn of(path: &Path) -> Result<Self, LoadError> {
        let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => LoadError::MissingFile(path.to_path_buf()),
            _ => LoadError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// The files a checked checkpoint was read from, for revalidation.
fn checkpoint_keys(checked: &CheckedCheckpoint) -> Result<Vec<FileKey>, LoadError> {
    let ckpt = &checked.checkpoint;
    std::iter::once(ckpt.dir.join("config.json"))
        .chain(ckpt.weight_files.iter().cloned())
        .chain(ckpt.tokenizer.iter().cloned())
        .map(|p| FileKey::of(&p))
        .collect()
}

type CheckEntry = (Vec<FileKey>, Arc<CheckedCheckpoint>);

/// [`check`] with its result kept per model and dtype while the files stay unchanged.
pub fn check_cached(spec: &ModelSpec) -> Result<Arc<CheckedCheckpoint>, LoadError> {
    static CHECKED: OnceLock<Mutex<HashMap<String, CheckEntry>>> = OnceLock::new();
    let cache = CHECKED.get_or_init(Default::default);
    let key = format!("{}\u{0}{:?}", spec.model, spec.dtype);
    let cached = cache.lock().map(|c| c.get(&key).cloned()).unwrap_or(None);
    if let Some((keys, checked)) = cached {
        let unchanged = keys
            .iter()
            .all(|k| FileKey::of(&k.path).ok().as_ref() == Some(k));
        if unchanged {
            return Ok(checked);
        }
    }
    let checked = Arc::new(check(spec)?);
    let keys = checkpoint_keys(&checked)?;
    if let Ok(mut c) = cache.lock() {
        c.insert(key, (keys, checked.clone()));
    }
    Ok(checked)
}

struct CachedFile {
    key: FileKey,
    bytes: Arc<Vec<u8>>,
    last_used: u64,
}

/// One worker's cache of weight files and tokenizers.
pub struct HostCache {
    budget_bytes: u64,
    files: Vec<CachedFile>,
    tokenizers: HashMap<FileKey, Tokenizer>,
    clock: u64,
}

/// Tokenizers kept per worker (they are small).
const MAX_TOKENIZERS: usize = 16;

impl HostCache {
    pub fn new(budget_bytes: u64) -> Self {
        Self {
            budget_bytes,
            files: Vec::new(),
            tokenizers: HashMap::new(),
            clock: 0,
        }
    }

    /// Bytes of weight files held.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes.len() as u64).sum()
    }

    /// The bytes of `path`, from the cache when unchanged on disk, else read (and kept if they
    /// fit the budget). The flag says whether the disk was skipped.
    pub fn file(&mut self, path: &Path) -> Result<(Arc<Vec<u8>>, bool), LoadError> {
        self.clock += 1;
        let key = FileKey::of(path)?;
        if let Some(hit) = self.files.iter_mut().find(|f| f.key == key) {
            hit.last_used = self.clock;
            return Ok((hit.bytes.clone(), true));
        }
        self.files.retain(|f| f.key.path != key.path);
        let bytes = Arc::new(std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?);
        if bytes.len() as u64 <= self.budget_bytes {
            while self.bytes() + bytes.len() as u64 > self.budget_bytes {
                let oldest = (0..self.files.len()).min_by_key(|&i| self.files[i].last_used);
                match oldest {
                    Some(i) => drop(self.files.swap_remove(i)),
                    None => break,
                }
            }
            self.files.push(CachedFile {
                key,
                bytes: bytes.clone(),
                last_used: self.clock,
            });
        }
        Ok((bytes, false))
    }

    /// The tokenizer in `path`, parsed once per file version.
    pub fn tokenizer(&mut self, path: &Path) -> Result<Tokenizer, LoadError> {
        let key = FileKey::of(path)?;
        if let Some(tokenizer) = self.tokenizers.get(&key) {
            return Ok(tokenizer.clone());
        }
        let tokenizer = Tokenizer::from_file(path).map_err(|e| LoadError::InvalidTokenizer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if self.tokenizers.len() >= MAX_TOKENIZERS {
            self.tokenizers.clear();
        }
        self.tokenizers.insert(key, tokenizer.clone());
        Ok(tokenizer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_come_from_the_cache_until_they_change_and_the_budget_holds() {
        let dir = std::env::temp_dir().join(format!("wc-host-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, vec![1u8; 600]).unwrap();
        std::fs::write(&b, vec![2u8; 600]).unwrap();
        let mut cache = HostCache::new(1000);
        assert!(!cache.file(&a).unwrap().1, "first read goes to disk");
        assert!(cache.file(&a).unwrap().1, "second read is a hit");
        assert!(!cache.file(&b).unwrap().1);
        assert!(cache.bytes() <= 1000, "b evicted a to stay in budget");
        assert!(!cache.file(&a).unwrap().1);
        std::fs::write(&a, vec![3u8; 10]).unwrap();
        let (bytes, hit) = cache.file(&a).unwrap();
        assert!(!hit && bytes.len() == 10, "a changed file is read again");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
