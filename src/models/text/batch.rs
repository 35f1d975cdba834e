//! The running batch of one engine: sequences admitted against a KV-cache token budget, each
//! step one forward pass over all of them (prefills in chunks beside the decodes), and each
//! sequence's tokens, end and output as [`SeqEvent`]s.

use candle_core::Tensor;
use wc_actors::{Admission, FinishReason, GenerateOutput, SeqEvent, SeqId};

use super::error::RunError;
use super::sequence::{Next, Sequence, Vocabulary};
use crate::models::causal_lm::CausalLm;

/// Prompt tokens one step runs at most, over all prefilling sequences, so that a long prompt
/// does not stall the decodes beside it.
pub const PREFILL_CHUNK_TOKENS: usize = 512;

/// The KV-cache tokens an engine reserves for its running sequences unless configured.
pub const DEFAULT_KV_CACHE_TOKENS: usize = 32768;

/// What one sampling sequence chooses its next token from (see [`Next`]).
enum Choice {
    Greedy(u32),
    Logits(Vec<f32>),
}

/// Sequences running on one engine.
pub struct Batch<C> {
    sequences: Vec<Sequence<C>>,
    /// KV-cache tokens the engine may hold for all its sequences.
    budget: usize,
    /// Tokens reserved by the running sequences.
    reserved: usize,
}

