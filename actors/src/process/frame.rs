//! Length-prefixed bincode frames: a little-endian u32 byte count, then the value.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest frame accepted (a prompt, an output or a report; never weights).
pub const MAX_FRAME_BYTES: usize = 256 << 20;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Writes `value` as one frame and flushes.
pub fn write_frame<T: Serialize>(out: &mut impl Write, value: &T) -> io::Result<()> {
    let body = bincode::serde::encode_to_vec(value, config()).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(io::Error::other(format!(
            "a frame of {} bytes is over the {MAX_FRAME_BYTES}-byte limit",
            body.len()
        )));
    }
    out.write_all(&(body.len() as u32).to_le_bytes())?;
    out.write_all(&body)?;
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

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let huge = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes();
        assert!(read_frame::<u8>(&mut huge.as_slice()).is_err());
        let truncated = [5u8, 0, 0, 0, 1];
        assert!(read_frame::<u8>(&mut truncated.as_slice()).is_err());
    }
}
