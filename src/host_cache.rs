//! What a worker keeps from the disk for recently loaded models: checked metadata, weight bytes, tokenizers.
//!
//! Every entry is keyed by the file's identity ([`FileKey`]: device, inode, length and the
//! nanosecond modification and change times), so a checkpoint that changes on disk, even by a
//! same-size copy that keeps the modification time, is read again. Weight bytes are kept within a
//! byte budget, least recently used first out, and only once the load that read them has
//! succeeded ([`HostCache::keep`]); this is the CPU form of the pinned host cache in `cuda.rs`.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tokenizers::Tokenizer;
use wc_actors::ModelSpec;

use crate::backend::{check, CheckedCheckpoint};
use crate::checkpoint::{open_regular, read_bounded, WeightFile, MAX_TOKENIZER_BYTES};
use crate::error::LoadError;

/// Identifies a file's contents without reading it: a file replaced by another (even one of the
/// same size with the same modification time, as `cp -p` makes) has another key, because its
/// inode or its change time differs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub path: PathBuf,
    pub device: u64,
    pub inode: u64,
    pub len: u64,
    /// Modification time, seconds and nanoseconds since the epoch.
    pub modified: (i64, i64),
    /// Status change time (set by the kernel on every write, rename or `utimensat`).
    pub changed: (i64, i64),
}

impl FileKey {
    /// The key of the regular file at `path`, a checkpoint's file (opened confined beneath
    /// the checkpoint, as every read of it is).
    pub fn of(path: &Path) -> Result<Self, LoadError> {
        let (_, meta) = open_regular(path)?;
        Ok(Self::from_metadata(path, &meta))
    }

