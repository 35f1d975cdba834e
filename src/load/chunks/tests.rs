//! Tests of the chunked reader: tensors reassembled byte for byte through fixed blocks and a
//! recycled ring, and every failure stopping the readers with a typed reason.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

use safetensors::Dtype;

use super::*;

/// Blocks in a plain `Vec`.
struct VecBlocks {
    bytes: usize,
    memory: Vec<u8>,
}

impl VecBlocks {
    fn new(count: usize, bytes: usize) -> Self {
        Self {
            bytes,
            memory: vec![0; count * bytes],
        }
    }
}

impl BlockMemory for VecBlocks {
    fn block_bytes(&self) -> usize {
        self.bytes
    }
    fn block_ptr(&self, index: usize) -> *mut u8 {
        assert!((index + 1) * self.bytes <= self.memory.len());
        // The tests' readers write disjoint blocks, as the real pinned memory is written.
        self.memory[index * self.bytes..].as_ptr() as *mut u8
    }
}

/// Reassembles tensors from segments, holding each block for `hold` chunks as a device would
/// until its copies finish; optionally fails or runs a hook on a chunk.
struct Assembler<'a> {
    tensors: &'a [TensorHeader],
    block_bytes: usize,
    out: Vec<Vec<u8>>,
    held: VecDeque<usize>,
    hold: usize,
    fail_on: Option<usize>,
    on_chunk: Box<dyn FnMut(usize) + 'a>,
    blocks_seen: Vec<usize>,
}

impl<'a> Assembler<'a> {
    fn new(tensors: &'a [TensorHeader], block_bytes: usize, hold: usize) -> Self {
        Self {
            tensors,
            block_bytes,
            out: tensors
                .iter()
                .map(|t| vec![0; t.data_bytes as usize])
                .collect(),
            held: VecDeque::new(),
            hold,
            fail_on: None,
            on_chunk: Box::new(|_| {}),
            blocks_seen: Vec::new(),
        }
    }
}

impl ChunkSink<String> for Assembler<'_> {
    fn chunk_ready(&mut self, chunk: usize, block: usize, bytes: &[u8]) -> Result<(), String> {
        (self.on_chunk)(chunk);
        if self.fail_on == Some(chunk) {
            return Err(format!("sink failed on chunk {chunk}"));
        }
        let start = (chunk * self.block_bytes) as u64;
        for s in segments(self.tensors, start, bytes.len()) {
            let to = s.tensor_offset as usize;
            self.out[s.tensor][to..to + s.len]
                .copy_from_slice(&bytes[s.chunk_offset..s.chunk_offset + s.len]);
        }
        self.blocks_seen.push(block);
        self.held.push_back(block);
        Ok(())
    }

    fn wait_for_blocks(&mut self) -> Result<Vec<usize>, String> {
        if self.held.len() > self.hold || (!self.held.is_empty() && self.hold == 0) {
            return Ok(vec![self.held.pop_front().expect("held")]);
        }
        Ok(self.held.drain(..).collect())
    }
}

fn header(name: &str, offset: u64, bytes: u64) -> TensorHeader {
    TensorHeader {
        name: name.into(),
        dtype: Dtype::U8,
        shape: vec![bytes as usize],
        data_bytes: bytes,
        data_offset: offset,
    }
}

/// Tensors of these sizes, back to back.
fn layout(sizes: &[u64]) -> Vec<TensorHeader> {
    let mut offset = 0;
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let t = header(&format!("t{i}"), offset, size);
            offset += size;
            t
        })
        .collect()
}

