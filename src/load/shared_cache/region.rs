//! The shared host cache's memory: one `memfd` region made by the serving process, mapped by it
//! and by every worker process (the descriptor is inherited at spawn), cut into equal blocks,
//! with one seal word per block that says which attach wrote the block in full.
//!
//! Layout of the file: `blocks × block_bytes` of data (block `i` at `i × block_bytes`, so 1 GiB
//! slabs stay aligned for registration), then one `u64` seal per block. Registration with the
//! device driver (CUDA: `cuMemHostRegister` per slab) runs in the background, per process; a
//! block of a slab not registered yet is still usable (the CUDA upload streams it through the
//! staging ring).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::load::chunks::BlockMemory;

/// Bytes of each block: the same as the pinned ring's, a chunk of a file per block.
pub const BLOCK_BYTES: usize = 16 << 20;
/// Registration (pinning) goes in slabs of this many bytes.
pub const SLAB_BYTES: usize = 1 << 30;

/// Why the shared region could not be made or mapped.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("cannot make the shared host cache ({what}): {source}")]
    Os {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the shared host cache's descriptor {fd} holds {len} bytes, not a whole region")]
    BadSize { fd: RawFd, len: u64 },
}

fn os(what: &'static str) -> RegionError {
    RegionError::Os {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// One process's mapping of the shared region.
pub struct SharedRegion {
    fd: RawFd,
    base: *mut u8,
    map_len: usize,
    blocks: usize,
    block_bytes: usize,
    /// Per slab: registered with the device driver in this process.
    registered: Vec<AtomicBool>,
    registered_bytes: AtomicU64,
    registering: AtomicBool,
}

// SAFETY: the mapping lives as long as the value; blocks are written by one attach at a time
// (the serving process's bookkeeping hands each block to one writer), seals are atomics.
unsafe impl Send for SharedRegion {}
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Makes a region of `bytes` (rounded down to whole blocks) whose descriptor child
    /// processes inherit. The memory is not touched: pages are taken as blocks are written.
    pub fn create(bytes: u64) -> Result<Self, RegionError> {
        Self::create_with_blocks(bytes, BLOCK_BYTES)
    }

    /// [`Self::create`] with another block size (tests).
    pub fn create_with_blocks(bytes: u64, block_bytes: usize) -> Result<Self, RegionError> {
        let blocks = (bytes / block_bytes as u64) as usize;
        let name = c"wc-host-cache";
        // SAFETY: a valid C string; no flags: the descriptor is inherited by worker processes.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        if fd < 0 {
            return Err(os("memfd_create"));
        }
        let len = file_len(blocks, block_bytes);
        // SAFETY: `fd` is the descriptor just made.
        if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            let e = os("ftruncate");
            // SAFETY: closing our own descriptor.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        Self::map(fd, blocks, block_bytes)
    }

    /// Maps the region whose inherited descriptor is `fd` (a worker process).
    pub fn open(fd: RawFd, block_bytes: usize) -> Result<Self, RegionError> {
        // SAFETY: `stat` is a plain out-structure.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `stat` is valid for writes; a bad `fd` is an error, not UB.
        if unsafe { libc::fstat(fd, &mut stat) } != 0 {
            return Err(os("fstat of the inherited descriptor"));
        }
        let len = stat.st_size as u64;
        let per_block = block_bytes as u64 + 8;
        let blocks = (len / per_block) as usize;
        if file_len(blocks, block_bytes) as u64 != len {
            return Err(RegionError::BadSize { fd, len });
        }
        Self::map(fd, blocks, block_bytes)
    }

    fn map(fd: RawFd, blocks: usize, block_bytes: usize) -> Result<Self, RegionError> {
        let map_len = file_len(blocks, block_bytes).max(1);
        // SAFETY: a fresh shared mapping of the whole file; nothing else is at that address.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os("mmap"));
        }
        let slabs = (blocks * block_bytes).div_ceil(SLAB_BYTES);
        Ok(Self {
            fd,
            base: base as *mut u8,
            map_len,
            blocks,
            block_bytes,
            registered: (0..slabs).map(|_| AtomicBool::new(false)).collect(),
            registered_bytes: AtomicU64::new(0),
            registering: AtomicBool::new(false),
        })
    }

    /// The descriptor worker processes inherit.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Blocks in the region.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Bytes of data the region holds (whole blocks).
    pub fn bytes(&self) -> u64 {
        (self.blocks * self.block_bytes) as u64
    }

    fn seal(&self, block: usize) -> &AtomicU64 {
        assert!(block < self.blocks, "block {block} is outside the region");
        // SAFETY: the seals follow the data, 8-byte aligned (block_bytes is a multiple of 8),
        // inside the mapping; `AtomicU64` has the layout of `u64`.
        unsafe {
            &*(self
                .base
                .add(self.blocks * self.block_bytes + block * 8)
                .cast::<AtomicU64>())
        }
    }

    /// Marks `blocks` as written in full by the attach `ticket` (after every byte is in).
    pub fn seal_blocks(&self, blocks: &[usize], ticket: u64) {
        blocks
            .iter()
            .for_each(|&b| self.seal(b).store(ticket, Ordering::Release));
    }

    /// Clears the seals of `blocks` (before they are handed to a writer).
    pub fn unseal(&self, blocks: &[usize]) {
        blocks
            .iter()
            .for_each(|&b| self.seal(b).store(0, Ordering::Release));
    }

    /// Whether every block of `blocks` was sealed by `ticket`.
    pub fn sealed_by(&self, blocks: &[usize], ticket: u64) -> bool {
        blocks
            .iter()
            .all(|&b| b < self.blocks && self.seal(b).load(Ordering::Acquire) == ticket)
    }

    /// Whether `block` lies in a slab registered in this process.
    pub fn registered(&self, block: usize) -> bool {
        let slab = block * self.block_bytes / SLAB_BYTES;
        self.registered
            .get(slab)
            .is_some_and(|r| r.load(Ordering::Acquire))
    }

    /// Bytes registered with the device driver in this process so far.
    pub fn registered_bytes(&self) -> u64 {
        self.registered_bytes.load(Ordering::Acquire)
    }

    /// Registers every slab on a background thread with `register(start, len)` (once per
    /// process; later calls do nothing). A slab whose registration fails stays pageable, and
    /// pinning stops, with a warning, where it would leave the host less than `keep_free`
    /// bytes available (a cache larger than the machine can pin is used unpinned, never a
    /// reason for the kernel to kill a process).
    pub fn register_in_background(
        self: &Arc<Self>,
        register: impl Fn(*mut u8, usize) -> Result<(), String> + Send + 'static,
        keep_free: u64,
    ) {
        if self.registering.swap(true, Ordering::SeqCst) || self.blocks == 0 {
            return;
        }
        let region = self.clone();
        let spawned = std::thread::Builder::new()
            .name("wc-host-cache-pin".into())
            .spawn(move || {
                let data = region.blocks * region.block_bytes;
                for (slab, flag) in region.registered.iter().enumerate() {
                    let start = slab * SLAB_BYTES;
                    let len = SLAB_BYTES.min(data - start);
                    let available = crate::load::device::host_available_bytes();
                    if keep_free > 0 && available < len as u64 + keep_free {
                        tracing::warn!(
                            pinned = region.registered_bytes(),
                            available,
                            "the host cache is pinned no further: the host would run short"
                        );
                        break;
                    }
                    // SAFETY: `start + len` lies within the mapping.
                    let pointer = unsafe { region.base.add(start) };
                    match register(pointer, len) {
                        Ok(()) => {
                            flag.store(true, Ordering::Release);
                            region
                                .registered_bytes
                                .fetch_add(len as u64, Ordering::AcqRel);
                        }
                        Err(error) => {
                            tracing::warn!(%error, slab, "a host-cache slab stays pageable");
                        }
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start registering the host cache");
        }
    }

    /// Copies `len` bytes of the entry in `blocks` out (CPU path).
    pub fn read_out(&self, blocks: &[usize], len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize);
        let mut left = len as usize;
        for &block in blocks {
            let take = left.min(self.block_bytes);
            // SAFETY: the block lies in the mapping and holds a sealed entry, which no writer
            // touches while an attach reads it (the bookkeeping keeps it from eviction).
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(self.block_ptr(block), take)
            });
            left -= take;
        }
        out
    }

    /// Writes `data` into `blocks` (CPU path), calling `between(written)` after each piece.
    pub fn write_in(&self, blocks: &[usize], data: &[u8], mut between: impl FnMut(usize)) {
        let mut written = 0;
        for (piece, &block) in data.chunks(self.block_bytes).zip(blocks) {
            let half = piece.len() / 2;
            for part in [&piece[..half], &piece[half..]] {
                let offset = written % self.block_bytes;
                // SAFETY: the block was reserved for this attach alone and lies in the mapping.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        part.as_ptr(),
                        self.block_ptr(block).add(offset),
                        part.len(),
                    )
                };
                written += part.len();
                between(written);
            }
        }
    }
}

fn file_len(blocks: usize, block_bytes: usize) -> usize {
    blocks * block_bytes + blocks * 8
}

impl BlockMemory for SharedRegion {
    fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    fn block_ptr(&self, index: usize) -> *mut u8 {
        assert!(index < self.blocks, "block {index} is outside the region");
        // SAFETY: in bounds of the mapping.
        unsafe { self.base.add(index * self.block_bytes) }
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // Registered memory stays mapped (the driver holds it until the process ends).
        if self.registered_bytes() == 0 {
            // SAFETY: the mapping made in `map`, not used after this.
            unsafe { libc::munmap(self.base.cast(), self.map_len) };
        }
        // SAFETY: our descriptor; worker processes hold their own copies.
        unsafe { libc::close(self.fd) };
    }
}
