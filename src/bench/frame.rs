//! The standard path's child reports its anchors to the parent as one length-prefixed bincode frame.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use wc_actors::process::frame::{read_frame, write_frame};
use wc_actors::Timeline;

/// What a `generate --frame` child sends back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildReport {
    /// Its anchors on the machine's monotonic clock (`requested` is the parent's to set).
    pub timeline: Timeline,
    /// Weight bytes it read.
    pub bytes: u64,
}

/// Writes `report` as one frame of the worker processes' framing (a little-endian u32 length,
/// then bincode).
pub fn write(out: &mut impl Write, report: &ChildReport) -> anyhow::Result<()> {
    Ok(write_frame(out, report)?)
}

/// Reads one frame written by [`write`]; a stream that ends first is an error.
pub fn read(input: &mut impl Read) -> anyhow::Result<ChildReport> {
    read_frame(input)?.ok_or_else(|| anyhow::anyhow!("the child exited without its report"))
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
