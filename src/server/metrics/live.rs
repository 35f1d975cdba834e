//! The series read at each scrape: requests waiting and running, KV-cache usage (the gauges the
//! Gateway API Inference Extension's endpoint picker reads), workers, engines and the runtime's
//! own counters.
//!
//! Every `vllm:` series is per model (`model_name`), as vLLM labels them, so that a `sum()`
//! over a family counts each request once. The pod's totals have their own families,
//! `wc_pod_num_requests_running`, `wc_pod_num_requests_waiting` and
//! `wc_pod_kv_cache_usage_perc`: what a router or an autoscaler reading one value per pod wants.
//!
//! `vllm:cache_config_info` is vLLM's info gauge (always 1, the facts in its labels), one per
//! attached engine: the KV cache in `block_size`-token blocks (16, vLLM's default; our cache
//! reserves by the token, so `num_gpu_blocks` is the budget over 16, rounded down), the
//! engine's dtype as `cache_dtype`, and `gpu_memory_utilization` the fraction of its device's
//! memory the engine holds (0 when the device reports none). `vllm:num_preemptions_total` is
//! 0: an engine reserves a request's KV cache when it admits it and never preempts one.
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
use wc_actors::{DType, EngineInfo, RuntimeStats, WorkerInfo, WorkerState};

use super::host_cache::HostCacheSeries;
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
    /// The machine's shared host cache, when the workers use one.
    pub host_cache: Option<HostCacheSeries>,
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

/// The tokens of one `vllm:cache_config_info` block (vLLM's default block size).
pub const BLOCK_SIZE: usize = 16;

/// What a scrape reports of one attached engine.
#[derive(Clone, Debug)]
struct EngineRow {
    name: String,
    /// Requests since attach.
    requests: u64,
    /// KV-cache usage ([`kv_cache_usage`]).
    kv: f64,
    /// KV-cache budget, tokens.
    kv_budget: usize,
    dtype: DType,
    /// Fraction of its device's memory the engine holds; 0 when unknown.
    memory_fraction: f64,
}

impl EngineRow {
    fn new(engine: &EngineInfo, workers: &[WorkerInfo]) -> Self {
        let total = workers
            .iter()
            .find(|w| w.worker == engine.worker)
            .and_then(|w| w.memory.as_ref())
            .map_or(0, |m| m.total_bytes);
        Self {
            name: engine.name.clone(),
            requests: engine.total_requests,
            kv: kv_cache_usage(engine),
            kv_budget: engine.kv_cache_tokens_budget,
            dtype: engine.dtype,
            memory_fraction: match total {
                0 => 0.0,
                total => (engine.device_bytes as f64 / total as f64).min(1.0),
            },
        }
    }

    /// `vllm:cache_config_info`'s labels, vLLM's names.
    fn cache_config(&self) -> Vec<(&'static str, String)> {
        let dtype = match self.dtype {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        };
        vec![
            (MODEL_LABEL, self.name.clone()),
            ("block_size", BLOCK_SIZE.to_string()),
            ("num_gpu_blocks", (self.kv_budget / BLOCK_SIZE).to_string()),
            ("num_cpu_blocks", "0".into()),
            ("cache_dtype", dtype.into()),
            (
                "gpu_memory_utilization",
                format!("{:.4}", self.memory_fraction),
            ),
            ("enable_prefix_caching", "False".into()),
            ("swap_space", "0".into()),
        ]
    }
}

/// One scrape's copy of everything [`Live`] and the request counts say.
#[derive(Debug)]
pub struct Snapshot {
    stats: RuntimeStats,
    workers: Vec<WorkerState>,
    engines: Vec<EngineRow>,
    /// The pod's KV-cache usage ([`pod_kv_cache_usage`]).
    kv_cache_usage: f64,
    ready: bool,
    /// Model -> requests not finished; every attached engine's name is here, at zero if idle.
    in_flight: BTreeMap<String, InFlight>,
    host_cache: Option<HostCacheSeries>,
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
                .map(|e| EngineRow::new(e, live.workers))
                .collect(),
            kv_cache_usage: pod_kv_cache_usage(live.engines),
            ready: live.ready && !live.draining,
            in_flight,
            host_cache: live.host_cache.clone(),
        }
    }
}

/// No labels: the pod's series.
const POD: [(&str, &str); 0] = [];

/// Writes one family: its descriptor, then each `(labels, metric)`.
pub(super) fn family<L: EncodeLabelSet, M: EncodeMetric>(
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

/// One gauge per model (`model_name`).
fn per_model<T: Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    models: impl IntoIterator<Item = (String, T)>,
) -> fmt::Result
where
    ConstGauge<T>: EncodeMetric,
{
    family(
        encoder,
        name,
        help,
        MetricType::Gauge,
        models
            .into_iter()
            .map(|(model, value)| ([(MODEL_LABEL, model)], ConstGauge::new(value))),
    )
}

/// The pod's gauge (no labels).
fn pod_gauge<T: Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    pod: T,
) -> fmt::Result
where
    ConstGauge<T>: EncodeMetric,
{
    family(
        encoder,
        name,
        help,
        MetricType::Gauge,
        [(POD, ConstGauge::new(pod))],
    )
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
        per_model(
            &mut e,
            "vllm:num_requests_running",
            "Requests that have their first token and are not finished, per model.",
            models(|n| n.running),
        )?;
        per_model(
            &mut e,
            "vllm:num_requests_waiting",
            "Requests accepted and without a first token yet (queued, in prefill, or waiting \
             for their model to attach), per model.",
            models(|n| n.waiting),
        )?;
        per_model(
            &mut e,
            "vllm:kv_cache_usage_perc",
            "KV-cache usage, 1 = full: tokens reserved by running requests over the engine's \
             KV-cache budget.",
            self.engines.iter().map(|row| (row.name.clone(), row.kv)),
        )?;
        family(
            &mut e,
            "vllm:num_preemptions",
            "Requests preempted: always 0 (an engine reserves a request's KV cache when it \
             admits it and never preempts one).",
            MetricType::Counter,
            self.engines
                .iter()
                .map(|row| ([(MODEL_LABEL, row.name.clone())], ConstCounter::new(0u64))),
        )?;
        family(
            &mut e,
            "vllm:cache_config_info",
            "Information of each engine's KV cache (vLLM's CacheConfig labels; the value is 1).",
            MetricType::Gauge,
            self.engines
                .iter()
                .map(|row| (row.cache_config(), ConstGauge::new(1i64))),
        )?;
        pod_gauge(
            &mut e,
            "wc_pod_num_requests_running",
            "Requests that have their first token and are not finished, every model of the pod \
             (the sum of vllm:num_requests_running).",
            total(|n| n.running),
        )?;
        pod_gauge(
            &mut e,
            "wc_pod_num_requests_waiting",
            "Requests accepted and without a first token yet, every model of the pod (the sum \
             of vllm:num_requests_waiting).",
            total(|n| n.waiting),
        )?;
        pod_gauge(
            &mut e,
            "wc_pod_kv_cache_usage_perc",
            "The pod's KV-cache usage, 1 = full: tokens reserved by running requests over the \
             KV-cache budgets, both summed over the pod's engines.",
            self.kv_cache_usage,
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
            self.engines.iter().map(|row| {
                (
                    [("engine", row.name.clone())],
                    ConstCounter::new(row.requests),
                )
            }),
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
        )?;
        match &self.host_cache {
            Some(series) => super::host_cache::encode(&mut e, series),
            None => Ok(()),
        }
    }
}
