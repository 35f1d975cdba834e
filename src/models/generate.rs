//! The generation loop every family shares: prefill, then one token at a time with the KV cache,
//! sampling, stopping on any end-of-sequence id or stop string, and streaming text deltas that
//! never end inside a character or a possible stop string.

use std::time::Instant;

use tokenizers::Tokenizer;
use wc_actors::{FinishReason, GenerateOutput, GenerateRequest, TokenEvent};

use super::sampler::Sampler;
use super::{CausalLm, TokenCache};
use crate::error::GenerateError;

/// Text of `ids` with special tokens skipped; empty without a tokenizer.
pub fn decode(tokenizer: Option<&Tokenizer>, ids: &[u32]) -> String {
    tokenizer
        .and_then(|t| t.decode(ids, true).ok())
        .unwrap_or_default()
}

/// Generates after `prompt_ids` (already checked against the model) for `request`, calling
/// `on_token` with each token and the text it adds; stops early when `on_token` returns `false`.
pub fn generate<M: CausalLm>(
    model: &M,
    tokenizer: Option<&Tokenizer>,
    eos_ids: &[u32],
    prompt_ids: Vec<u32>,
    request: &GenerateRequest,
    on_token: &mut dyn FnMut(TokenEvent) -> bool,
) -> Result<GenerateOutput, GenerateError> {
    let mut sampler = Sampler::new(request.temperature, request.top_p, request.seed)?;
    let started = Instant::now();
    let mut prefill_ms = 0.0;
    let max_positions = model.max_positions();
    let mut cache = model.new_cache();
    let mut new_tokens: Vec<u32> = Vec::new();
    let mut text = String::new();
    let mut emitted = 0usize;
    let mut input = prompt_ids.clone();
    let mut finish_reason = FinishReason::Length;
    while new_tokens.len() < request.max_new_tokens && cache.len() + input.len() <= max_positions {
        let logits: Vec<f32> = model.forward_tokens(&input, &mut cache, false)?.to_vec1()?;
        if new_tokens.is_empty() {
            prefill_ms = started.elapsed().as_secs_f64() * 1e3;
        }
        let token = sampler.sample(&logits);
        if eos_ids.contains(&token) && !request.ignore_eos {
            finish_reason = FinishReason::Stop;
            break;
        }
        new_tokens.push(token);
        input = vec![token];
        text = decode(tokenizer, &new_tokens);
        if let Some(at) = request
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(at);
            finish_reason = FinishReason::Stop;
        }
        let safe = if finish_reason == FinishReason::Stop {
            text.len()
        } else {
            stream_safe_len(&text, &request.stop)
        };
        let delta = text
            .get(emitted..safe.max(emitted))
            .unwrap_or("")
            .to_string();
        emitted = emitted.max(safe);
        if !on_token(TokenEvent {
            id: token,
            text: delta,
        }) {
            finish_reason = FinishReason::Cancelled;
            break;
        }
        if finish_reason == FinishReason::Stop {
            break;
        }
    }
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(GenerateOutput {
        prompt_ids,
        new_tokens,
        text,
        finish_reason,
        prefill_ms,
        decode_ms: total_ms - prefill_ms,
    })
}

/// How much of `text` can be streamed now: not a trailing partial character, and not a tail
/// that might still grow into a stop string.
pub fn stream_safe_len(text: &str, stop: &[String]) -> usize {
    let mut safe = text.trim_end_matches('\u{FFFD}').len();
    for s in stop {
        for k in (1..s.len()).rev() {
            if s.is_char_boundary(k) && text[..safe].ends_with(&s[..k]) {
                safe = safe.min(safe - k);
                break;
            }
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::stream_safe_len;

    #[test]
    fn holds_back_possible_stop_prefixes() {
        let stop = vec!["END".to_string()];
        assert_eq!(stream_safe_len("hello EN", &stop), 6);
        assert_eq!(stream_safe_len("hello", &stop), 5);
        assert_eq!(stream_safe_len("ab\u{FFFD}", &[]), 2);
    }
}
