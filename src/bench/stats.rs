//! Percentiles and summaries of repeated measurements.

use serde::{Deserialize, Serialize};

/// p50 / p95 / mean of one measured quantity, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub mean_ms: f64,
    pub runs: usize,
}

/// The `q`-th percentile (0..=100) with linear interpolation between ranks, as numpy's default.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

impl Summary {
    pub fn of(values: &[f64]) -> Self {
        let mean_ms = if values.is_empty() {
            0.0
        } else {
            values.iter().sum::<f64>() / values.len() as f64
        };
        Self {
            p50_ms: percentile(values, 50.0),
            p95_ms: percentile(values, 95.0),
            mean_ms,
            runs: values.len(),
        }
    }
}

/// `a / b` as a speed-up for a report: one decimal ("12.3x", "0.4x"), two below 0.1
/// ("0.04x"), and "<0.01x" below that, so that a slowdown never reads "0x".
pub fn ratio(a: f64, b: f64) -> String {
    let r = a / b.max(1e-9);
    match r {
        r if r >= 0.1 => format!("{r:.1}x"),
        r if r >= 0.01 => format!("{r:.2}x"),
        _ => "<0.01x".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 50.0), 2.5);
        let one_to_twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert!((percentile(&one_to_twenty, 95.0) - 19.05).abs() < 1e-9);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn summary_has_mean_and_count() {
        let s = Summary::of(&[1.0, 2.0, 6.0]);
        assert_eq!((s.p50_ms, s.mean_ms, s.runs), (2.0, 3.0, 3));
    }
}
