//! The `vllm:` series recorded once per finished request, under vLLM's names and labels:
//! `vllm:request_success_total{model_name, finished_reason}`, the token-count histograms
//! (`vllm:request_prompt_tokens`, `vllm:request_generation_tokens`,
//! `vllm:iteration_tokens_total`), and the phase histograms
//! (`vllm:request_prefill_time_seconds`, `vllm:request_decode_time_seconds`,
//! `vllm:request_inference_time_seconds`, `vllm:request_time_per_output_token_seconds`).
//!
//! Prefill and decode times are the engine's own (`GenerateOutput::prefill_ms`, `decode_ms`);
//! inference time is their sum (vLLM: the time a request spends RUNNING). Time per output token
//! is the request's first-to-last-token time over its tokens after the first (0 for a request
//! of one token or none), as vLLM computes it. The engine reports no per-step token counts, so
//! `vllm:iteration_tokens_total` counts each finished request's prompt and generated tokens
//! (one observation per request, not per engine step).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use wc_actors::{FinishReason, GenerateOutput};

use super::requests::{ModelLabel, MODEL_LABEL};
use crate::server::openai::finish_reason;

/// Every finish reason, so that each has a series (at zero) once a model finished a request.
const FINISH_REASONS: [FinishReason; 3] = [
    FinishReason::Stop,
    FinishReason::Length,
    FinishReason::Cancelled,
];

/// vLLM's 1-2-5 token buckets (`build_1_2_5_buckets`), up to 100k tokens.
const TOKEN_BUCKETS: [f64; 16] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0,
    50000.0, 100000.0,
];

/// vLLM's `vllm:iteration_tokens_total` buckets.
const ITERATION_BUCKETS: [f64; 13] = [
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

/// vLLM's time-per-output-token buckets, with three below 10 ms for small models on a GPU
/// (seconds).
const TPOT_BUCKETS: [f64; 22] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
    5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];

/// vLLM's request-phase buckets, with four below 300 ms (seconds).
const PHASE_BUCKETS: [f64; 25] = [
    0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
];

type HistogramFamily = Family<ModelLabel, Histogram, fn() -> Histogram>;

