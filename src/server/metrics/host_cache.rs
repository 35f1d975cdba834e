//! The machine's shared host weight cache in `/metrics`, counted once for the machine (not once
//! per worker that uses it): its capacity and use, attaches that found every weight file in it
//! and those that did not, and how much of it each worker's process has pinned so far.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::live::family;
use crate::load::shared_cache::SharedCacheReport;

/// The shared cache's series, read at a scrape.
#[derive(Clone, Debug)]
pub struct HostCacheSeries {
    pub report: SharedCacheReport,
    /// `(worker, bytes pinned by its process)`.
    pub pinned: Vec<(usize, u64)>,
}

pub(super) fn encode(e: &mut DescriptorEncoder, series: &HostCacheSeries) -> fmt::Result {
    let contents = &series.report.contents;
    family(
        e,
        "wc_host_cache_bytes",
        "The machine's host weight cache shared by every worker: its capacity, and the bytes \
         its entries hold (whole blocks).",
        MetricType::Gauge,
        [
            (
                [("state", "capacity")],
                ConstGauge::new(contents.capacity_bytes as i64),
            ),
            (
                [("state", "used")],
                ConstGauge::new(contents.used_bytes as i64),
            ),
        ],
    )?;
    let counts = series.report.counts;
    family(
        e,
        "wc_host_cache_attaches",
        "Attaches that succeeded, by whether every weight file came from the shared host cache \
         (hit) or some came from disk (miss).",
        MetricType::Counter,
        [
            ([("result", "hit")], ConstCounter::new(counts.hits)),
            ([("result", "miss")], ConstCounter::new(counts.misses)),
        ],
    )?;
    family(
        e,
        "wc_host_cache_pinned_bytes",
        "Bytes of the shared host cache each worker's process has registered with its device \
         driver so far (pinning runs in the background after start; 0 on the CPU).",
        MetricType::Gauge,
        series.pinned.iter().map(|(worker, bytes)| {
            (
                [("worker", worker.to_string())],
                ConstGauge::new(*bytes as i64),
            )
        }),
    )
}
