//! Prometheus metrics: counters and histograms the server keeps, rendered as text with live gauges.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use wc_actors::{AttachReport, EngineInfo, RuntimeStats, WorkerInfo, WorkerState};

/// Upper bounds (seconds) of the attach and request latency buckets.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

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

/// A cumulative histogram over [`BUCKETS`].
#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter()) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// What the server counts itself (the runtime's own counters are read at render time).
#[derive(Clone, Default)]
struct Counters {
    /// `(route, status)` -> HTTP requests answered.
    http: BTreeMap<(String, u16), u64>,
    /// Error type -> errors answered (including errors inside a stream).
    errors: BTreeMap<String, u64>,
    /// Phase -> attach phase durations.
    attach_phases: BTreeMap<String, Histogram>,
    /// Whole attaches, `requested` to `first_token`.
    attach_total: Histogram,
    /// Whole detaches.
    detach_total: Histogram,
    /// `(model, finish_reason)` -> completions finished.
    completions: BTreeMap<(String, String), u64>,
    /// Model -> prompt tokens of finished completions.
    prompt_tokens: BTreeMap<String, u64>,
    /// Model -> generated tokens of finished completions.
    generation_tokens: BTreeMap<String, u64>,
    /// Completion latency, whole request.
    completion_seconds: Histogram,
    /// Engines attached because a completion asked for a configured model.
    on_demand_attaches: u64,
    /// Engines detached to make room for another model.
    evictions: u64,
    /// Requests waiting for an on-demand attach right now.
    waiting_for_attach: i64,
}

/// The server's metrics registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

