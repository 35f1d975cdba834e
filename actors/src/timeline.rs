//! Timing anchors shared by every path: named instants on a clock that all processes share.

use serde::{Deserialize, Serialize};

/// One named instant of an engine start, in the order they happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    Requested,
    ProcessStarted,
    DeviceReady,
    WeightsRead,
    WeightsOnDevice,
    EngineReady,
    FirstToken,
}

impl Anchor {
    /// Every anchor, in order.
    pub const ALL: [Anchor; 7] = [
        Anchor::Requested,
        Anchor::ProcessStarted,
        Anchor::DeviceReady,
        Anchor::WeightsRead,
        Anchor::WeightsOnDevice,
        Anchor::EngineReady,
        Anchor::FirstToken,
    ];

    /// The snake_case name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Anchor::Requested => "requested",
            Anchor::ProcessStarted => "process_started",
            Anchor::DeviceReady => "device_ready",
            Anchor::WeightsRead => "weights_read",
            Anchor::WeightsOnDevice => "weights_on_device",
            Anchor::EngineReady => "engine_ready",
            Anchor::FirstToken => "first_token",
        }
    }
}

/// Nanoseconds on `CLOCK_MONOTONIC`: the same clock in every process of the machine, so a parent
/// and a child can put their instants on one line.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The instants recorded for one engine start. Anchors not recorded count as zero phases.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// `(anchor, monotonic ns)` in the order they were marked.
    pub marks: Vec<(Anchor, u64)>,
}

/// The gap between an anchor and the one before it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// The anchor that ends this phase (`weights_read` is the phase from `device_ready` to it).
    pub anchor: Anchor,
    pub ms: f64,
}

impl Timeline {
    /// A timeline whose `requested` instant is now.
    pub fn starting_now() -> Self {
        let mut timeline = Self::default();
        timeline.mark(Anchor::Requested);
        timeline
    }

    /// Records `anchor` at the current instant (replacing an earlier mark of it).
    pub fn mark(&mut self, anchor: Anchor) {
        self.mark_at(anchor, monotonic_ns());
    }

    /// Records `anchor` at a given instant (e.g. one reported by a child process).
    pub fn mark_at(&mut self, anchor: Anchor, ns: u64) {
        self.marks.retain(|(a, _)| *a != anchor);
        self.marks.push((anchor, ns));
        self.marks.sort_by_key(|(a, _)| *a);
    }

    /// The instant of `anchor`, if marked.
    pub fn get(&self, anchor: Anchor) -> Option<u64> {
        self.marks
            .iter()
            .find(|(a, _)| *a == anchor)
            .map(|(_, t)| *t)
    }

    /// The instant of `anchor`, or of the latest anchor before it that was marked.
    pub fn resolved(&self, anchor: Anchor) -> Option<u64> {
        Anchor::ALL
            .iter()
            .filter(|a| **a <= anchor)
            .filter_map(|a| self.get(*a))
            .next_back()
    }

    /// One phase per anchor after `requested`; an anchor that was skipped is a zero phase.
    pub fn phases(&self) -> Vec<Phase> {
        Anchor::ALL
            .windows(2)
            .map(|pair| {
                let start = self.resolved(pair[0]);
                let end = self.resolved(pair[1]);
                let ms = match (start, end) {
                    (Some(s), Some(e)) => e.saturating_sub(s) as f64 / 1e6,
                    _ => 0.0,
                };
                Phase {
                    anchor: pair[1],
                    ms,
                }
            })
            .collect()
    }

    /// From `requested` to the last anchor marked, in milliseconds.
    pub fn total_ms(&self) -> f64 {
        self.span_ms(Anchor::Requested, Anchor::FirstToken)
    }

    /// From one anchor to another (skipped anchors resolve to the one before them).
    pub fn span_ms(&self, from: Anchor, to: Anchor) -> f64 {
        match (self.resolved(from), self.resolved(to)) {
            (Some(s), Some(e)) => e.saturating_sub(s) as f64 / 1e6,
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_anchors_are_zero_phases_and_phases_sum_to_total() {
        let mut t = Timeline::default();
        t.mark_at(Anchor::Requested, 1_000_000);
        t.mark_at(Anchor::WeightsRead, 3_000_000);
        t.mark_at(Anchor::FirstToken, 10_000_000);
        let phases = t.phases();
        assert_eq!(phases.len(), 6);
        assert_eq!(phases[0].ms, 0.0, "process_started was skipped");
        assert_eq!(phases[2].ms, 2.0, "weights_read comes 2 ms after requested");
        let sum: f64 = phases.iter().map(|p| p.ms).sum();
        assert!((sum - t.total_ms()).abs() < 1e-9);
        assert_eq!(t.total_ms(), 9.0);
    }

    #[test]
    fn a_phase_across_a_sleep_lasts_at_least_the_sleep() {
        let mut t = Timeline::starting_now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        t.mark(Anchor::WeightsRead);
        let ms = t.span_ms(Anchor::Requested, Anchor::WeightsRead);
        assert!(ms >= 20.0, "a 20 ms sleep measured as {ms} ms");
        // Nanoseconds, not another unit: a span around an `Instant` interval covers it, and is
        // not ten times longer (500 ms of slack for a preempted thread).
        let before = monotonic_ns();
        let started = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let inner = started.elapsed().as_nanos() as u64;
        let span = monotonic_ns() - before;
        assert!(
            span >= inner && span <= inner + 500_000_000,
            "monotonic span {span} ns around an Instant span of {inner} ns"
        );
    }
}
