//! The standard path's child reports its anchors to the parent as one length-prefixed bincode frame.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use wc_actors::Timeline;

/// What a `generate --frame` child sends back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildReport {
    /// Its anchors on the machine's monotonic clock (`requested` is the parent's to set).
    pub timeline: Timeline,
    /// Weight bytes it read.
    pub bytes: u64,
}

/// Writes `report` as a little-endian u32 length followed by its bincode encoding.
pub fn write(out: &mut impl Write, report: &ChildReport) -> anyhow::Result<()> {
    let body = bincode::serde::encode_to_vec(report, bincode::config::standard())?;
    out.write_all(&(body.len() as u32).to_le_bytes())?;
    out.write_all(&body)?;
    out.flush()?;
    Ok(())
}

/// Reads one frame written by [`write`].
pub fn read(input: &mut impl Read) -> anyhow::Result<ChildReport> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut body)?;
    let (report, _) = bincode::serde::decode_from_slice(&body, bincode::config::standard())?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wc_actors::Anchor;

    #[test]
    fn a_frame_round_trips() {
        let mut timeline = Timeline::default();
        timeline.mark_at(Anchor::ProcessStarted, 10);
        timeline.mark_at(Anchor::FirstToken, 99);
        let report = ChildReport {
            timeline,
            bytes: 1234,
        };
        let mut buffer = Vec::new();
        write(&mut buffer, &report).unwrap();
        assert_eq!(read(&mut buffer.as_slice()).unwrap(), report);
    }
}
