//! One sequence of a batch: its prompt and generated ids, its own cache, sampler, penalties,
//! logit bias, minimum length, stop strings and stop tokens, text held back from the stream, and
//! the output it builds.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use tokenizers::Tokenizer;
use wc_actors::{FinishReason, GenerateOutput, GenerateRequest, SeqId, TokenEvent, TokenLogprobs};

use super::detokenizer::Detokenizer;
use super::error::RunError;
use super::generate::stream_safe_len;
use super::sampler::Sampler;
use crate::models::layers::kv_cache::TokenCache;

/// What the model and tokenizer tell every sequence of an engine.
pub struct Vocabulary<'a> {
    pub tokenizer: Option<&'a Tokenizer>,
    pub eos_ids: &'a [u32],
    pub max_positions: usize,
}

/// A request being generated.
pub struct Sequence<C> {
    pub id: SeqId,
    pub cache: C,
    /// KV-cache tokens reserved for it (prompt plus `max_new_tokens`).
    pub reserved: usize,
    prompt_ids: Vec<u32>,
    /// Tokens not yet in the cache: the rest of the prompt, then the last sampled token.
    pending: Vec<u32>,
    sampler: Sampler,
    max_new_tokens: usize,
    stop: Vec<String>,
    ignore_eos: bool,
    logprobs: Option<usize>,
    presence_penalty: f32,
    frequency_penalty: f32,
    logit_bias: Vec<(u32, f32)>,
    /// 1.0: none.
    repetition_penalty: f32,
    /// Every token of the prompt and the output, for the repetition penalty (empty without one).
    seen: HashSet<u32>,
    /// No end before this many new tokens.
    min_tokens: usize,
    /// Ids that end generation besides the end-of-sequence ids.
    stop_token_ids: Vec<u32>,
    /// Keep what ended generation (stop string, stop token's text) in the output.
    include_stop: bool,
    /// How often each generated token occurred, for the penalties.
    counts: HashMap<u32, u32>,
    new_tokens: Vec<u32>,
    text: String,
    detokenizer: Detokenizer,
    /// A stop string ended the text (nothing after it belongs to the output).
    stopped_by_string: bool,
    /// Bytes of `text` already streamed.
    emitted: usize,
    token_logprobs: Vec<TokenLogprobs>,
    cumulative_logprob: f64,
    admitted: Instant,
    prefill_ms: Option<f64>,
}

/// What a sequence's next token is chosen from.
pub enum Next<'a> {
    /// The raw logits of its last token.
    Logits(&'a [f32]),
    /// The argmax of those logits, taken on the device (a greedy sequence without penalties,
    /// bias or logprobs needs nothing more).
    Greedy(u32),
}

/// What one token did to a sequence.
pub struct Advance {
    pub token: Option<TokenEvent>,
    pub finished: Option<FinishReason>,
}

impl<C: TokenCache> Sequence<C> {
    /// A sequence for `request` after `prompt_ids` (checked against the model already).
    pub fn new(
        id: SeqId,
        prompt_ids: Vec<u32>,
        request: &GenerateRequest,
        cache: C,
    ) -> Result<Self, RunError> {
        if prompt_ids.is_empty() {
            return Err(RunError::EmptyPrompt);
        }
        for (name, value) in [
            ("presence_penalty", request.presence_penalty),
            ("frequency_penalty", request.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return Err(RunError::InvalidSampling(format!(
                    "{name} must be in [-2, 2], got {value}"
                )));
            }
        }
        if !(request.repetition_penalty > 0.0 && request.repetition_penalty.is_finite()) {
            return Err(RunError::InvalidSampling(format!(
                "repetition_penalty must be > 0, got {}",
                request.repetition_penalty
            )));
        }
        if request.min_tokens > request.max_new_tokens {
            return Err(RunError::InvalidSampling(format!(
                "min_tokens ({}) must be at most max_tokens ({})",
                request.min_tokens, request.max_new_tokens
            )));
        }
        if let Some(&(_, bias)) = request
            .logit_bias
            .iter()
            .find(|(_, b)| !(-100.0..=100.0).contains(b))
        {
            return Err(RunError::InvalidSampling(format!(
                "logit_bias values must be in [-100, 100], got {bias}"
            )));
        }
        let reserved = prompt_ids.len().checked_add(request.max_new_tokens).ok_or(
            RunError::ContextExceeded {
                prompt: prompt_ids.len(),
                asked: request.max_new_tokens,
                max: usize::MAX,
            },
        )?;
        let seen = match request.repetition_penalty == 1.0 {
            true => HashSet::new(),
            false => prompt_ids.iter().copied().collect(),
        };
        Ok(Self {
            id,
            cache,
            reserved,
            pending: prompt_ids.clone(),
            prompt_ids,
            sampler: Sampler::new(request.temperature, request.top_p, request.seed)?
                .with_filters(request.top_k, request.min_p)?,
            max_new_tokens: request.max_new_tokens,
            stop: request
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            ignore_eos: request.ignore_eos,
            logprobs: request.logprobs,
            presence_penalty: request.presence_penalty,
            frequency_penalty: request.frequency_penalty,
            logit_bias: request.logit_bias.clone(),
            repetition_penalty: request.repetition_penalty as f32,
            seen,
            min_tokens: request.min_tokens,
            stop_token_ids: request.stop_token_ids.clone(),
            include_stop: request.include_stop_str_in_output,
            counts: HashMap::new(),
            new_tokens: Vec::new(),
            text: String::new(),
            detokenizer: Detokenizer::new(request.skip_special_tokens),
            stopped_by_string: false,
            emitted: 0,
            token_logprobs: Vec::new(),
            cumulative_logprob: 0.0,
            admitted: Instant::now(),
            prefill_ms: None,
        })
    }

