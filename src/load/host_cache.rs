//! What a worker keeps from the disk for recently loaded models: weight bytes and tokenizers.
//!
//! Every entry is keyed by the file's identity ([`FileKey`]: device, inode, length and the
//! nanosecond modification and change times), so a checkpoint that changes on disk, even by a
//! same-size copy that keeps the modification time, is read again. Weight bytes are kept within a
//! byte budget, least recently used first out, and only once the load that read them has
//! succeeded ([`HostCache::keep`]); this is the CPU form of the pinned host cache in `cuda/`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tokenizers::Tokenizer;

use super::files::{read_bounded, FileKey};
use super::safetensors::{InspectedFile, WeightFile};
use super::{LoadError, MAX_TOKENIZER_BYTES};

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

    /// The weight file `inspected` describes, from the cache when that version is there, else
    /// its data read (the header is the inspected one, not parsed again). The flag says
    /// whether the disk was skipped. A file read here is not kept until [`Self::keep`] is
    /// given it.
    pub fn file(
        &mut self,
        inspected: &InspectedFile,
    ) -> Result<(Arc<WeightFile>, bool), LoadError> {
        self.clock += 1;
        if let Some(hit) = self.files.iter_mut().find(|f| f.file.key == inspected.key) {
            hit.last_used = self.clock;
            return Ok((hit.file.clone(), true));
        }
        Ok((Arc::new(WeightFile::read_inspected(inspected)?), false))
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

    /// The weight files held, `(path, bytes)`, most recently used first.
    pub fn files(&self) -> Vec<(std::path::PathBuf, u64)> {
        let mut files: Vec<&CachedFile> = self.files.iter().collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.last_used));
        files
            .iter()
            .map(|f| (f.file.key.path.clone(), f.file.data.len() as u64))
            .collect()
    }

    /// Whether a weight file of `path` is held (any version).
    pub fn holds(&self, path: &Path) -> bool {
        self.files.iter().any(|f| f.file.key.path == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect(path: &Path) -> InspectedFile {
        InspectedFile::read(path).unwrap()
    }

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
        let (file, hit) = cache.file(&inspect(&a)).unwrap();
        assert!(!hit, "first read goes to disk");
        assert!(
            !cache.file(&inspect(&a)).unwrap().1,
            "not kept until the load succeeds"
        );
        cache.keep(file);
        assert!(
            cache.file(&inspect(&a)).unwrap().1,
            "kept: the next read is a hit"
        );
        let (file, _) = cache.file(&inspect(&b)).unwrap();
        cache.keep(file);
        assert!(cache.bytes() <= 1000, "b evicted a to stay in budget");
        assert!(cache.holds(&b) && !cache.holds(&a));
        // Rewritten in place at the same size: only the timestamps tell it apart, and they
        // move at the file system's clock tick (up to a second): rewrite until they moved.
        let kept = inspect(&b).key;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while {
            write_weights(&b, 3, 600);
            inspect(&b).key == kept
        } {
            assert!(
                std::time::Instant::now() < deadline,
                "b's timestamps never moved"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (file, hit) = cache.file(&inspect(&b)).unwrap();
        assert!(!hit && file.data[0] == 3, "a rewritten file is read again");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