    /// The key of a file from metadata already taken (e.g. of the open file).
    pub fn from_metadata(path: &Path, meta: &Metadata) -> Self {
        Self {
            path: path.to_path_buf(),
            device: meta.dev(),
            inode: meta.ino(),
            len: meta.size(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The files a checked checkpoint was read from, for revalidation.
fn checkpoint_keys(checked: &CheckedCheckpoint) -> Result<Vec<FileKey>, LoadError> {
    let ckpt = &checked.checkpoint;
    std::iter::once(ckpt.dir.join("config.json"))
        .chain(ckpt.index.iter().cloned())
        .chain(ckpt.weight_files.iter().cloned())
        .chain(ckpt.tokenizer.iter().cloned())
        .chain(ckpt.side_files.iter().cloned())
        .map(|p| FileKey::of(&p))
        .collect()
}

type CheckEntry = (Vec<FileKey>, Arc<CheckedCheckpoint>);

/// [`check`] with its result kept per model and dtype while the files stay unchanged.
pub fn check_cached(spec: &ModelSpec) -> Result<Arc<CheckedCheckpoint>, LoadError> {
    static CHECKED: OnceLock<Mutex<HashMap<String, CheckEntry>>> = OnceLock::new();
    let cache = CHECKED.get_or_init(Default::default);
    let key = format!("{}\u{0}{:?}\u{0}{}", spec.model, spec.dtype, spec.canonical);
    let cached = cache.lock().map(|c| c.get(&key).cloned()).unwrap_or(None);
    if let Some((keys, checked)) = cached {
        let unchanged = keys
            .iter()
            .all(|k| FileKey::of(&k.path).ok().as_ref() == Some(k));
        if unchanged {
            return Ok(checked);
        }
    }
    let checked = match check(spec) {
        Ok(checked) => Arc::new(checked),
        Err(e) => {
            if let Ok(mut c) = cache.lock() {
                c.remove(&key);
            }
            return Err(e);
        }
    };
    let keys = checkpoint_keys(&checked).map_err(|e| e.relative_to(&checked.checkpoint.dir))?;
    if let Ok(mut c) = cache.lock() {
        c.insert(key, (keys, checked.clone()));
    }
    Ok(checked)
}

/// Parses the `tokenizer.json` at `path` (at most [`MAX_TOKENIZER_BYTES`]).
pub fn read_tokenizer(path: &Path) -> Result<Tokenizer, LoadError> {
    let bytes = read_bounded(path, MAX_TOKENIZER_BYTES)?;
    Tokenizer::from_bytes(&bytes).map_err(|e| LoadError::InvalidTokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

struct CachedFile {
    file: Arc<WeightFile>,
    last_used: u64,
}

/// One worker's cache of weight files and tokenizers.
pub struct HostCache {
    budget_bytes: u64,
    files: Vec<CachedFile>,
    tokenizers: HashMap<FileKey, Arc<Tokenizer>>,
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

    /// Bytes the cache may hold.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Bytes of weight files held.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.file.data.len() as u64).sum()
    }

    /// The weight file at `path`, from the cache when the same file is still there, else read
    /// (its header checked against its length first). The flag says whether the disk was
    /// skipped. A file read here is not kept until [`Self::keep`] is given it.
    pub fn file(&mut self, path: &Path) -> Result<(Arc<WeightFile>, bool), LoadError> {
        self.clock += 1;
        let key = FileKey::of(path)?;
        if let Some(hit) = self.files.iter_mut().find(|f| f.file.key == key) {
            hit.last_used = self.clock;
            return Ok((hit.file.clone(), true));
        }
        Ok((Arc::new(WeightFile::read(path)?), false))
    }

    /// Keeps `file` (read by a load that succeeded) if it fits the budget, dropping older
    /// versions of the same path and then the least recently used files to make room.
    pub fn keep(&mut self, file: Arc<WeightFile>) {
        self.clock += 1;
        if let Some(held) = self.files.iter_mut().find(|f| f.file.key == file.key) {
            held.last_used = self.clock;
            return;
        }
        self.files.retain(|f| f.file.key.path != file.key.path);
        let len = file.data.len() as u64;
        if len > self.budget_bytes {
            return;
        }
        while self.bytes() + len > self.budget_bytes {
            let oldest = (0..self.files.len()).min_by_key(|&i| self.files[i].last_used);
            match oldest {
                Some(i) => drop(self.files.swap_remove(i)),
                None => break,
            }
        }
        self.files.push(CachedFile {
            file,
            last_used: self.clock,
        });
    }

    /// The tokenizer in `path` and its file's key, parsed once per file version (see
    /// [`Self::keep_tokenizer`]) and shared, not copied: a large vocabulary takes milliseconds
    /// to clone.
    pub fn tokenizer(&mut self, path: &Path) -> Result<(FileKey, Arc<Tokenizer>), LoadError> {
        let key = FileKey::of(path)?;
        if let Some(tokenizer) = self.tokenizers.get(&key) {
            return Ok((key, tokenizer.clone()));
        }
        Ok((key, Arc::new(read_tokenizer(path)?)))
    }

    /// Keeps a tokenizer that a successful load used.
    pub fn keep_tokenizer(&mut self, key: FileKey, tokenizer: Arc<Tokenizer>) {
        if self.tokenizers.contains_key(&key) {
            return;
        }
        if self.tokenizers.len() >= MAX_TOKENIZERS {
            self.tokenizers.clear();
        }
        self.tokenizers.retain(|k, _| k.path != key.path);
        self.tokenizers.insert(key, tokenizer);
    }

    /// Whether a weight file of `path` is held (any version).
    pub fn holds(&self, path: &Path) -> bool {
        self.files.iter().any(|f| f.file.key.path == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file with one `U8` tensor of `len` bytes, all `value`.
    fn write_weights(path: &Path, value: u8, len: usize) {
        let header =
            format!(r#"{{"t":{{"dtype":"U8","shape":[{len}],"data_offsets":[0,{len}]}}}}"#);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(std::iter::repeat_n(value, len));
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn files_are_kept_only_when_given_back_and_within_the_budget() {
        let dir = std::env::temp_dir().join(format!("wc-host-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        write_weights(&a, 1, 600);
        write_weights(&b, 2, 600);
        let mut cache = HostCache::new(1000);
        let (file, hit) = cache.file(&a).unwrap();
        assert!(!hit, "first read goes to disk");
        assert!(
            !cache.file(&a).unwrap().1,
            "not kept until the load succeeds"
        );
        cache.keep(file);
        assert!(cache.file(&a).unwrap().1, "kept: the next read is a hit");
        let (file, _) = cache.file(&b).unwrap();
        cache.keep(file);
        assert!(cache.bytes() <= 1000, "b evicted a to stay in budget");
        assert!(cache.holds(&b) && !cache.holds(&a));
        write_weights(&b, 3, 600);
        let (file, hit) = cache.file(&b).unwrap();
        assert!(!hit && file.data[0] == 3, "a rewritten file is read again");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