/// What the runtime says now, read for each scrape.
pub struct Live<'a> {
    pub stats: &'a RuntimeStats,
    pub workers: &'a [WorkerInfo],
    pub engines: &'a [EngineInfo],
    pub ready: bool,
    pub draining: bool,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Counters) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Counts one answered HTTP request.
    pub fn http_request(&self, route: &str, status: u16) {
        self.with(|c| *c.http.entry((route.to_owned(), status)).or_default() += 1);
    }

    /// Counts one error by type.
    pub fn error(&self, kind: &str) {
        self.with(|c| *c.errors.entry(kind.to_owned()).or_default() += 1);
    }

    /// Records an attach's phases and total.
    pub fn attach(&self, report: &AttachReport, on_demand: bool) {
        self.with(|c| {
            for phase in &report.phases {
                c.attach_phases
                    .entry(phase.anchor.name().to_owned())
                    .or_default()
                    .observe(phase.ms / 1e3);
            }
            c.attach_total.observe(report.total_ms / 1e3);
            if on_demand {
                c.on_demand_attaches += 1;
            }
        });
    }

    /// Records a detach; `evicted` when it made room for another model.
    pub fn detach(&self, ms: f64, evicted: bool) {
        self.with(|c| {
            c.detach_total.observe(ms / 1e3);
            if evicted {
                c.evictions += 1;
            }
        });
    }

    /// Records a finished completion.
    pub fn completion(&self, model: &str, finish: &str, prompt: usize, generated: usize, s: f64) {
        self.with(|c| {
            *c.completions
                .entry((model.to_owned(), finish.to_owned()))
                .or_default() += 1;
            *c.prompt_tokens.entry(model.to_owned()).or_default() += prompt as u64;
            *c.generation_tokens.entry(model.to_owned()).or_default() += generated as u64;
            c.completion_seconds.observe(s);
        });
    }

    /// One more (or one fewer, with -1) request waiting for an on-demand attach.
    pub fn waiting_for_attach(&self, delta: i64) {
        self.with(|c| c.waiting_for_attach += delta);
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, live: &Live<'_>) -> String {
        let mut out = String::new();
        // A copy taken under the lock, so that rendering does not hold it.
        let c = self.with(|c| c.clone());
        let o = &mut out;

        family(
            o,
            "vllm:num_requests_running",
            "gauge",
            "Requests being generated now, over every engine of this pod.",
        );
        let _ = writeln!(
            o,
            "vllm:num_requests_running {}",
            live.stats.requests_running
        );
        family(
            o,
            "vllm:num_requests_waiting",
            "gauge",
            "Requests queued behind a running one or waiting for an engine to attach.",
        );
        let waiting = live.stats.requests_waiting as i64 + c.waiting_for_attach.max(0);
        let _ = writeln!(o, "vllm:num_requests_waiting {waiting}");

        family(
            o,
            "wc_ready",
            "gauge",
            "1 when workers are prewarmed and the server is not draining.",
        );
        let _ = writeln!(o, "wc_ready {}", u8::from(live.ready && !live.draining));
        family(o, "wc_workers", "gauge", "Workers by state.");
        for state in WORKER_STATES {
            let n = live.workers.iter().filter(|w| w.state == state).count();
            let _ = writeln!(o, "wc_workers{{state=\"{state}\"}} {n}");
        }
        family(o, "wc_engines", "gauge", "Attached engines.");
        let _ = writeln!(o, "wc_engines {}", live.engines.len());
        family(
            o,
            "wc_engine_requests_total",
            "counter",
            "Requests received by each attached engine since its attach.",
        );
        for e in live.engines {
            let _ = writeln!(
                o,
                "wc_engine_requests_total{{engine=\"{}\"}} {}",
                escape(&e.name),
                e.total_requests
            );
        }
        family(o, "wc_attaches_total", "counter", "Attaches by outcome.");
        let _ = writeln!(
            o,
            "wc_attaches_total{{outcome=\"succeeded\"}} {}",
            live.stats.attaches_succeeded
        );
        let _ = writeln!(
            o,
            "wc_attaches_total{{outcome=\"failed\"}} {}",
            live.stats.attaches_failed
        );
        family(
            o,
            "wc_on_demand_attaches_total",
            "counter",
            "Attaches made because a completion named a configured model that was not attached.",
        );
        let _ = writeln!(o, "wc_on_demand_attaches_total {}", c.on_demand_attaches);
        family(
            o,
            "wc_evictions_total",
            "counter",
            "Idle engines detached to make room for another model.",
        );
        let _ = writeln!(o, "wc_evictions_total {}", c.evictions);
        family(o, "wc_detaches_total", "counter", "Engines detached.");
        let _ = writeln!(o, "wc_detaches_total {}", live.stats.detaches);
        family(
            o,
            "wc_worker_failures_total",
            "counter",
            "Worker failures (panics, fatal device errors).",
        );
        let _ = writeln!(o, "wc_worker_failures_total {}", live.stats.worker_failures);
        family(
            o,
            "wc_worker_restarts_total",
            "counter",
            "Workers restarted on a fresh thread.",
        );
        let _ = writeln!(o, "wc_worker_restarts_total {}", live.stats.worker_restarts);

        family(
            o,
            "wc_attach_phase_seconds",
            "histogram",
            "Attach time per phase (the gap before each anchor).",
        );
        for (phase, h) in &c.attach_phases {
            h.render(o, "wc_attach_phase_seconds", &format!("phase=\"{phase}\""));
        }
        family(
            o,
            "wc_attach_seconds",
            "histogram",
            "Whole attach, requested to first_token.",
        );
        c.attach_total.render(o, "wc_attach_seconds", "");
        family(
            o,
            "wc_detach_seconds",
            "histogram",
            "Whole detach, request to idle worker.",
        );
        c.detach_total.render(o, "wc_detach_seconds", "");

        family(
            o,
            "wc_requests_total",
            "counter",
            "Generation requests received by the runtime.",
        );
        let _ = writeln!(o, "wc_requests_total {}", live.stats.requests_total);
        family(
            o,
            "wc_tokens_total",
            "counter",
            "Tokens generated by the runtime.",
        );
        let _ = writeln!(o, "wc_tokens_total {}", live.stats.tokens_total);
        family(
            o,
            "wc_completions_total",
            "counter",
            "Completions finished, by model and finish reason.",
        );
        for ((model, finish), n) in &c.completions {
            let _ = writeln!(
                o,
                "wc_completions_total{{model=\"{}\",finish_reason=\"{finish}\"}} {n}",
                escape(model)
            );
        }
        family(
            o,
            "wc_prompt_tokens_total",
            "counter",
            "Prompt tokens of finished completions.",
        );
        for (model, n) in &c.prompt_tokens {
            let _ = writeln!(
                o,
                "wc_prompt_tokens_total{{model=\"{}\"}} {n}",
                escape(model)
            );
        }
        family(
            o,
            "wc_generation_tokens_total",
            "counter",
            "Tokens generated by finished completions.",
        );
        for (model, n) in &c.generation_tokens {
            let _ = writeln!(
                o,
                "wc_generation_tokens_total{{model=\"{}\"}} {n}",
                escape(model)
            );
        }
        family(
            o,
            "wc_completion_seconds",
            "histogram",
            "Completion latency, whole request.",
        );
        c.completion_seconds.render(o, "wc_completion_seconds", "");

        family(
            o,
            "wc_http_requests_total",
            "counter",
            "HTTP requests answered, by route and status.",
        );
        for ((route, status), n) in &c.http {
            let _ = writeln!(
                o,
                "wc_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        family(o, "wc_errors_total", "counter", "Errors answered, by type.");
        for (kind, n) in &c.errors {
            let _ = writeln!(o, "wc_errors_total{{type=\"{}\"}} {n}", escape(kind));
        }
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(7.0);
        let mut out = String::new();
        h.render(&mut out, "x", "phase=\"a\"");
        assert!(
            out.contains("x_bucket{phase=\"a\",le=\"0.005\"} 1"),
            "{out}"
        );
        assert!(out.contains("x_bucket{phase=\"a\",le=\"10\"} 2"), "{out}");
        assert!(out.contains("x_bucket{phase=\"a\",le=\"+Inf\"} 2"), "{out}");
        assert!(out.contains("x_count{phase=\"a\"} 2"), "{out}");
    }

    #[test]
    fn render_has_one_pod_level_vllm_series_each() {
        let m = Metrics::default();
        m.error("no_free_worker");
        let stats = RuntimeStats {
            requests_running: 2,
            requests_waiting: 3,
            ..Default::default()
        };
        let text = m.render(&Live {
            stats: &stats,
            workers: &[],
            engines: &[],
            ready: true,
            draining: false,
        });
        let running: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("vllm:num_requests_running"))
            .collect();
        assert_eq!(running, ["vllm:num_requests_running 2"]);
        assert!(text.contains("vllm:num_requests_waiting 3"));
        assert!(text.contains("wc_errors_total{type=\"no_free_worker\"} 1"));
        assert!(text.contains("wc_workers{state=\"idle\"} 0"));
    }
}
