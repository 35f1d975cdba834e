//! Prometheus metrics with `prometheus-client`: the request-level `vllm:` series, what the server
//! counts itself (`wc_`), and the gauges read from the runtime at each scrape.
//!
//! # Layout
//! - [`requests`]: one generation request from arrival to its last token ([`Trace`]), and the
//!   requests waiting and running per model.
//! - [`finished`]: the `vllm:` series recorded once per finished request (success by finish
//!   reason, token counts, prefill / decode / inference time, time per output token).
//! - [`live`]: the series read at each scrape (requests in flight, KV cache, cache config,
//!   workers, engines), per model under `vllm:` and for the pod under `wc_pod_`.
//!
//! A scrape gets OpenMetrics 1.0 when its `Accept` asks for it (as Prometheus does), else the
//! Prometheus text format 0.0.4.

pub mod finished;
pub mod host_cache;
pub mod live;
pub mod requests;

use std::fmt;

use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use wc_actors::AttachReport;

pub use host_cache::HostCacheSeries;
pub use live::{kv_cache_usage, pod_kv_cache_usage, Live};
pub use requests::{Trace, MODEL_LABEL};

use super::access::RequestContext;
use live::Snapshot;
use requests::RequestSeries;

/// Upper bounds (seconds) of the attach and detach buckets.
const ATTACH_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// One label, e.g. `phase="weights_read"`.
type OneLabel = [(&'static str, String); 1];

fn attach_histogram() -> Histogram {
    Histogram::new(ATTACH_BUCKETS)
}

/// The exposition format of a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Prometheus,
}

impl Format {
    /// OpenMetrics when `accept` names it, else the Prometheus text format.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The server's metrics. Every handle is shared: clones count into the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: RequestSeries,
    /// `(route, status)` -> HTTP requests answered.
    http: Family<[(&'static str, String); 2], Counter>,
    /// Error type -> errors answered (including errors inside a stream).
    errors: Family<OneLabel, Counter>,
    /// Phase -> attach phase durations.
    attach_phases: Family<OneLabel, Histogram, fn() -> Histogram>,
    /// Whole attaches, `requested` to `first_token`.
    attach_total: Histogram,
    /// Whole detaches.
    detach_total: Histogram,
    /// Engines attached because a completion asked for a configured model.
    on_demand_attaches: Counter,
    /// Engines detached to make room for another model.
    evictions: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: RequestSeries::default(),
            http: Family::default(),
            errors: Family::default(),
            attach_phases: Family::new_with_constructor(attach_histogram),
            attach_total: attach_histogram(),
            detach_total: attach_histogram(),
            on_demand_attaches: Counter::default(),
            evictions: Counter::default(),
        }
    }
}

impl Metrics {
    /// Starts following one generation request for `model` (see [`Trace`]).
    pub fn trace(&self, access: &RequestContext, model: &str) -> Trace {
        self.requests.trace(access, model)
    }

    /// Counts one answered HTTP request.
    pub fn http_request(&self, route: &str, status: u16) {
        self.http
            .get_or_create(&[("route", route.to_owned()), ("status", status.to_string())])
            .inc();
    }

    /// Counts one error by type.
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&[("type", kind.to_owned())])
            .inc();
    }

    /// Records an attach's phases and total.
    pub fn attach(&self, report: &AttachReport, on_demand: bool) {
        for phase in &report.phases {
            self.attach_phases
                .get_or_create(&[("phase", phase.anchor.name().to_owned())])
                .observe(phase.ms / 1e3);
        }
        self.attach_total.observe(report.total_ms / 1e3);
        if on_demand {
            self.on_demand_attaches.inc();
        }
    }

    /// Records a detach; `evicted` when it made room for another model.
    pub fn detach(&self, ms: f64, evicted: bool) {
        self.detach_total.observe(ms / 1e3);
        if evicted {
            self.evictions.inc();
        }
    }

    /// Every series, with `live`'s read now, in `format`.
    pub fn render(&self, live: &Live<'_>, format: Format) -> Result<String, fmt::Error> {
        self.requests
            .forget_all_but(|model| live.engines.iter().any(|e| e.name == model));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Snapshot::new(live, self.requests.in_flight())));
        self.requests.register(&mut registry);
        self.register(&mut registry);
        let mut out = String::new();
        match format {
            Format::OpenMetrics => text::encode(&mut out, &registry)?,
            Format::Prometheus => prometheus_text::encode(&mut out, &registry)?,
        }
        Ok(out)
    }

    /// Registers the server's own series (handles are shared, so this is cheap per scrape).
    fn register(&self, r: &mut Registry) {
        r.register(
            "wc_http_requests",
            "HTTP requests answered, by route and status",
            self.http.clone(),
        );
        r.register("wc_errors", "Errors answered, by type", self.errors.clone());
        r.register_with_unit(
            "wc_attach_phase",
            "Attach time per phase (the gap before each anchor)",
            Unit::Seconds,
            self.attach_phases.clone(),
        );
        r.register_with_unit(
            "wc_attach",
            "Whole attach, requested to first_token",
            Unit::Seconds,
            self.attach_total.clone(),
        );
        r.register_with_unit(
            "wc_detach",
            "Whole detach, request to idle worker",
            Unit::Seconds,
            self.detach_total.clone(),
        );
        r.register(
            "wc_on_demand_attaches",
            "Attaches made because a completion named a configured model that was not attached",
            self.on_demand_attaches.clone(),
        );
        r.register(
            "wc_evictions",
            "Idle engines detached to make room for another model",
            self.evictions.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wc_actors::{DType, DeviceSpec, EngineId, EngineInfo, KvUsage, RuntimeStats};

    fn render(metrics: &Metrics, format: Format) -> String {
        let stats = RuntimeStats::default();
        metrics
            .render(
                &Live {
                    stats: &stats,
                    workers: &[],
                    engines: &[],
                    ready: true,
                    draining: false,
                    host_cache: None,
                },
                format,
            )
            .unwrap()
    }

    #[test]
    fn vllm_gauges_are_per_model_and_the_pod_totals_have_their_own_family() {
        let metrics = Metrics::default();
        let ctx = RequestContext::new("r".into(), "POST", "/v1/completions");
        let _a = metrics.trace(&ctx, "a");
        let _b1 = metrics.trace(&ctx, "b");
        let mut b2 = metrics.trace(&ctx, "b");
        b2.token();
        let text = render(&metrics, Format::Prometheus);
        let lines = |prefix: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            lines("vllm:num_requests_waiting"),
            [
                "vllm:num_requests_waiting{model_name=\"a\"} 1",
                "vllm:num_requests_waiting{model_name=\"b\"} 1",
            ],
            "{text}"
        );
        assert_eq!(
            lines("vllm:num_requests_running"),
            [
                "vllm:num_requests_running{model_name=\"a\"} 0",
                "vllm:num_requests_running{model_name=\"b\"} 1",
            ],
            "{text}"
        );
        assert_eq!(
            lines("wc_pod_num_requests_waiting"),
            ["wc_pod_num_requests_waiting 2"]
        );
        assert_eq!(
            lines("wc_pod_num_requests_running"),
            ["wc_pod_num_requests_running 1"]
        );
        assert_eq!(lines("vllm:kv_cache_usage_perc"), Vec::<String>::new());
        assert_eq!(
            lines("wc_pod_kv_cache_usage_perc"),
            ["wc_pod_kv_cache_usage_perc 0.0"]
        );
        assert!(text.contains("wc_workers{state=\"idle\"} 0"), "{text}");
    }

    fn engine(name: &str, reserved: usize, budget: usize) -> EngineInfo {
        EngineInfo {
            engine_id: EngineId(1),
            name: name.into(),
            worker: 0,
            device: DeviceSpec::Cpu,
            model: name.into(),
            dtype: DType::F32,
            device_bytes: 0,
            idle_ms: 0,
            requests_running: 0,
            requests_waiting: 0,
            kv_cache_usage: KvUsage {
                reserved_tokens: reserved,
                budget_tokens: budget,
            }
            .fraction(),
            kv_cache_tokens_reserved: reserved,
            kv_cache_tokens_budget: budget,
            total_requests: 0,
            total_tokens: 0,
            attach_ms: 0.0,
        }
    }

    #[test]
    fn kv_cache_usage_is_per_engine_and_summed_over_the_pod() {
        let metrics = Metrics::default();
        let stats = RuntimeStats::default();
        // 30 of 40 and 10 of 160 reserved; one engine without a budget counts in neither sum.
        let engines = [engine("a", 30, 40), engine("b", 10, 160), engine("c", 0, 0)];
        let live = Live {
            stats: &stats,
            workers: &[],
            engines: &engines,
            ready: true,
            draining: false,
            host_cache: None,
        };
        let text = metrics.render(&live, Format::Prometheus).unwrap();
        let lines = |prefix: &str| -> Vec<&str> {
            text.lines().filter(|l| l.starts_with(prefix)).collect()
        };
        assert_eq!(
            lines("wc_pod_kv_cache_usage_perc"),
            ["wc_pod_kv_cache_usage_perc 0.2"]
        );
        assert_eq!(
            lines("vllm:kv_cache_usage_perc"),
            [
                "vllm:kv_cache_usage_perc{model_name=\"a\"} 0.75",
                "vllm:kv_cache_usage_perc{model_name=\"b\"} 0.0625",
                "vllm:kv_cache_usage_perc{model_name=\"c\"} 0.0",
            ],
            "{text}"
        );
        assert_eq!(pod_kv_cache_usage(&[]), 0.0);
        // One cache-config info per engine: 40 tokens are 2 blocks of 16, none preempted.
        assert!(
            text.contains(
                "vllm:cache_config_info{model_name=\"a\",block_size=\"16\",num_gpu_blocks=\"2\",\
                 num_cpu_blocks=\"0\",cache_dtype=\"float32\",gpu_memory_utilization=\"0.0000\",\
                 enable_prefix_caching=\"False\",swap_space=\"0\"} 1\n"
            ),
            "{text}"
        );
        assert_eq!(lines("vllm:cache_config_info").len(), 3);
        assert_eq!(
            lines("vllm:num_preemptions_total"),
            [
                "vllm:num_preemptions_total{model_name=\"a\"} 0",
                "vllm:num_preemptions_total{model_name=\"b\"} 0",
                "vllm:num_preemptions_total{model_name=\"c\"} 0",
            ]
        );
    }

    #[test]
    fn counters_and_histograms_follow_each_format() {
        let metrics = Metrics::default();
        metrics.error("no_free_worker");
        metrics.detach(3.0, true);
        let om = render(&metrics, Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE wc_errors counter\n"), "{om}");
        assert!(om.contains("# UNIT wc_detach_seconds seconds\n"), "{om}");
        assert!(
            om.contains("wc_errors_total{type=\"no_free_worker\"} 1\n"),
            "{om}"
        );
        assert!(om.contains("wc_evictions_total 1\n"), "{om}");
        assert!(
            om.contains("wc_detach_seconds_bucket{le=\"0.005\"} 1\n"),
            "{om}"
        );
        let prom = render(&metrics, Format::Prometheus);
        assert!(!prom.contains("# EOF"), "{prom}");
        assert!(
            prom.contains("wc_errors_total{type=\"no_free_worker\"} 1\n"),
            "{prom}"
        );
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
    }
}
