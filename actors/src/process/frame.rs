//! Length-prefixed bincode frames: a little-endian u32 byte count, then the value.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest frame accepted (a prompt, an output or a report; never weights).
pub const MAX_FRAME_BYTES: usize = 256 << 20;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Writes `value` as one frame and flushes: the length and the body go out in one write (one
/// system call on an unbuffered pipe), encoded straight into the buffer that carries them.
pub fn write_frame<T: Serialize>(out: &mut impl Write, value: &T) -> io::Result<()> {
    let mut frame = vec![0u8; 4];
    bincode::serde::encode_into_std_write(value, &mut frame, config()).map_err(io::Error::other)?;
    let len = frame.len() - 4;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::other(format!(
            "a frame of {len} bytes is over the {MAX_FRAME_BYTES}-byte limit"
        )));
    }
    frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
    out.write_all(&frame)?;
    out.flush()
}

/// Reads one frame; `Ok(None)` when the stream ended cleanly before a frame began.
pub fn read_frame<T: DeserializeOwned>(input: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::other(format!(
            "a frame claims {len} bytes, over the {MAX_FRAME_BYTES}-byte limit"
        )));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    let (value, _) =
        bincode::serde::decode_from_slice(&body, config()).map_err(io::Error::other)?;
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_clean_end_is_none() {
        let mut buffer = Vec::new();
        write_frame(&mut buffer, &("hello".to_string(), 42u64)).unwrap();
        write_frame(&mut buffer, &vec![1u32, 2, 3]).unwrap();
        let mut input = buffer.as_slice();
        let first: (String, u64) = read_frame(&mut input).unwrap().unwrap();
        assert_eq!(first, ("hello".to_string(), 42));
        let second: Vec<u32> = read_frame(&mut input).unwrap().unwrap();
        assert_eq!(second, [1, 2, 3]);
        assert!(read_frame::<u8>(&mut input).unwrap().is_none());
    }

    /// Counts the writes and flushes it is given.
    #[derive(Default)]
    struct Calls {
        writes: usize,
        flushes: usize,
        bytes: Vec<u8>,
    }

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            self.flushes += 1;
            Ok(())
        }
    }

    #[test]
    fn a_frame_is_one_write_and_one_flush() {
        let mut out = Calls::default();
        write_frame(&mut out, &vec![7u64; 100]).unwrap();
        assert_eq!((out.writes, out.flushes), (1, 1));
        let read: Vec<u64> = read_frame(&mut out.bytes.as_slice()).unwrap().unwrap();
        assert_eq!(read, vec![7u64; 100]);
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let huge = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes();
        assert!(read_frame::<u8>(&mut huge.as_slice()).is_err());
        let truncated = [5u8, 0, 0, 0, 1];
        assert!(read_frame::<u8>(&mut truncated.as_slice()).is_err());
    }
}
