//! Which weight files a worker's host cache holds, in which blocks: least recently used out,
//! sized in bytes (whole blocks), never evicting a file the load in progress uses.
//!
//! The blocks themselves (pinned host memory on CUDA) belong to the caller; this is only the
//! bookkeeping, so it is the same, and tested, on every build.

use std::sync::Arc;

use super::files::FileKey;
use super::safetensors::SafetensorsHeader;

/// One cached file: its identity, its checked header, and the blocks holding its data section
/// in order (chunk `i` in `blocks[i]`).
#[derive(Clone, Debug)]
pub struct CachedFile {
    pub key: FileKey,
    pub header: Arc<SafetensorsHeader>,
    pub blocks: Vec<usize>,
    last_used: u64,
    /// Loads in progress that read it: not evictable until they end.
    readers: u32,
}

/// What a cache holds, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheContents {
    /// `(file, bytes of its data section)`, most recently used first.
    pub files: Vec<(std::path::PathBuf, u64)>,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
}

/// The host cache's bookkeeping over `capacity` blocks of `block_bytes`.
#[derive(Debug)]
pub struct BlockCache {
    block_bytes: u64,
    capacity: usize,
    free: Vec<usize>,
    files: Vec<CachedFile>,
    clock: u64,
}

impl BlockCache {
    /// A cache over the blocks `blocks` (indices into the caller's memory), each `block_bytes`.
    pub fn new(blocks: impl IntoIterator<Item = usize>, block_bytes: u64) -> Self {
        let mut free: Vec<usize> = blocks.into_iter().collect();
        free.reverse();
        Self {
            block_bytes,
            capacity: free.len(),
            free,
            files: Vec::new(),
            clock: 0,
        }
    }

    /// Blocks a data section of `bytes` takes.
    pub fn blocks_for(&self, bytes: u64) -> usize {
        bytes.div_ceil(self.block_bytes.max(1)) as usize
    }

    /// The cached file `key` (same identity), marked used by the load in progress.
    pub fn lookup(&mut self, key: &FileKey) -> Option<CachedFile> {
        self.clock += 1;
        let file = self.files.iter_mut().find(|f| &f.key == key)?;
        file.last_used = self.clock;
        file.readers += 1;
        Some(file.clone())
    }

    /// Blocks for a data section of `bytes`, evicting least recently used files the load in
    /// progress does not use; `None` (and nothing evicted) when it cannot fit the cache.
    pub fn reserve(&mut self, bytes: u64) -> Option<Vec<usize>> {
        let needed = self.blocks_for(bytes);
        let evictable: usize = self
            .files
            .iter()
            .filter(|f| f.readers == 0)
            .map(|f| f.blocks.len())
            .sum();
        if needed > self.free.len() + evictable {
            return None;
        }
        while self.free.len() < needed {
            let oldest = (0..self.files.len())
                .filter(|&i| self.files[i].readers == 0)
                .min_by_key(|&i| self.files[i].last_used)?;
            let evicted = self.files.swap_remove(oldest);
            self.free.extend(evicted.blocks);
        }
        Some(self.free.split_off(self.free.len() - needed))
    }

    /// Keeps `blocks` as the cache entry of the file `key` (read in full by a load that
    /// succeeded), replacing older versions of the same path.
    pub fn insert(&mut self, key: FileKey, header: Arc<SafetensorsHeader>, blocks: Vec<usize>) {
        self.clock += 1;
        let older: Vec<usize> = (0..self.files.len())
            .rev()
            .filter(|&i| self.files[i].key.path == key.path)
            .collect();
        for i in older {
            let old = self.files.swap_remove(i);
            self.free.extend(old.blocks);
        }
        self.files.push(CachedFile {
            key,
            header,
            blocks,
            last_used: self.clock,
            readers: 1,
        });
    }

    /// Gives back blocks reserved for a load that failed.
    pub fn release(&mut self, blocks: Vec<usize>) {
        self.free.extend(blocks);
    }

    /// The load in progress has ended: its files become evictable.
    pub fn end_load(&mut self) {
        self.files.iter_mut().for_each(|f| f.readers = 0);
    }

    /// One load that read (or inserted) the file `key` has ended (loads that run side by side
    /// each end their own).
    pub fn end_use(&mut self, key: &FileKey) {
        if let Some(file) = self.files.iter_mut().find(|f| &f.key == key) {
            file.readers = file.readers.saturating_sub(1);
        }
    }

