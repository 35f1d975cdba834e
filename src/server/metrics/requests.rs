//! One generation request from arrival to its last token ([`Trace`]): the `vllm:` latency
//! histograms and token counters per model, and the requests waiting and running per model.
//!
//! A request is *waiting* from the moment it is accepted (checked, before any on-demand attach
//! or queueing behind another) until its first token, then *running* until it ends however it
//! ends: a [`Trace`] dropped without [`Trace::finish`] (an error, a client gone) still leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use wc_actors::{FinishReason, GenerateOutput};

use super::finished::{FinishedSeries, TokenTimes};
use crate::server::access::RequestContext;
use crate::server::openai::finish_reason;

/// The label of every per-model series, as vLLM names it.
pub const MODEL_LABEL: &str = "model_name";

/// `model_name="..."`.
pub type ModelLabel = [(&'static str, String); 1];

/// vLLM's time-to-first-token buckets (seconds).
const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// vLLM's inter-token buckets, with three below 10 ms for small models on a GPU (seconds).
const ITL_BUCKETS: [f64; 22] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
    5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];

/// vLLM's request-latency buckets, with four below 300 ms (seconds).
const REQUEST_BUCKETS: [f64; 25] = [
    0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
];

type HistogramFamily = Family<ModelLabel, Histogram, fn() -> Histogram>;

/// Requests of one model not finished yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Accepted, no token yet.
    pub waiting: u64,
    /// First token made, not finished.
    pub running: u64,
}

/// The request-level series, shared by every [`Trace`].
#[derive(Clone, Debug)]
pub struct RequestSeries {
    ttft: HistogramFamily,
    inter_token: HistogramFamily,
    e2e: HistogramFamily,
    queue: HistogramFamily,
    prompt_tokens: Family<ModelLabel, Counter>,
    generation_tokens: Family<ModelLabel, Counter>,
    /// `(model, finish_reason)` -> finished completions.
    completions: Family<[(&'static str, String); 2], Counter>,
    /// The series recorded once per finished request (`vllm:request_success`, ...).
    finished: FinishedSeries,
    in_flight: Arc<Mutex<BTreeMap<String, InFlight>>>,
    /// Models with a series here (a token came or a request finished).
    served: Arc<Mutex<BTreeSet<String>>>,
}

impl Default for RequestSeries {
    fn default() -> Self {
        Self {
            ttft: Family::new_with_constructor(|| Histogram::new(TTFT_BUCKETS)),
            inter_token: Family::new_with_constructor(|| Histogram::new(ITL_BUCKETS)),
            e2e: Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS)),
            queue: Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS)),
            prompt_tokens: Family::default(),
            generation_tokens: Family::default(),
            completions: Family::default(),
            finished: FinishedSeries::default(),
            in_flight: Arc::default(),
            served: Arc::default(),
        }
    }
}

impl RequestSeries {
    /// Registers every series under its vLLM name (units and `_total` are added by the encoder).
    pub fn register(&self, registry: &mut Registry) {
        let seconds = [
            (
                "vllm:time_to_first_token",
                "Time from arrival to the first generated token",
                &self.ttft,
            ),
            (
                "vllm:inter_token_latency",
                "Time between two generated tokens of one request",
                &self.inter_token,
            ),
            (
                "vllm:e2e_request_latency",
                "Time from arrival to the last token of a finished request",
                &self.e2e,
            ),
            (
                "vllm:request_queue_time",
                "Time a finished request spent before its engine started on it \
                 (waiting for an attach or a turn)",
                &self.queue,
            ),
        ];
        for (name, help, family) in seconds {
            registry.register_with_unit(name, help, Unit::Seconds, family.clone());
        }
        registry.register(
            "vllm:prompt_tokens",
            "Prompt tokens of finished requests",
            self.prompt_tokens.clone(),
        );
        registry.register(
            "vllm:generation_tokens",
            "Tokens generated by finished requests",
            self.generation_tokens.clone(),
        );
        self.finished.register(registry);
        registry.register(
            "wc_completions",
            "Completions finished, by model and finish reason",
            self.completions.clone(),
        );
    }

    /// Requests not finished, per model with any.
    pub fn in_flight(&self) -> BTreeMap<String, InFlight> {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Drops every series of the models that served requests here and are neither `kept` nor
    /// in flight (their engine detached): a model's histograms and counters go with its last
    /// engine, so the exposition does not grow with every name that ever served.
    pub fn forget_all_but(&self, kept: impl Fn(&str) -> bool) {
        let in_flight = self.in_flight();
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = served
            .iter()
            .filter(|m| !kept(m) && !in_flight.contains_key(*m))
            .cloned()
            .collect();
        for model in gone {
            let label = [(MODEL_LABEL, model.clone())];
            for family in [&self.ttft, &self.inter_token, &self.e2e, &self.queue] {
                family.remove(&label);
            }
            self.prompt_tokens.remove(&label);
            self.generation_tokens.remove(&label);
            self.finished.forget(&model);
            for reason in [
                FinishReason::Length,
                FinishReason::Stop,
                FinishReason::Cancelled,
            ] {
                let reason = finish_reason(reason).to_owned();
                self.completions
                    .remove(&[("model", model.clone()), ("finish_reason", reason)]);
            }
            served.remove(&model);
        }
    }

    /// Changes `model`'s counts; a model with none left is forgotten, so names sent by clients
    /// (a model that does not exist) cannot pile up series.
    fn count(&self, model: &str, f: impl FnOnce(&mut InFlight)) {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let counts = map.entry(model.to_owned()).or_default();
        f(counts);
        if *counts == InFlight::default() {
            map.remove(model);
        }
    }

    fn served(&self, model: &str) {
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        if !served.contains(model) {
            served.insert(model.to_owned());
        }
    }

    /// Starts following one request for `model`: it waits from now.
    pub fn trace(&self, access: &RequestContext, model: &str) -> Trace {
        self.count(model, |n| n.waiting += 1);
        access.note(|f| f.model = Some(model.to_owned()));
        Trace {
            series: self.clone(),
            access: access.clone(),
            label: [(MODEL_LABEL, model.to_owned())],
            started: Instant::now(),
            first_token: None,
            last_token: None,
            tokens: 0,
            ttft: None,
            state: State::Waiting,
        }
    }
}

/// Where a traced request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Left,
}