/// `model_name="..."`, `finished_reason="..."`.
type ReasonLabel = [(&'static str, String); 2];

/// The once-per-finished-request series; clones share them.
#[derive(Clone, Debug)]
pub struct FinishedSeries {
    success: Family<ReasonLabel, Counter>,
    prompt_tokens: HistogramFamily,
    generation_tokens: HistogramFamily,
    iteration_tokens: HistogramFamily,
    prefill: HistogramFamily,
    decode: HistogramFamily,
    inference: HistogramFamily,
    time_per_output_token: HistogramFamily,
}

impl Default for FinishedSeries {
    fn default() -> Self {
        Self {
            success: Family::default(),
            prompt_tokens: Family::new_with_constructor(|| Histogram::new(TOKEN_BUCKETS)),
            generation_tokens: Family::new_with_constructor(|| Histogram::new(TOKEN_BUCKETS)),
            iteration_tokens: Family::new_with_constructor(|| Histogram::new(ITERATION_BUCKETS)),
            prefill: Family::new_with_constructor(|| Histogram::new(PHASE_BUCKETS)),
            decode: Family::new_with_constructor(|| Histogram::new(PHASE_BUCKETS)),
            inference: Family::new_with_constructor(|| Histogram::new(PHASE_BUCKETS)),
            time_per_output_token: Family::new_with_constructor(|| Histogram::new(TPOT_BUCKETS)),
        }
    }
}

/// What the server saw of a finished request's tokens (the engine's output says the rest).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenTimes {
    /// Tokens the server received.
    pub tokens: usize,
    /// Seconds from the first token to the last (0 with fewer than two).
    pub first_to_last: f64,
}

impl TokenTimes {
    /// vLLM's time per output token: first-to-last over the tokens after the first; 0 for a
    /// request of one token or none.
    pub fn per_output_token(&self) -> f64 {
        match self.tokens {
            0 | 1 => 0.0,
            n => self.first_to_last / (n - 1) as f64,
        }
    }
}

fn reason_label(model: &str, reason: FinishReason) -> ReasonLabel {
    [
        (MODEL_LABEL, model.to_owned()),
        ("finished_reason", finish_reason(reason).to_owned()),
    ]
}

impl FinishedSeries {
    /// Registers every series under its vLLM name (units and `_total` are added by the encoder).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "vllm:request_success",
            "Count of finished requests, by finish reason (stop, length, abort)",
            self.success.clone(),
        );
        let tokens = [
            (
                "vllm:request_prompt_tokens",
                "Prompt tokens of each finished request",
                &self.prompt_tokens,
            ),
            (
                "vllm:request_generation_tokens",
                "Tokens generated by each finished request (every choice)",
                &self.generation_tokens,
            ),
            (
                "vllm:iteration_tokens_total",
                "Tokens (prompt and generated) per finished request: the engine reports no \
                 per-step counts, so one observation per request, not per engine step",
                &self.iteration_tokens,
            ),
        ];
        for (name, help, family) in tokens {
            r.register(name, help, family.clone());
        }
        let seconds = [
            (
                "vllm:request_prefill_time",
                "Engine time of each finished request's prefill (to its first token)",
                &self.prefill,
            ),
            (
                "vllm:request_decode_time",
                "Engine time of each finished request's decode (after its first token)",
                &self.decode,
            ),
            (
                "vllm:request_inference_time",
                "Engine time of each finished request, prefill and decode (RUNNING)",
                &self.inference,
            ),
            (
                "vllm:request_time_per_output_token",
                "Each finished request's first-to-last-token time over its tokens after the \
                 first (0 for one token or none)",
                &self.time_per_output_token,
            ),
        ];
        for (name, help, family) in seconds {
            r.register_with_unit(name, help, Unit::Seconds, family.clone());
        }
    }

    /// Records one finished request of `model`.
    pub fn observe(&self, model: &str, output: &GenerateOutput, times: TokenTimes) {
        for reason in FINISH_REASONS {
            let counter = self.success.get_or_create(&reason_label(model, reason));
            if reason == output.finish_reason {
                counter.inc();
            }
        }
        let label = [(MODEL_LABEL, model.to_owned())];
        let (prompt, generated) = (output.prompt_ids.len(), output.new_tokens.len());
        let observe = |family: &HistogramFamily, value: f64| {
            family.get_or_create(&label).observe(value);
        };
        observe(&self.prompt_tokens, prompt as f64);
        observe(&self.generation_tokens, generated as f64);
        observe(&self.iteration_tokens, (prompt + generated) as f64);
        let (prefill, decode) = (output.prefill_ms / 1e3, output.decode_ms / 1e3);
        observe(&self.prefill, prefill.max(0.0));
        observe(&self.decode, decode.max(0.0));
        observe(&self.inference, (prefill + decode).max(0.0));
        observe(&self.time_per_output_token, times.per_output_token());
    }

    /// Drops every series of `model`.
    pub fn forget(&self, model: &str) {
        for reason in FINISH_REASONS {
            self.success.remove(&reason_label(model, reason));
        }
        let label = [(MODEL_LABEL, model.to_owned())];
        for family in [
            &self.prompt_tokens,
            &self.generation_tokens,
            &self.iteration_tokens,
            &self.prefill,
            &self.decode,
            &self.inference,
            &self.time_per_output_token,
        ] {
            family.remove(&label);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_per_output_token_is_over_the_tokens_after_the_first() {
        let times = |tokens, first_to_last| TokenTimes {
            tokens,
            first_to_last,
        };
        assert_eq!(times(0, 0.0).per_output_token(), 0.0);
        assert_eq!(times(1, 0.0).per_output_token(), 0.0);
        assert_eq!(times(5, 2.0).per_output_token(), 0.5);
    }
}