/// A file with `prefix` junk bytes then `data`, and its path.
fn file_with(name: &str, prefix: usize, data: &[u8]) -> (File, PathBuf) {
    let path = std::env::temp_dir().join(format!("wc-chunks-{}-{name}", std::process::id()));
    let mut file = File::create(&path).unwrap();
    file.write_all(&vec![0xEE; prefix]).unwrap();
    file.write_all(data).unwrap();
    (File::open(&path).unwrap(), path)
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn segments_cover_every_tensor_byte_exactly_once() {
    let tensors = layout(&[10, 25, 0, 5, 64, 1]);
    let total: u64 = tensors.iter().map(|t| t.data_bytes).sum();
    for chunk in [1usize, 3, 16, 64, 200] {
        let mut covered: Vec<Vec<u8>> = tensors
            .iter()
            .map(|t| vec![0; t.data_bytes as usize])
            .collect();
        let mut start = 0u64;
        while start < total {
            let len = (total - start).min(chunk as u64) as usize;
            for s in segments(&tensors, start, len) {
                assert!(s.chunk_offset + s.len <= len, "inside the chunk");
                for b in &mut covered[s.tensor][s.tensor_offset as usize..][..s.len] {
                    *b += 1;
                }
            }
            start += chunk as u64;
        }
        assert!(
            covered.iter().flatten().all(|&n| n == 1),
            "chunk {chunk}: every byte once"
        );
    }
}

#[test]
fn fixed_blocks_and_a_small_ring_both_reassemble_every_tensor() {
    let tensors = layout(&[1000, 4096, 3, 7777, 0, 512]);
    let bytes = data(tensors.iter().map(|t| t.data_bytes as usize).sum());
    let (file, path) = file_with("reassemble", 40, &bytes);
    let block = 1024;
    let read = ChunkedRead {
        file: &file,
        start: 40,
        len: bytes.len() as u64,
        threads: 4,
    };
    let chunks = read.chunks(block);
    let expected: Vec<&[u8]> = tensors.iter().map(|t| t.bytes(&bytes).unwrap()).collect();

    let memory = VecBlocks::new(chunks, block);
    let fixed: Vec<usize> = (0..chunks).rev().collect();
    let mut sink = Assembler::new(&tensors, block, usize::MAX);
    read.run(&memory, Slots::Fixed(&fixed), &mut sink).unwrap();
    assert_eq!(sink.out, expected);

    // Two staging blocks for 14 chunks: blocks are reused only after the sink gives them back.
    let memory = VecBlocks::new(2, block);
    let ring = RingSlots::new(&[0, 1]);
    let mut sink = Assembler::new(&tensors, block, 1);
    read.run(&memory, Slots::Ring(&ring), &mut sink).unwrap();
    assert_eq!(sink.out, expected);
    assert_eq!(sink.blocks_seen.len(), chunks);
    assert!(sink.blocks_seen.iter().all(|&b| b < 2));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_file_that_shrinks_while_read_is_an_io_error_naming_it() {
    let tensors = layout(&[3000]);
    let bytes = data(3000);
    let (file, path) = file_with("shrinks", 8, &bytes);
    let read = ChunkedRead {
        file: &file,
        start: 8,
        len: 3000,
        threads: 2,
    };
    // One staging block: chunk 1 is read only after chunk 0 was handed over, and by then the
    // file has been cut short.
    let memory = VecBlocks::new(1, 1024);
    let ring = RingSlots::new(&[0]);
    let mut sink = Assembler::new(&tensors, 1024, 0);
    let shrink_to = path.clone();
    sink.on_chunk = Box::new(move |chunk| {
        if chunk == 0 {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&shrink_to)
                .unwrap();
            f.set_len(500).unwrap();
        }
    });
    match read.run(&memory, Slots::Ring(&ring), &mut sink) {
        Err(ReadFailure::Io(e)) => assert!(e.to_string().contains("shrank"), "{e}"),
        other => panic!("expected an I/O failure, got {:?}", other.err()),
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_failing_sink_stops_every_reader_waiting_on_the_ring() {
    let tensors = layout(&[10_000]);
    let bytes = data(10_000);
    let (file, path) = file_with("sink-fails", 0, &bytes);
    let read = ChunkedRead {
        file: &file,
        start: 0,
        len: 10_000,
        threads: 4,
    };
    let memory = VecBlocks::new(2, 512);
    let ring = RingSlots::new(&[0, 1]);
    let mut sink = Assembler::new(&tensors, 512, 1);
    sink.fail_on = Some(3);
    match read.run(&memory, Slots::Ring(&ring), &mut sink) {
        Err(ReadFailure::Sink(reason)) => assert_eq!(reason, "sink failed on chunk 3"),
        other => panic!("expected the sink's failure, got {:?}", other.err()),
    }
    std::fs::remove_file(path).unwrap();
}