    /// Tokens still to run through the model before the next token can be sampled.
    pub fn pending(&self) -> &[u32] {
        &self.pending
    }

    /// The pending tokens and the cache they go into, for a forward pass.
    pub fn split_for_forward(&mut self) -> (&[u32], &mut C) {
        (&self.pending, &mut self.cache)
    }

    /// Still in its prompt (more than the one token a decode step runs).
    pub fn prefilling(&self) -> bool {
        self.new_tokens.is_empty()
    }

    /// The first `n` pending tokens went into the cache.
    pub fn consumed(&mut self, n: usize) {
        self.pending.drain(..n);
    }

    /// Whether asking for nothing more: zero tokens asked for.
    pub fn wants_nothing(&self) -> bool {
        self.max_new_tokens == 0
    }

    /// Whether choosing its next token needs the whole logits row on the host.
    pub fn needs_logits(&self) -> bool {
        !self.sampler.is_greedy()
            || self.logprobs.is_some()
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || self.repetition_penalty != 1.0
            || !self.logit_bias.is_empty()
            || self.new_tokens.len() < self.min_tokens
    }

    /// Takes the next token (sampled from the logits of the last token run, or the device's
    /// argmax when [`Self::needs_logits`] is false), and decides whether the sequence ends.
    pub fn advance(&mut self, next: Next<'_>, vocab: &Vocabulary<'_>) -> Advance {
        if self.prefill_ms.is_none() {
            self.prefill_ms = Some(self.admitted.elapsed().as_secs_f64() * 1e3);
        }
        let (token, logprobs) = match next {
            Next::Greedy(token) => (token, None),
            Next::Logits(logits) => {
                let token = self.sample(logits, vocab.eos_ids);
                let logprobs = self
                    .logprobs
                    .map(|top| token_logprobs(logits, token, top, vocab.tokenizer));
                (token, logprobs)
            }
        };
        let stop_token = (vocab.eos_ids.contains(&token) && !self.ignore_eos)
            || self.stop_token_ids.contains(&token);
        if stop_token && !self.include_stop {
            return Advance {
                token: None,
                finished: Some(FinishReason::Stop),
            };
        }
        if let Some(l) = &logprobs {
            self.cumulative_logprob += l.logprob as f64;
            self.token_logprobs.push(l.clone());
        }
        self.new_tokens.push(token);
        *self.counts.entry(token).or_default() += 1;
        if self.repetition_penalty != 1.0 {
            self.seen.insert(token);
        }
        // Only the end of the text can hold a stop string that was not there before.
        let longest_stop = self.stop.iter().map(String::len).max().unwrap_or(0);
        let mut search_from = self.text.len().saturating_sub(longest_stop);
        while !self.text.is_char_boundary(search_from) {
            search_from -= 1;
        }
        let added = self.detokenizer.next(vocab.tokenizer, &self.new_tokens);
        self.text.push_str(&added);
        let mut finished = stop_token.then_some(FinishReason::Stop);
        let tail = &self.text[search_from..];
        // Stop strings end nothing before `min_tokens` (as in vLLM).
        let found = match self.new_tokens.len() >= self.min_tokens {
            true => self
                .stop
                .iter()
                .filter_map(|s| tail.find(s.as_str()).map(|at| (at, s.len())))
                .min_by_key(|(at, _)| *at),
            false => None,
        };
        if let Some((at, len)) = found {
            let kept = if self.include_stop { len } else { 0 };
            self.text.truncate(search_from + at + kept);
            self.stopped_by_string = true;
            finished = Some(FinishReason::Stop);
        }
        let safe = match finished {
            Some(_) => self.text.len(),
            None => stream_safe_len(&self.text, &self.stop),
        };
        let delta = self
            .text
            .get(self.emitted..safe.max(self.emitted))
            .unwrap_or("")
            .to_string();
        self.emitted = self.emitted.max(safe);
        let full = self.cache.len() + 1 > vocab.max_positions;
        if finished.is_none() && (self.new_tokens.len() >= self.max_new_tokens || full) {
            finished = Some(FinishReason::Length);
        }
        self.pending = vec![token];
        Advance {
            token: Some(TokenEvent {
                id: token,
                text: delta,
                logprobs,
            }),
            finished,
        }
    }

