//! One host weight cache per machine, shared by every worker (process or thread): the memory in
//! a `memfd` region ([`region`]) that each worker process maps, the bookkeeping in the serving
//! process alone ([`book`]), and per attach a [`plan`] the serving process makes and the worker
//! follows (read cached blocks, fill reserved ones, or read uncached).
//!
//! NUMA: there is one cache per machine, its pages placed by the kernel's default policy (first
//! touch: on the node of the worker that fills a block); nothing binds it per node yet.

pub mod book;
pub mod plan;
pub mod region;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

pub use book::{Book, HitCounts};
pub use plan::{CacheAction, CachePlan, FilePlan};
pub use region::{RegionError, SharedRegion, BLOCK_BYTES};

use crate::load::block_cache::CacheContents;
use crate::load::safetensors::{InspectedFile, WeightFile};
use crate::load::LoadError;

/// The environment variable that gives a worker process the shared cache's inherited
/// descriptor (set by `serve` for each worker process it starts).
pub const FD_ENV: &str = "WC_HOST_CACHE_FD";
/// Test hook (debug builds or `fault-injection`): a worker process's fills pause for ever once
/// half their bytes are in, after writing their process id to the file this names.
pub const PAUSE_FILL_ENV: &str = "WC_TEST_PAUSE_CACHE_FILL";

/// The shared cache as one process sees it: the region, and in the serving process the book.
pub struct SharedCache {
    pub region: Arc<SharedRegion>,
    /// The bookkeeping: in the serving process only (a worker process follows plans).
    book: Option<Mutex<Book>>,
    /// Test hook: the first fill pauses for ever once half its bytes are in, after creating
    /// this file with its process id (so a test can kill the worker process mid-read).
    pause_fill_at_half: Option<PathBuf>,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedCache({} bytes)", self.region.bytes())
    }
}

/// What the cache holds and has done, for `/workers` and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedCacheReport {
    pub contents: CacheContents,
    pub counts: HitCounts,
    /// Bytes registered with the device driver (pinned) in this process.
    pub pinned_bytes: u64,
}

impl SharedCache {
    /// The serving process's cache of `bytes` (whole blocks), with its bookkeeping.
    pub fn create(bytes: u64) -> Result<Self, RegionError> {
        let region = SharedRegion::create(bytes)?;
        let book = Book::new(region.blocks(), BLOCK_BYTES as u64);
        Ok(Self {
            region: Arc::new(region),
            book: Some(Mutex::new(book)),
            pause_fill_at_half: None,
        })
    }

    /// A worker process's view of the cache whose descriptor it inherited: plans come with
    /// its attaches.
    pub fn open(fd: std::os::fd::RawFd) -> Result<Self, RegionError> {
        Ok(Self {
            region: Arc::new(SharedRegion::open(fd, BLOCK_BYTES)?),
            book: None,
            pause_fill_at_half: None,
        })
    }

    /// Test hook: see the field.
    #[doc(hidden)]
    pub fn pause_fills_at_half(mut self, marker: PathBuf) -> Self {
        self.pause_fill_at_half = Some(marker);
        self
    }

    fn book(&self) -> Option<MutexGuard<'_, Book>> {
        self.book
            .as_ref()
            .map(|b| b.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Whether this process keeps the bookkeeping (plans attaches itself).
    pub fn plans(&self) -> bool {
        self.book.is_some()
    }

    /// Plans an attach of `files` (the serving process; `None` in a worker process).
    pub fn plan(&self, files: &[InspectedFile]) -> Option<CachePlan> {
        Some(self.book()?.plan(&self.region, files))
    }

    /// Ends the attach `ticket` (see [`Book::finish`]).
    pub fn finish(&self, ticket: u64, succeeded: bool) {
        if let Some(mut book) = self.book() {
            book.finish(&self.region, ticket, succeeded);
        }
    }

    /// What the cache holds (empty in a worker process, which keeps no book).
    pub fn report(&self) -> SharedCacheReport {
        let (contents, counts) = match self.book() {
            Some(book) => (book.contents(), book.counts()),
            None => (
                CacheContents {
                    files: Vec::new(),
                    used_bytes: 0,
                    capacity_bytes: self.region.bytes(),
                },
                HitCounts::default(),
            ),
        };
        SharedCacheReport {
            contents,
            counts,
            pinned_bytes: self.region.registered_bytes(),
        }
    }

    /// The CPU path's read of one weight file as `plan` says: from its cached blocks, or from
    /// disk (then written into its reserved blocks and sealed, when it is the version planned).
    /// The flag says whether the disk was skipped.
    pub fn read_file(
        &self,
        plan: &CachePlan,
        inspected: &InspectedFile,
    ) -> Result<(WeightFile, bool), LoadError> {
        let region = &self.region;
        let header = &inspected.header;
        let blocks_for = |len: u64| len.div_ceil(BLOCK_BYTES as u64) as usize;
        match plan.action(&inspected.key) {
            CacheAction::Cached(blocks)
                if blocks.len() == blocks_for(header.data_len)
                    && blocks.iter().all(|&b| b < region.blocks()) =>
            {
                let data = region.read_out(blocks, header.data_len);
                let file = WeightFile {
                    key: inspected.key.clone(),
                    header: header.clone(),
                    data,
                };
                Ok((file, true))
            }
            CacheAction::Fill(blocks) => {
                let file = WeightFile::read_inspected(inspected)?;
                let fits = blocks.len() == blocks_for(file.header.data_len)
                    && blocks.iter().all(|&b| b < region.blocks());
                if file.key == inspected.key && fits {
                    let half = file.data.len() / 2;
                    region.write_in(blocks, &file.data, |written| {
                        if written >= half {
                            self.pause_if_asked();
                        }
                    });
                    region.seal_blocks(blocks, plan.ticket);
                }
                Ok((file, false))
            }
            _ => Ok((WeightFile::read_inspected(inspected)?, false)),
        }
    }

    /// The test hook's pause (see the field): only the first fill that finds no marker file
    /// pauses (so the worker process started in its place fills normally).
    pub fn pause_if_asked(&self) {
        use std::io::Write;
        let Some(marker) = &self.pause_fill_at_half else {
            return;
        };
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker);
        if let Ok(mut file) = created {
            let _ = write!(file, "{}", std::process::id());
            drop(file);
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }
}

#[cfg(test)]
mod tests;
