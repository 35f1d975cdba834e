//! The sampling parameters every completion endpoint takes (OpenAI's and vLLM's extras: `top_k`,
//! `min_p`, `repetition_penalty`, `min_tokens`, `stop_token_ids`, `include_stop_str_in_output`,
//! `skip_special_tokens`), checked as vLLM checks them, and the runtime request they build.
//! What a client leaves unset is marked so, for the engine to take from the model's
//! `generation_config.json` (as vLLM does by default).

use std::collections::BTreeMap;

use serde::Deserialize;
use wc_actors::request::UnsetSampling;
use wc_actors::{GenerateRequest, Prompt};

use super::{Limits, StopInput};
use crate::server::error::ApiError;

/// The most choices (`n`, `best_of`) one request may ask for.
pub const MAX_CHOICES: usize = 16;

/// The most alternatives per token `logprobs` / `top_logprobs` may ask for (vLLM's default).
pub const MAX_LOGPROBS: usize = 20;

/// The most `stop_token_ids` one request may give.
pub const MAX_STOP_TOKEN_IDS: usize = 1024;

/// vLLM's sampling parameters beyond OpenAI's, as both endpoints take them.
pub const EXTRA_PARAMETERS: [&str; 7] = [
    "top_k",
    "min_p",
    "repetition_penalty",
    "min_tokens",
    "stop_token_ids",
    "include_stop_str_in_output",
    "skip_special_tokens",
];

/// vLLM's sampling extras (see [`EXTRA_PARAMETERS`]), flattened into each endpoint's request.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SamplingExtras {
    /// The most likely tokens sampled among; -1 or 0: all.
    pub top_k: Option<i64>,
    /// Tokens less likely than this fraction of the most likely one are dropped; 0: none.
    pub min_p: Option<f64>,
    /// Over 1 discourages tokens already in the prompt or output; 1: none.
    pub repetition_penalty: Option<f64>,
    /// Tokens generated before the end-of-sequence token or a stop may end generation.
    pub min_tokens: Option<usize>,
    /// Token ids that end generation.
    pub stop_token_ids: Option<Vec<u32>>,
    /// Keep the stop string that ended generation in the text.
    pub include_stop_str_in_output: Option<bool>,
    /// Leave special tokens out of the text (the default).
    pub skip_special_tokens: Option<bool>,
}

/// The sampling parameters every completion endpoint takes.
#[derive(Clone, Debug, Default)]
pub struct Sampling {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<StopInput>,
    pub n: Option<usize>,
    pub best_of: Option<usize>,
    pub ignore_eos: bool,
    /// Alternatives per token, when logprobs are asked for.
    pub logprobs: Option<usize>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// vLLM's extras.
    pub extras: SamplingExtras,
}

/// How many sequences a request runs and how many it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChoiceCounts {
    /// Returned.
    pub n: usize,
    /// Generated; the `n` with the highest cumulative logprob are returned.
    pub best_of: usize,
}

impl Sampling {
    /// Checks `n` and `best_of`; a stream cannot rank sequences it has already sent.
    pub fn choices(&self, stream: bool) -> Result<ChoiceCounts, ApiError> {
        let n = self.n.unwrap_or(1);
        let best_of = self.best_of.unwrap_or(n);
        if n == 0 || n > MAX_CHOICES {
            return Err(ApiError::bad_request(format!(
                "`n` must be between 1 and {MAX_CHOICES}, got {n}"
            )));
        }
        if best_of < n || best_of > MAX_CHOICES {
            return Err(ApiError::bad_request(format!(
                "`best_of` must be between `n` ({n}) and {MAX_CHOICES}, got {best_of}"
            )));
        }
        if stream && best_of != n {
            return Err(ApiError::bad_request(
                "`best_of` other than `n` cannot be streamed: set `stream` to false",
            ));
        }
        Ok(ChoiceCounts { n, best_of })
    }