impl<C> Batch<C> {
    pub fn new(budget: usize) -> Self {
        Self {
            sequences: Vec::new(),
            budget,
            reserved: 0,
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Tokens the running sequences reserve together (never more than the budget).
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    pub fn len(&self) -> usize {
        self.sequences.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Takes `sequence` in when its reservation fits now; one that can never fit is an error.
    pub fn admit(&mut self, sequence: Sequence<C>) -> Result<Admission, RunError> {
        if sequence.reserved > self.budget {
            return Err(RunError::KvBudgetExceeded {
                needed: sequence.reserved,
                budget: self.budget,
            });
        }
        if self
            .reserved
            .checked_add(sequence.reserved)
            .is_none_or(|total| total > self.budget)
        {
            return Ok(Admission::NoRoomYet);
        }
        self.reserved += sequence.reserved;
        self.sequences.push(sequence);
        Ok(Admission::Admitted)
    }

    /// Drops a sequence, freeing its reservation.
    pub fn cancel(&mut self, id: SeqId) {
        if let Some(at) = self.sequences.iter().position(|s| s.id == id) {
            let sequence = self.sequences.remove(at);
            self.reserved -= sequence.reserved;
        }
    }
}

impl<C: crate::models::layers::kv_cache::TokenCache> Batch<C> {
    /// Ends a sequence now, for `reason`; its output so far.
    pub fn finish(
        &mut self,
        id: SeqId,
        reason: FinishReason,
        vocab: &Vocabulary<'_>,
    ) -> Option<GenerateOutput> {
        let at = self.sequences.iter().position(|s| s.id == id)?;
        let sequence = self.sequences.remove(at);
        self.reserved -= sequence.reserved;
        Some(sequence.output(reason, vocab.tokenizer))
    }

    /// One forward pass over every sequence with tokens to run, then a token for each one whose
    /// pending tokens are all in its cache.
    pub fn step<M: CausalLm<Cache = C>>(
        &mut self,
        model: &M,
        vocab: &Vocabulary<'_>,
    ) -> Result<Vec<SeqEvent>, RunError> {
        let mut events = Vec::new();
        // Sequences asked for no tokens end before any pass.
        self.retire(&mut events, vocab, |s| {
            s.wants_nothing().then_some(FinishReason::Length)
        });
        // A sequence about to hold more cache slots than it reserved fails alone: the slab holds
        // the budget and no more, so its overflow would fail the whole pass.
        self.retire_over_reservation(&mut events);
        let mut prefill_left = PREFILL_CHUNK_TOKENS;
        let mut chunks = Vec::with_capacity(self.sequences.len());
        for (at, seq) in self.sequences.iter().enumerate() {
            let take = match seq.prefilling() {
                true => seq.pending().len().min(prefill_left),
                false => seq.pending().len(),
            };
            if take > 0 {
                if seq.prefilling() {
                    prefill_left -= take;
                }
                chunks.push((at, take));
            }
        }
        if chunks.is_empty() {
            return Ok(events);
        }
        let began = std::time::Instant::now();
        let logits = self.forward(model, &chunks)?;
        let queued = began.elapsed();
        let mut choices = self.choices(&chunks, &logits)?.into_iter();
        tracing::debug!(
            target: "wc::step",
            sequences = chunks.len(),
            queued_us = queued.as_micros() as u64,
            total_us = began.elapsed().as_micros() as u64,
            cpu = current_cpu(),
            "step"
        );
        let mut ended = Vec::new();
        for &(at, take) in &chunks {
            let seq = &mut self.sequences[at];
            seq.consumed(take);
            if !seq.pending().is_empty() {
                continue; // the prompt goes on in the next step
            }
            let choice = choices
                .next()
                .expect("one choice per sequence that samples");
            let next = match &choice {
                Choice::Greedy(token) => Next::Greedy(*token),
                Choice::Logits(row) => Next::Logits(row),
            };
            let advance = seq.advance(next, vocab);
            if let Some(token) = advance.token {
                events.push(SeqEvent::Token(seq.id, token));
            }
            if let Some(reason) = advance.finished {
                ended.push((seq.id, reason));
            }
        }
        self.retire(&mut events, vocab, |s| {
            ended.iter().find(|(id, _)| *id == s.id).map(|(_, r)| *r)
        });
        Ok(events)
    }

    /// What each sequence that samples this step (its chunk ends its pending tokens) chooses
    /// from, in chunk order: the device's argmax, or its logits row copied to the host. Only
    /// the rows that are needed leave the device.
    fn choices(
        &self,
        chunks: &[(usize, usize)],
        logits: &Tensor,
    ) -> candle_core::Result<Vec<Choice>> {
        let sampling: Vec<(usize, bool)> = chunks
            .iter()
            .enumerate()
            .filter(|(_, (at, take))| self.sequences[*at].pending().len() == *take)
            .map(|(row, (at, _))| (row, self.sequences[*at].needs_logits()))
            .collect();
        let full: Vec<u32> = sampling
            .iter()
            .filter(|(_, full)| *full)
            .map(|(row, _)| *row as u32)
            .collect();
        let mut rows = match full.len() {
            0 => Vec::new(),
            n if n == chunks.len() => logits.to_vec2::<f32>()?,
            _ => {
                let index = Tensor::new(full.as_slice(), logits.device())?;
                logits.index_select(&index, 0)?.to_vec2::<f32>()?
            }
        }
        .into_iter();
        let greedy: Vec<u32> = match sampling.iter().any(|(_, full)| !full) {
            true => logits.argmax(1)?.to_vec1()?,
            false => Vec::new(),
        };
        Ok(sampling
            .iter()
            .map(|&(row, full)| match full {
                true => Choice::Logits(rows.next().expect("a row per full choice")),
                false => Choice::Greedy(greedy[row]),
            })
            .collect())
    }

    /// Runs `take` pending tokens of each chosen sequence in one pass; logits `[chunks, vocab]`.
    fn forward<M: CausalLm<Cache = C>>(
        &mut self,
        model: &M,
        chunks: &[(usize, usize)],
    ) -> candle_core::Result<Tensor> {
        let mut chosen = chunks.iter().peekable();
        let mut inputs = Vec::with_capacity(chunks.len());
        for (at, seq) in self.sequences.iter_mut().enumerate() {
            if let Some(&(_, take)) = chosen.next_if(|(i, _)| *i == at) {
                let (pending, cache) = seq.split_for_forward();
                inputs.push((&pending[..take], cache));
            }
        }
        model.forward_batch(&mut inputs)
    }

    /// Removes, each with its own error, the sequences whose next tokens would take them past
    /// the cache slots they reserved.
    fn retire_over_reservation(&mut self, events: &mut Vec<SeqEvent>) {
        let mut at = 0;
        while at < self.sequences.len() {
            let seq = &self.sequences[at];
            let next = match seq.prefilling() {
                true => seq.pending().len().min(PREFILL_CHUNK_TOKENS),
                false => seq.pending().len(),
            };
            let needed = seq.cache.len().saturating_add(next);
            if needed <= seq.reserved {
                at += 1;
                continue;
            }
            let seq = self.sequences.remove(at);
            self.reserved -= seq.reserved;
            let error = RunError::KvReservationExceeded {
                needed,
                reserved: seq.reserved,
            };
            events.push(SeqEvent::Finished(seq.id, Err(error.into())));
        }
    }

    /// Removes the sequences `ended` names a reason for, with their outputs as events.
    fn retire(
        &mut self,
        events: &mut Vec<SeqEvent>,
        vocab: &Vocabulary<'_>,
        ended: impl Fn(&Sequence<C>) -> Option<FinishReason>,
    ) {
        let mut at = 0;
        while at < self.sequences.len() {
            match ended(&self.sequences[at]) {
                Some(reason) => {
                    let seq = self.sequences.remove(at);
                    self.reserved -= seq.reserved;
                    let id = seq.id;
                    let output = seq.output(reason, vocab.tokenizer);
                    events.push(SeqEvent::Finished(id, Ok(output)));
                }
                None => at += 1,
            }
        }
    }
}

/// The CPU this thread runs on (Linux; -1 elsewhere), for the step timings.
fn current_cpu() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_getcpu has no preconditions.
    return unsafe { libc::sched_getcpu() };
    #[cfg(not(target_os = "linux"))]
    -1
}