    /// Whether a load in progress reads a version of the file at `path`: a new version may not
    /// replace it yet.
    pub fn path_in_use(&self, path: &std::path::Path) -> bool {
        self.files
            .iter()
            .any(|f| f.key.path == path && f.readers > 0)
    }

    /// Whether the version `key` is cached.
    pub fn holds(&self, key: &FileKey) -> bool {
        self.files.iter().any(|f| &f.key == key)
    }

    /// What the cache holds.
    pub fn contents(&self) -> CacheContents {
        let mut files: Vec<&CachedFile> = self.files.iter().collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.last_used));
        CacheContents {
            files: files
                .iter()
                .map(|f| (f.key.path.clone(), f.header.data_len))
                .collect(),
            used_bytes: (self.capacity - self.free.len()) as u64 * self.block_bytes,
            capacity_bytes: self.capacity as u64 * self.block_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn key(path: &str, inode: u64) -> FileKey {
        FileKey {
            path: PathBuf::from(path),
            device: 1,
            inode,
            len: 0,
            modified: (0, 0),
            changed: (0, 0),
        }
    }

    fn header(data_len: u64) -> Arc<SafetensorsHeader> {
        Arc::new(SafetensorsHeader {
            tensors: Vec::new(),
            data_start: 8,
            data_len,
        })
    }

    /// Reserves and inserts a file of `bytes`, then ends the load.
    fn cache_file(cache: &mut BlockCache, key: FileKey, bytes: u64) -> Option<Vec<usize>> {
        let blocks = cache.reserve(bytes)?;
        cache.insert(key, header(bytes), blocks.clone());
        cache.end_load();
        Some(blocks)
    }

    #[test]
    fn files_are_evicted_least_recently_used_first_by_bytes() {
        let mut cache = BlockCache::new(0..10, 100);
        cache_file(&mut cache, key("a", 1), 400).unwrap();
        cache_file(&mut cache, key("b", 2), 400).unwrap();
        cache.lookup(&key("a", 1)).unwrap();
        cache.end_load();
        // 4 blocks needed, 2 free: `b`, used least recently, goes.
        cache_file(&mut cache, key("c", 3), 350).unwrap();
        assert!(cache.lookup(&key("b", 2)).is_none());
        assert!(cache.lookup(&key("a", 1)).is_some());
        assert!(cache.lookup(&key("c", 3)).is_some());
        let contents = cache.contents();
        assert_eq!(contents.used_bytes, 800);
        assert_eq!(contents.capacity_bytes, 1000);
    }

    #[test]
    fn a_file_larger_than_the_cache_is_not_cached_and_evicts_nothing() {
        let mut cache = BlockCache::new(0..4, 100);
        cache_file(&mut cache, key("a", 1), 300).unwrap();
        assert!(cache.reserve(401).is_none());
        assert!(cache.lookup(&key("a", 1)).is_some(), "nothing was evicted");
    }

    #[test]
    fn files_the_load_in_progress_uses_are_not_evicted() {
        let mut cache = BlockCache::new(0..4, 100);
        cache_file(&mut cache, key("shard-1", 1), 200).unwrap();
        // A load uses shard 1 from the cache, then needs 3 blocks for shard 2: only 2 are free
        // and shard 1 may not go, so shard 2 is not cached.
        cache.lookup(&key("shard-1", 1)).unwrap();
        assert!(cache.reserve(300).is_none());
        let blocks = cache.reserve(200).expect("two free blocks");
        assert!(cache.lookup(&key("shard-1", 1)).is_some());
        cache.release(blocks);
        cache.end_load();
        assert_eq!(cache.reserve(400).map(|b| b.len()), Some(4));
    }

    #[test]
    fn a_changed_file_replaces_its_older_version_and_blocks_are_never_shared() {
        let mut cache = BlockCache::new(0..6, 100);
        let old = cache_file(&mut cache, key("a", 1), 300).unwrap();
        let new = cache_file(&mut cache, key("a", 2), 300).unwrap();
        assert!(old.iter().all(|b| !new.contains(b)));
        assert!(
            cache.lookup(&key("a", 1)).is_none(),
            "the old version is gone"
        );
        assert_eq!(cache.contents().files.len(), 1);
        assert_eq!(cache.contents().used_bytes, 300);
        let third = cache.reserve(300).unwrap();
        assert!(third.iter().all(|b| !new.contains(b)));
    }
}
