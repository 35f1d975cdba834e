//! An OPT model with its tokenizer, generating token by token with a KV cache.

use std::time::Instant;

use candle_core::Tensor;
use tokenizers::Tokenizer;
use wc_actors::{EngineError, FinishReason, GenerateOutput, GenerateRequest, Prompt, TokenEvent};

use super::model::{KvCache, OptModel};
use super::sampler::Sampler;
use crate::error::GenerateError;

/// A loaded OPT model, ready to generate.
pub struct OptEngine {
    pub model: OptModel,
    tokenizer: Option<Tokenizer>,
    /// Device bytes held by the weights.
    device_bytes: u64,
}

impl OptEngine {
    pub fn new(model: OptModel, tokenizer: Option<Tokenizer>, device_bytes: u64) -> Self {
        Self {
            model,
            tokenizer,
            device_bytes,
        }
    }

    /// Token ids for a prompt: text goes through `tokenizer.json` (which adds OPT's `</s>` first).
    pub fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, GenerateError> {
        let ids = match prompt {
            Prompt::Ids(ids) => ids.clone(),
            Prompt::Text(text) => {
                let tokenizer = self.tokenizer.as_ref().ok_or(GenerateError::NoTokenizer)?;
                tokenizer
                    .encode(text.as_str(), true)
                    .map_err(|e| GenerateError::Tokenizer(e.to_string()))?
                    .get_ids()
                    .to_vec()
            }
        };
        let vocab = self.model.config.vocab_size;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(GenerateError::TokenOutOfRange { id, vocab });
        }
        if ids.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let max = self.model.config.max_position_embeddings;
        if ids.len() > max {
            return Err(GenerateError::PromptTooLong {
                len: ids.len(),
                max,
            });
        }
        Ok(ids)
    }

    /// Text of generated tokens, special tokens skipped; empty without a tokenizer.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer
            .as_ref()
            .and_then(|t| t.decode(ids, true).ok())
            .unwrap_or_default()
    }

    /// Logits (`[seq, vocab]`, f32) of one forward pass over `ids`, without a cache.
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor, GenerateError> {
        let input = Tensor::new(ids, self.model.device())?.unsqueeze(0)?;
        Ok(self
            .model
            .forward(&input, &mut KvCache::default(), true)?
            .squeeze(0)?)
    }

    /// Generates for `request`, calling `on_token` with each token and the text it adds.
    pub fn run(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<GenerateOutput, GenerateError> {
        let prompt_ids = self.encode(&request.prompt)?;
        let mut sampler = Sampler::new(request.temperature, request.top_p, request.seed)?;
        let started = Instant::now();
        let mut prefill_ms = 0.0;
        let max_positions = self.model.config.max_position_embeddings;
        let eos = self.model.config.eos_token_id;
        let mut cache = KvCache::default();
        let mut new_tokens: Vec<u32> = Vec::new();
        let mut text = String::new();
        let mut emitted = 0usize;
        let mut input = prompt_ids.clone();
        let mut finish_reason = FinishReason::Length;
        while new_tokens.len() < request.max_new_tokens && cache.len + input.len() <= max_positions
        {
            let ids = Tensor::new(input.as_slice(), self.model.device())?.unsqueeze(0)?;
            let logits: Vec<f32> = self
                .model
                .forward(&ids, &mut cache, false)?
                .squeeze(0)?
                .to_vec1()?;
            if new_tokens.is_empty() {
                prefill_ms = started.elapsed().as_secs_f64() * 1e3;
            }
            let token = sampler.sample(&logits);
            if token == eos && !request.ignore_eos {
                finish_reason = FinishReason::Stop;
                break;
            }
            new_tokens.push(token);
            input = vec![token];
            text = self.decode(&new_tokens);
            if let Some(at) = request
                .stop
                .iter()
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
}

/// How much of `text` can be streamed now: not a trailing partial character, and not a tail
/// that might still grow into a stop string.
fn stream_safe_len(text: &str, stop: &[String]) -> usize {
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

impl wc_actors::Engine for OptEngine {
    fn generate(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<GenerateOutput, EngineError> {
        Ok(self.run(request, on_token)?)
    }

    fn warm_up(&mut self) -> Result<u32, EngineError> {
        let request = GenerateRequest {
            prompt: Prompt::Ids(vec![self.model.config.bos_token_id]),
            max_new_tokens: 1,
            ignore_eos: true,
            ..Default::default()
        };
        let output = self.run(&request, &mut |_| true)?;
        Ok(output.new_tokens.first().copied().unwrap_or_default())
    }

    fn device_bytes(&self) -> u64 {
        self.device_bytes
    }
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