    /// Checks the parameters against `limits` and builds the runtime's request for `prompt`.
    pub fn to_generate(&self, prompt: Prompt, limits: Limits) -> Result<GenerateRequest, ApiError> {
        let bad = |m: &str| ApiError::bad_request(m);
        self.choices(false)?;
        let max_tokens = self.max_tokens.unwrap_or(limits.default_max_tokens);
        if max_tokens == 0 || max_tokens > limits.max_tokens {
            return Err(bad(&format!(
                "`max_tokens` must be between 1 and {}, got {max_tokens}",
                limits.max_tokens
            )));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(bad(&format!(
                "`temperature` must be between 0 and 2, got {temperature}"
            )));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(bad(&format!("`top_p` must be in (0, 1], got {top_p}")));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopInput::One(s)) => vec![s.clone()],
            Some(StopInput::Many(v)) => v.clone(),
        };
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(bad("`stop` takes at most 4 non-empty strings"));
        }
        if self.logprobs.is_some_and(|k| k > MAX_LOGPROBS) {
            return Err(bad(&format!(
                "`logprobs` must be between 0 and {MAX_LOGPROBS}"
            )));
        }
        let penalty = |name: &str, value: Option<f32>| match value.unwrap_or(0.0) {
            v if (-2.0..=2.0).contains(&v) => Ok(v),
            v => Err(bad(&format!("`{name}` must be between -2 and 2, got {v}"))),
        };
        let presence_penalty = penalty("presence_penalty", self.presence_penalty)?;
        let frequency_penalty = penalty("frequency_penalty", self.frequency_penalty)?;
        let logit_bias = self
            .logit_bias
            .iter()
            .flatten()
            .map(|(token, bias)| {
                let id = token.parse::<u32>().map_err(|_| {
                    bad(&format!(
                        "`logit_bias` keys must be token ids, got `{token}`"
                    ))
                })?;
                match (-100.0..=100.0).contains(bias) {
                    true => Ok((id, *bias)),
                    false => Err(bad(&format!(
                        "`logit_bias` values must be between -100 and 100, got {bias}"
                    ))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let x = &self.extras;
        let top_k = match x.top_k.unwrap_or(0) {
            -1 | 0 => 0,
            k if k >= 1 => usize::try_from(k).unwrap_or(usize::MAX),
            k => {
                return Err(bad(&format!(
                    "`top_k` must be -1 or 0 (all tokens) or at least 1, got {k}"
                )))
            }
        };
        let min_p = x.min_p.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(bad(&format!("`min_p` must be in [0, 1], got {min_p}")));
        }
        let repetition_penalty = x.repetition_penalty.unwrap_or(1.0);
        if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
            return Err(bad(&format!(
                "`repetition_penalty` must be greater than 0, got {repetition_penalty}"
            )));
        }
        let min_tokens = x.min_tokens.unwrap_or(0);
        if min_tokens > max_tokens {
            return Err(bad(&format!(
                "`min_tokens` ({min_tokens}) must be at most `max_tokens` ({max_tokens})"
            )));
        }
        let stop_token_ids = x.stop_token_ids.clone().unwrap_or_default();
        if stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
            return Err(bad(&format!(
                "`stop_token_ids` takes at most {MAX_STOP_TOKEN_IDS} ids, got {}",
                stop_token_ids.len()
            )));
        }
        Ok(GenerateRequest {
            prompt,
            max_new_tokens: max_tokens,
            temperature,
            top_p,
            seed: self.seed,
            stop,
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs,
            presence_penalty,
            frequency_penalty,
            logit_bias,
            top_k,
            min_p,
            repetition_penalty,
            min_tokens,
            stop_token_ids,
            include_stop_str_in_output: x.include_stop_str_in_output.unwrap_or(false),
            skip_special_tokens: x.skip_special_tokens.unwrap_or(true),
            unset: UnsetSampling {
                temperature: self.temperature.is_none(),
                top_p: self.top_p.is_none(),
                top_k: x.top_k.is_none(),
                min_p: x.min_p.is_none(),
                repetition_penalty: x.repetition_penalty.is_none(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_tokens: 100,
        default_max_tokens: 16,
    };

    fn sampling(extras: serde_json::Value) -> Sampling {
        Sampling {
            extras: serde_json::from_value(extras).unwrap(),
            ..Sampling::default()
        }
    }

    fn generate(extras: serde_json::Value) -> Result<GenerateRequest, ApiError> {
        sampling(extras).to_generate(Prompt::Text("x".into()), LIMITS)
    }

    #[test]
    fn vllm_extras_reach_the_request_and_no_op_values_ask_for_nothing() {
        let g = generate(
            serde_json::json!({"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.3,
            "min_tokens": 4, "stop_token_ids": [7], "include_stop_str_in_output": true,
            "skip_special_tokens": false}),
        )
        .unwrap();
        assert_eq!((g.top_k, g.min_p, g.repetition_penalty), (5, 0.1, 1.3));
        assert_eq!((g.min_tokens, g.stop_token_ids.clone()), (4, vec![7]));
        assert!(g.include_stop_str_in_output && !g.skip_special_tokens);
        assert_eq!(
            g.unset,
            UnsetSampling {
                temperature: true,
                top_p: true,
                ..Default::default()
            }
        );
        for no_op in [
            serde_json::json!({"top_k": -1, "min_p": 0, "repetition_penalty": 1}),
            serde_json::json!({"top_k": 0}),
        ] {
            let g = generate(no_op).unwrap();
            assert_eq!((g.top_k, g.min_p, g.repetition_penalty), (0, 0.0, 1.0));
            assert!(!g.unset.top_k);
        }
        let unset = generate(serde_json::json!({})).unwrap().unset;
        assert!(unset.top_k && unset.min_p && unset.repetition_penalty && unset.temperature);
    }

    #[test]
    fn out_of_range_extras_are_400_naming_the_field() {
        for (extras, field) in [
            (serde_json::json!({"top_k": -2}), "`top_k`"),
            (serde_json::json!({"min_p": 1.5}), "`min_p`"),
            (serde_json::json!({"min_p": -0.1}), "`min_p`"),
            (
                serde_json::json!({"repetition_penalty": 0}),
                "`repetition_penalty`",
            ),
            (serde_json::json!({"min_tokens": 17}), "`min_tokens`"),
            (
                serde_json::json!({"stop_token_ids": vec![1; MAX_STOP_TOKEN_IDS + 1]}),
                "`stop_token_ids`",
            ),
        ] {
            let e = generate(extras.clone()).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{extras}");
            assert!(e.message.contains(field), "{extras}: {}", e.message);
        }
    }
}
