//! The series read at each scrape: requests waiting and running, KV-cache usage (the gauges the
//! Gateway API Inference Extension's endpoint picker reads), workers, engines and the runtime's
//! own counters.
//!
//! Each `vllm:` gauge has the pod's value first, without labels, then one series per model
//! (`model_name`). The endpoint picker takes the first series of a family unless told which
//! labels to match, so it reads the pod's value.
//!
//! `vllm:kv_cache_usage_perc` is each engine's reserved KV-cache tokens over its budget; the
//! pod's is vLLM's definition for one instance, the KV cache in use over the KV cache there is:
//! reserved tokens summed over engines over budgets summed over engines (engines without a
//! budget count in neither).

use std::collections::BTreeMap;
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use wc_actors::{EngineInfo, RuntimeStats, WorkerInfo, WorkerState};

use super::requests::{InFlight, MODEL_LABEL};

/// Every worker state, so that each has a series even at zero.
const WORKER_STATES: [WorkerState; 8] = [
    WorkerState::Warming,
    WorkerState::Idle,
    WorkerState::Attaching,
    WorkerState::Serving,
    WorkerState::Detaching,
    WorkerState::Failed,
    WorkerState::Restarting,
    WorkerState::Stopped,
];

/// What the runtime says now, read for each scrape.
pub struct Live<'a> {
    pub stats: &'a RuntimeStats,
    pub workers: &'a [WorkerInfo],
    pub engines: &'a [EngineInfo],
    pub ready: bool,
    pub draining: bool,
}

/// The fraction (0 to 1) of an engine's KV-cache budget its running batch reserves; 0 for an
/// engine without a budget.
pub fn kv_cache_usage(engine: &EngineInfo) -> f64 {
    engine.kv_cache_usage
}

/// The pod's KV-cache usage (0 to 1): tokens reserved over tokens budgeted, both summed over
/// `engines`; 0 when none has a budget.
pub fn pod_kv_cache_usage(engines: &[EngineInfo]) -> f64 {
    let reserved: usize = engines.iter().map(|e| e.kv_cache_tokens_reserved).sum();
    match engines
        .iter()
        .map(|e| e.kv_cache_tokens_budget)
        .sum::<usize>()
    {
        0 => 0.0,
        budget => (reserved as f64 / budget as f64).min(1.0),
    }
}

/// One scrape's copy of everything [`Live`] and the request counts say.
#[derive(Debug)]
pub struct Snapshot {
    stats: RuntimeStats,
    workers: Vec<WorkerState>,
    /// `(engine name, requests since attach, KV-cache usage)`.
    engines: Vec<(String, u64, f64)>,
    /// The pod's KV-cache usage ([`pod_kv_cache_usage`]).
    kv_cache_usage: f64,
    ready: bool,
    /// Model -> requests not finished; every attached engine's name is here, at zero if idle.
    in_flight: BTreeMap<String, InFlight>,
}

impl Snapshot {
    pub fn new(live: &Live<'_>, mut in_flight: BTreeMap<String, InFlight>) -> Self {
        for engine in live.engines {
            in_flight.entry(engine.name.clone()).or_default();
        }
        Self {
            stats: live.stats.clone(),
            workers: live.workers.iter().map(|w| w.state).collect(),
            engines: live
                .engines
                .iter()
                .map(|e| (e.name.clone(), e.total_requests, kv_cache_usage(e)))
                .collect(),
            kv_cache_usage: pod_kv_cache_usage(live.engines),
            ready: live.ready && !live.draining,
            in_flight,
        }
    }
}

/// No labels: the pod's series.
const POD: [(&str, &str); 0] = [];

/// Writes one family: its descriptor, then each `(labels, metric)`.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in series {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The pod's gauge first (no labels), then one per model.
fn pod_and_models<T: Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    pod: T,
    models: impl IntoIterator<Item = (String, T)>,
) -> fmt::Result
where
    ConstGauge<T>: EncodeMetric,
{
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(pod).encode(family.encode_family(&POD)?)?;
    for (model, value) in models {
        ConstGauge::new(value).encode(family.encode_family(&[(MODEL_LABEL, model)])?)?;
    }
    Ok(())
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    family(
        encoder,
        name,
        help,
        MetricType::Counter,
        [(POD, ConstCounter::new(value))],
    )
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let models = |f: fn(&InFlight) -> u64| {
            self.in_flight
                .iter()
                .map(move |(m, n)| (m.clone(), f(n) as i64))
        };
        let total = |f: fn(&InFlight) -> u64| self.in_flight.values().map(f).sum::<u64>() as i64;
        pod_and_models(
            &mut e,
            "vllm:num_requests_running",
            "Requests that have their first token and are not finished.",
            total(|n| n.running),
            models(|n| n.running),
        )?;
        pod_and_models(
            &mut e,
            "vllm:num_requests_waiting",
            "Requests accepted and without a first token yet (queued, in prefill, or waiting \
             for their model to attach).",
            total(|n| n.waiting),
            models(|n| n.waiting),
        )?;
        let kv = self.engines.iter().map(|(name, _, kv)| (name.clone(), *kv));
        pod_and_models(
            &mut e,
            "vllm:kv_cache_usage_perc",
            "KV-cache usage, 1 = full: tokens reserved by running requests over the KV-cache \
             budget, per model, and summed over the pod's engines for the pod.",
            self.kv_cache_usage,
            kv,
        )?;

        family(
            &mut e,
            "wc_ready",
            "1 when /ready says 200: workers prewarmed, at least min_ready_workers able to serve, \
             not draining.",
            MetricType::Gauge,
            [(POD, ConstGauge::new(i64::from(self.ready)))],
        )?;
        family(
            &mut e,
            "wc_workers",
            "Workers by state.",
            MetricType::Gauge,
            WORKER_STATES.map(|state| {
                let n = self.workers.iter().filter(|w| **w == state).count();
                ([("state", state.to_string())], ConstGauge::new(n as i64))
            }),
        )?;
        family(
            &mut e,
            "wc_engines",
            "Attached engines.",
            MetricType::Gauge,
            [(POD, ConstGauge::new(self.engines.len() as i64))],
        )?;
        family(
            &mut e,
            "wc_engine_requests",
            "Requests received by each attached engine since its attach.",
            MetricType::Counter,
            self.engines
                .iter()
                .map(|(name, n, _)| ([("engine", name.clone())], ConstCounter::new(*n))),
        )?;
        let s = &self.stats;
        family(
            &mut e,
            "wc_attaches",
            "Attaches by outcome.",
            MetricType::Counter,
            [
                (
                    [("outcome", "succeeded")],
                    ConstCounter::new(s.attaches_succeeded),
                ),
                (
                    [("outcome", "failed")],
                    ConstCounter::new(s.attaches_failed),
                ),
            ],
        )?;
        counter(&mut e, "wc_detaches", "Engines detached.", s.detaches)?;
        counter(
            &mut e,
            "wc_worker_failures",
            "Worker failures (panics, fatal device errors).",
            s.worker_failures,
        )?;
        counter(
            &mut e,
            "wc_worker_restarts",
            "Workers restarted.",
            s.worker_restarts,
        )?;
        counter(
            &mut e,
            "wc_requests",
            "Generation requests received by the runtime.",
            s.requests_total,
        )?;
        counter(
            &mut e,
            "wc_tokens",
            "Tokens generated by the runtime.",
            s.tokens_total,
        )
    }
}