    /// The next token: penalties and bias on the logits, the stop tokens masked before
    /// `min_tokens`, then the sampler.
    fn sample(&mut self, logits: &[f32], eos_ids: &[u32]) -> u32 {
        let penalised = !self.counts.is_empty()
            && (self.presence_penalty != 0.0 || self.frequency_penalty != 0.0);
        let repeated = self.repetition_penalty != 1.0;
        let too_short = self.new_tokens.len() < self.min_tokens;
        if !penalised && !repeated && !too_short && self.logit_bias.is_empty() {
            return self.sampler.sample(logits);
        }
        let mut adjusted = logits.to_vec();
        if repeated {
            let penalty = self.repetition_penalty;
            for &id in &self.seen {
                if let Some(l) = adjusted.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
                }
            }
        }
        if penalised {
            for (&id, &count) in &self.counts {
                if let Some(l) = adjusted.get_mut(id as usize) {
                    *l -= self.presence_penalty + self.frequency_penalty * count as f32;
                }
            }
        }
        for &(id, bias) in &self.logit_bias {
            if let Some(l) = adjusted.get_mut(id as usize) {
                *l += bias;
            }
        }
        if too_short {
            let eos = eos_ids.iter().filter(|_| !self.ignore_eos);
            for &id in eos.chain(&self.stop_token_ids) {
                if let Some(l) = adjusted.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        self.sampler.sample(&adjusted)
    }

    /// The output so far, ended for `finish_reason` (with the text of tokens that ended inside
    /// a character, unless a stop string ended it).
    pub fn output(
        mut self,
        finish_reason: FinishReason,
        tokenizer: Option<&Tokenizer>,
    ) -> GenerateOutput {
        if !self.stopped_by_string {
            // A last token that ends inside a character adds no U+FFFD: the stream never sends
            // an incomplete character, and the whole text says what the stream said.
            let rest = self.detokenizer.flush(tokenizer, &self.new_tokens);
            self.text.push_str(rest.trim_end_matches('\u{FFFD}'));
        }
        let total_ms = self.admitted.elapsed().as_secs_f64() * 1e3;
        let prefill_ms = self.prefill_ms.unwrap_or(total_ms);
        GenerateOutput {
            prompt_ids: self.prompt_ids,
            new_tokens: self.new_tokens,
            text: self.text,
            finish_reason,
            prefill_ms,
            decode_ms: total_ms - prefill_ms,
            cumulative_logprob: self.cumulative_logprob,
            logprobs: self.token_logprobs,
        }
    }
}

/// `log_softmax(logits)` at `token` and the `top` most likely tokens (ties: lower id first).
pub fn token_logprobs(
    logits: &[f32],
    token: u32,
    top: usize,
    tokenizer: Option<&Tokenizer>,
) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_norm = max as f64 + sum.ln();
    let logprob = |id: u32| (logits[id as usize] as f64 - log_norm) as f32;
    let text = |id: u32| {
        tokenizer
            .and_then(|t| t.decode(&[id], false).ok())
            .unwrap_or_default()
    };
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let top = top.min(ids.len());
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if top > 0 && top < ids.len() {
        ids.select_nth_unstable_by(top - 1, by_logit);
    }
    ids.truncate(top);
    ids.sort_by(by_logit);
    TokenLogprobs {
        token: text(token),
        logprob: logprob(token),
        top: ids
            .into_iter()
            .map(|id| (id, text(id), logprob(id)))
            .collect(),
    }
}

#[cfg(test)]
#[path = "sequence_tests.rs"]
mod tests;
