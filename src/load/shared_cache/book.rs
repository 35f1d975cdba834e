//! The shared host cache's bookkeeping, kept by the serving process alone: which file is in
//! which blocks (least recently used out, by bytes), what each attach in flight reads and
//! fills. An attach's fills become cache entries only when it succeeded and its worker sealed
//! every block; otherwise, or when its worker died mid-read, the blocks go back unseen.

use std::collections::HashMap;
use std::sync::Arc;

use super::plan::{CacheAction, CachePlan, FilePlan};
use super::region::SharedRegion;
use crate::load::block_cache::{BlockCache, CacheContents};
use crate::load::files::FileKey;
use crate::load::safetensors::{InspectedFile, SafetensorsHeader};

/// What one attach in flight holds of the cache.
struct Grant {
    /// Entries it reads: not evictable until it ends.
    reads: Vec<FileKey>,
    /// Blocks reserved for the files it reads from disk.
    fills: Vec<(FileKey, Arc<SafetensorsHeader>, Vec<usize>)>,
}

/// Attaches that found every file in the cache, and the others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HitCounts {
    /// Attaches whose every weight file came from the cache.
    pub hits: u64,
    /// Attaches that read at least one weight file from disk.
    pub misses: u64,
}

/// The bookkeeping over a region's blocks.
pub struct Book {
    cache: BlockCache,
    grants: HashMap<u64, Grant>,
    next_ticket: u64,
    counts: HitCounts,
}

impl Book {
    pub fn new(blocks: usize, block_bytes: u64) -> Self {
        Self {
            cache: BlockCache::new(0..blocks, block_bytes),
            grants: HashMap::new(),
            next_ticket: 1,
            counts: HitCounts::default(),
        }
    }

    /// Plans an attach of `files`: cached files are read from their blocks (and kept from
    /// eviction until [`Self::finish`]), others get blocks reserved when they fit (evicting
    /// least recently used entries no attach reads), else are read uncached.
    pub fn plan(&mut self, region: &SharedRegion, files: &[InspectedFile]) -> CachePlan {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let mut grant = Grant {
            reads: Vec::new(),
            fills: Vec::new(),
        };
        let mut planned = Vec::with_capacity(files.len());
        for file in files {
            let action = if let Some(hit) = self.cache.lookup(&file.key) {
                grant.reads.push(file.key.clone());
                CacheAction::Cached(hit.blocks)
            } else if let Some(blocks) = self.cache.reserve(file.header.data_len) {
                region.unseal(&blocks);
                grant
                    .fills
                    .push((file.key.clone(), file.header.clone(), blocks.clone()));
                CacheAction::Fill(blocks)
            } else {
                CacheAction::Uncached
            };
            planned.push(FilePlan {
                key: file.key.clone(),
                action,
            });
        }
        self.grants.insert(ticket, grant);
        CachePlan {
            ticket,
            files: planned,
        }
    }

    /// Ends the attach `ticket`: when it succeeded, each file it filled and sealed becomes an
    /// entry (unless a version of it is read by another attach right now); every other
    /// reserved block goes back, and the entries it read become evictable.
    pub fn finish(&mut self, region: &SharedRegion, ticket: u64, succeeded: bool) {
        let Some(grant) = self.grants.remove(&ticket) else {
            return;
        };
        for key in &grant.reads {
            self.cache.end_use(key);
        }
        if succeeded {
            match grant.fills.is_empty() && !grant.reads.is_empty() {
                true => self.counts.hits += 1,
                false => self.counts.misses += 1,
            }
        }
        for (key, header, blocks) in grant.fills {
            let keep = succeeded
                && region.sealed_by(&blocks, ticket)
                && !self.cache.holds(&key)
                && !self.cache.path_in_use(&key.path);
            if keep {
                self.cache.insert(key.clone(), header, blocks);
                self.cache.end_use(&key);
            } else {
                region.unseal(&blocks);
                self.cache.release(blocks);
            }
        }
    }

    pub fn contents(&self) -> CacheContents {
        self.cache.contents()
    }

    pub fn counts(&self) -> HitCounts {
        self.counts
    }

    /// Attaches in flight.
    pub fn in_flight(&self) -> usize {
        self.grants.len()
    }
}