/// One generation request being followed: call [`Trace::token`] for each token as it comes and
/// [`Trace::finish`] with the output; dropping it unfinished only takes it out of the gauges.
#[derive(Debug)]
pub struct Trace {
    series: RequestSeries,
    access: RequestContext,
    label: ModelLabel,
    started: Instant,
    /// When the first token came; `None` before it.
    first_token: Option<Instant>,
    /// When the latest token came; `None` before the first.
    last_token: Option<Instant>,
    /// Tokens seen so far.
    tokens: usize,
    /// Seconds from arrival to the first token, once it came.
    ttft: Option<f64>,
    state: State,
}

impl Trace {
    /// The model asked for.
    pub fn model(&self) -> &str {
        &self.label[0].1
    }

    /// The request this generation answers.
    pub fn access(&self) -> &RequestContext {
        &self.access
    }

    /// One token was made (its text may be empty, mid-character).
    pub fn token(&mut self) {
        let now = Instant::now();
        self.tokens += 1;
        match self.last_token {
            None => {
                self.first_token = Some(now);
                self.series.served(self.model());
                let ttft = (now - self.started).as_secs_f64();
                self.ttft = Some(ttft);
                self.series.ttft.get_or_create(&self.label).observe(ttft);
                self.access.note(|f| f.ttft_ms = Some(ttft * 1e3));
                if self.state == State::Waiting {
                    self.series.count(self.model(), |n| {
                        n.waiting -= 1;
                        n.running += 1;
                    });
                    self.state = State::Running;
                }
            }
            Some(last) => {
                let gap = (now - last).as_secs_f64();
                self.series
                    .inter_token
                    .get_or_create(&self.label)
                    .observe(gap);
            }
        }
        self.last_token = Some(now);
    }

    /// Generation ended with `output`: latency, queue time and token counts are recorded.
    pub fn finish(mut self, output: &GenerateOutput) {
        let e2e = self.started.elapsed().as_secs_f64();
        let queue = queue_seconds(e2e, self.ttft, output);
        let s = &self.series;
        s.served(self.model());
        s.e2e.get_or_create(&self.label).observe(e2e);
        s.queue.get_or_create(&self.label).observe(queue);
        let (prompt, generated) = (output.prompt_ids.len(), output.new_tokens.len());
        s.prompt_tokens
            .get_or_create(&self.label)
            .inc_by(prompt as u64);
        s.generation_tokens
            .get_or_create(&self.label)
            .inc_by(generated as u64);
        let times = TokenTimes {
            tokens: self.tokens,
            first_to_last: match (self.first_token, self.last_token) {
                (Some(first), Some(last)) => (last - first).as_secs_f64(),
                _ => 0.0,
            },
        };
        s.finished.observe(self.model(), output, times);
        let finish = finish_reason(output.finish_reason);
        s.completions
            .get_or_create(&[
                ("model", self.model().to_owned()),
                ("finish_reason", finish.to_owned()),
            ])
            .inc();
        self.access.note(|f| {
            f.prompt_tokens = Some(prompt);
            f.completion_tokens = Some(generated);
            f.queue_ms = Some(queue * 1e3);
        });
        self.leave();
    }

    fn leave(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Left);
        match state {
            State::Waiting => self.series.count(self.model(), |n| n.waiting -= 1),
            State::Running => self.series.count(self.model(), |n| n.running -= 1),
            State::Left => {}
        }
    }
}

impl Drop for Trace {
    /// Unfinished: the access line says `cancelled` unless an error is noted (later, for an
    /// error reply; here already, for an error inside a stream).
    fn drop(&mut self) {
        if self.state != State::Left {
            self.access.note(|f| {
                f.error.get_or_insert("cancelled");
            });
        }
        self.leave();
    }
}

/// The time before the engine started on a request: what came before its first token (or its
/// end, without one) less the engine's own prefill (and decode, without a first token).
fn queue_seconds(e2e: f64, ttft: Option<f64>, output: &GenerateOutput) -> f64 {
    let engine_s = match ttft {
        Some(_) => output.prefill_ms / 1e3,
        None => (output.prefill_ms + output.decode_ms) / 1e3,
    };
    (ttft.unwrap_or(e2e) - engine_s).max(0.0)
}

#[cfg(test)]
#[path = "requests_tests.rs"]
mod tests;
