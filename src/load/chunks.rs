//! Streams a file's data section through fixed-size host blocks with parallel positioned reads,
//! and maps each chunk onto the pieces of the tensors it holds.
//!
//! The data section is cut into chunks of one block each. Reader threads take chunks in order,
//! each into the block its [`Slots`] give (a block of a host-cache entry, or a staging
//! block from a ring that the consumer recycles), and the calling thread hands every chunk that
//! lands to a [`ChunkSink`] (which queues its copies to the device). Nothing here knows about
//! devices, so the whole read path runs, and is tested, on the CPU.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Mutex;

use super::safetensors::TensorHeader;

/// The part of one tensor that lies in one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Index of the tensor in the file's header.
    pub tensor: usize,
    /// Where the piece starts within the tensor's bytes.
    pub tensor_offset: u64,
    /// Where the piece starts within the chunk.
    pub chunk_offset: usize,
    pub len: usize,
}

/// The pieces of `tensors` (in data order, contiguous from offset 0, as the header checks made
/// them) within the `len` bytes of the data section that start at `start`.
pub fn segments(tensors: &[TensorHeader], start: u64, len: usize) -> Vec<Segment> {
    let end = start + len as u64;
    let first = tensors.partition_point(|t| t.data_offset + t.data_bytes <= start);
    tensors[first..]
        .iter()
        .enumerate()
        .take_while(|(_, t)| t.data_offset < end)
        .filter(|(_, t)| t.data_bytes > 0)
        .map(|(i, t)| {
            let from = t.data_offset.max(start);
            let to = (t.data_offset + t.data_bytes).min(end);
            Segment {
                tensor: first + i,
                tensor_offset: from - t.data_offset,
                chunk_offset: (from - start) as usize,
                len: (to - from) as usize,
            }
        })
        .collect()
}

/// Host memory cut into equal blocks that reader threads write into.
pub trait BlockMemory: Sync {
    /// Bytes of each block.
    fn block_bytes(&self) -> usize;
    /// The start of block `index`.
    fn block_ptr(&self, index: usize) -> *mut u8;
}

/// Which block each chunk is read into.
#[derive(Clone, Copy)]
pub enum Slots<'a> {
    /// One block per chunk, fixed in advance (a host-cache entry being filled): never waits.
    Fixed(&'a [usize]),
    /// Staging blocks recycled as the sink is done with them.
    Ring(&'a RingSlots),
}

impl Slots<'_> {
    /// The block for `chunk`, waiting until one is free; `None` when the read is abandoned.
    fn acquire(&self, chunk: usize) -> Option<usize> {
        match self {
            Slots::Fixed(blocks) => blocks.get(chunk).copied(),
            Slots::Ring(ring) => ring.free.lock().ok()?.recv().ok(),
        }
    }

    fn ring(&self) -> Option<&RingSlots> {
        match self {
            Slots::Fixed(_) => None,
            Slots::Ring(ring) => Some(ring),
        }
    }
}

/// A ring of staging blocks: a chunk takes whichever block is free, and blocks go back (through
/// [`RingSlots::release`]) once the copies that read them are done.
pub struct RingSlots {
    free: Mutex<Receiver<usize>>,
    give_back: Sender<usize>,
}

impl RingSlots {
    pub fn new(blocks: &[usize]) -> Self {
        let (give_back, free) = mpsc::channel();
        for &block in blocks {
            give_back.send(block).expect("the receiver is held");
        }
        Self {
            free: Mutex::new(free),
            give_back,
        }
    }

    /// A free block, if one is free now.
    pub fn take(&self) -> Option<usize> {
        self.free.lock().ok()?.try_recv().ok()
    }

    /// Makes `block` free for the next chunk.
    pub fn release(&self, block: usize) {
        // The receiver lives as long as `self`.
        let _ = self.give_back.send(block);
    }
}

/// What happens to chunks once their bytes are in host memory.
pub trait ChunkSink<E> {
    /// The `bytes` of `chunk` (starting at `chunk × block_bytes` of the data section) are in
    /// `block`: use them (e.g. queue their copies to the device).
    fn chunk_ready(&mut self, chunk: usize, block: usize, bytes: &[u8]) -> Result<(), E>;

    /// Waits until at least one block the sink still reads from is done with and returns the
    /// blocks done now; returns nothing at once when the sink reads from none.
    fn wait_for_blocks(&mut self) -> Result<Vec<usize>, E>;
}

/// Why a chunked read stopped.
#[derive(Debug)]
pub enum ReadFailure<E> {
    /// Reading the file failed (it may have shrunk while read).
    Io(std::io::Error),
    /// The sink failed.
    Sink(E),
}

/// A read of one file's data section, `len` bytes at file offset `start`.
pub struct ChunkedRead<'a> {
    pub file: &'a File,
    pub start: u64,
    pub len: u64,
    /// Reader threads (at least one).
    pub threads: usize,
}

impl ChunkedRead<'_> {
    /// Chunks the data section is cut into, for blocks of `block_bytes`.
    pub fn chunks(&self, block_bytes: usize) -> usize {
        self.len.div_ceil(block_bytes as u64) as usize
    }

    /// Reads every chunk into the block `slots` gives it and hands it to `sink` on the calling
    /// thread, in the order chunks land. With a ring, blocks the sink is done with go back to
    /// it. On failure no reader is left running, and the sink has been given only chunks read
    /// in full.
    pub fn run<E>(
        &self,
        memory: &dyn BlockMemory,
        slots: Slots<'_>,
        sink: &mut dyn ChunkSink<E>,
    ) -> Result<(), ReadFailure<E>> {
        let ring = slots.ring();
        let block_bytes = memory.block_bytes();
        let chunks = self.chunks(block_bytes);
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let (landed, receiver) = mpsc::channel::<Result<(usize, usize), std::io::Error>>();
        std::thread::scope(|scope| {
            for _ in 0..self.threads.clamp(1, chunks.max(1)) {
                let landed = landed.clone();
                let (next, stop) = (&next, &stop);
                scope.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let chunk = next.fetch_add(1, Ordering::SeqCst);
                        if chunk >= chunks {
                            break;
                        }
                        let Some(block) = slots.acquire(chunk) else {
                            break;
                        };
                        let result = self
                            .read_chunk(memory, chunk, block)
                            .map(|()| (chunk, block));
                        if landed.send(result).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(landed);
            let result = consume(chunks, &receiver, memory, ring, sink, self.len);
            if result.is_err() {
                stop.store(true, Ordering::SeqCst);
                // Readers waiting for a ring block must wake to see `stop`: give every block
                // the sink still holds back, without a consumer to use them.
                if let Some(ring) = ring {
                    while let Ok(blocks) = sink.wait_for_blocks() {
                        if blocks.is_empty() {
                            break;
                        }
                        blocks.into_iter().for_each(|b| ring.release(b));
                    }
                    for _ in 0..self.threads {
                        ring.release(usize::MAX);
                    }
                }
                drop(receiver);
            }
            result
        })
    }

    /// Reads `chunk` into `block`.
    fn read_chunk(
        &self,
        memory: &dyn BlockMemory,
        chunk: usize,
        block: usize,
    ) -> Result<(), std::io::Error> {
        let block_bytes = memory.block_bytes();
        let offset = chunk as u64 * block_bytes as u64;
        let len = (self.len - offset).min(block_bytes as u64) as usize;
        if block == usize::MAX {
            return Err(std::io::Error::other("the read was abandoned"));
        }
        // SAFETY: a block is given to one chunk at a time (fixed slots are distinct; a ring
        // block comes back only after the sink is done with it), so no other thread touches
        // these `len <= block_bytes` bytes until this chunk has been handed to the sink.
        let target = unsafe { std::slice::from_raw_parts_mut(memory.block_ptr(block), len) };
        self.file
            .read_exact_at(target, self.start + offset)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => std::io::Error::new(
                    e.kind(),
                    "the file ended early: it shrank while it was read",
                ),
                _ => e,
            })
    }
}

/// The calling thread's side: hands landed chunks to the sink and recycles ring blocks.
fn consume<E>(
    chunks: usize,
    receiver: &Receiver<Result<(usize, usize), std::io::Error>>,
    memory: &dyn BlockMemory,
    ring: Option<&RingSlots>,
    sink: &mut dyn ChunkSink<E>,
    len: u64,
) -> Result<(), ReadFailure<E>> {
    let block_bytes = memory.block_bytes();
    let mut handed = 0;
    while handed < chunks {
        let landed = match receiver.try_recv() {
            Ok(landed) => landed,
            Err(TryRecvError::Empty) => {
                // Nothing landed yet: free ring blocks the device is done with, or wait.
                let freed = match ring {
                    Some(_) => sink.wait_for_blocks().map_err(ReadFailure::Sink)?,
                    None => Vec::new(),
                };
                if freed.is_empty() {
                    match receiver.recv() {
                        Ok(landed) => landed,
                        Err(_) => return Err(ReadFailure::Io(readers_stopped())),
                    }
                } else {
                    freed
                        .into_iter()
                        .for_each(|b| ring.expect("ring").release(b));
                    continue;
                }
            }
            Err(TryRecvError::Disconnected) => return Err(ReadFailure::Io(readers_stopped())),
        };
        let (chunk, block) = landed.map_err(ReadFailure::Io)?;
        let offset = chunk as u64 * block_bytes as u64;
        let bytes_len = (len - offset).min(block_bytes as u64) as usize;
        // SAFETY: the reader wrote these bytes in full before sending the chunk, and the block
        // is not written again before the sink gives it back.
        let bytes = unsafe { std::slice::from_raw_parts(memory.block_ptr(block), bytes_len) };
        sink.chunk_ready(chunk, block, bytes)
            .map_err(ReadFailure::Sink)?;
        handed += 1;
    }
    Ok(())
}

fn readers_stopped() -> std::io::Error {
    std::io::Error::other("the reader threads stopped before every chunk was read")
}

#[cfg(test)]
mod tests;
