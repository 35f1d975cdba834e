//! The step-based engine interface for iteration-level (continuous) batching: requests are
//! admitted into a running batch, each step runs one forward pass for every running sequence,
//! and finished sequences leave the batch at once.

use serde::{Deserialize, Serialize};

use crate::backend::{EngineError, GenerateOutput, GenerateRequest, TokenEvent};

/// A sequence in an engine's batch, named by whoever admits it (unique while it runs).
pub type SeqId = u64;

/// What admitting a request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admission {
    /// The sequence joins the batch at the next step.
    Admitted,
    /// The KV-cache budget has no room for it now; it fits once running sequences finish.
    NoRoomYet,
}

/// What one step did to one sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SeqEvent {
    /// A new token.
    Token(SeqId, TokenEvent),
    /// The sequence left the batch: its output, or the error that ended only it.
    Finished(SeqId, Result<GenerateOutput, EngineError>),
}

/// How much of an engine's KV-cache budget its running sequences hold, in tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvUsage {
    /// Tokens reserved by the sequences in the batch (each its prompt plus `max_new_tokens`).
    pub reserved_tokens: usize,
    /// Tokens the batch may reserve in all; 0 for an engine without a budget.
    pub budget_tokens: usize,
}

impl KvUsage {
    /// The fraction of the budget reserved, 0 to 1; 0 without a budget.
    pub fn fraction(&self) -> f64 {
        match self.budget_tokens {
            0 => 0.0,
            budget => (self.reserved_tokens as f64 / budget as f64).min(1.0),
        }
    }
}

/// An engine that runs many sequences at once, one forward pass per step.
pub trait BatchEngine {
    /// Takes `request` into the batch as `id` when its KV-cache reservation fits now. A request
    /// that can never fit (context or budget) is an `InvalidRequest` error, never a wait.
    fn admit(&mut self, id: SeqId, request: &GenerateRequest) -> Result<Admission, EngineError>;

    /// Admits `requests` in order, as [`Self::admit`] does each, until one has no room yet or
    /// fails fatally (none after it is tried, so the queue keeps its order): one answer per
    /// request tried, in order. An engine whose batch runs elsewhere sends them all before it
    /// reads an answer: a worker process answers admits between its steps, so one round trip per
    /// request would let a burst of `n` requests wait `n` steps for their first token.
    fn admit_many(
        &mut self,
        requests: &[(SeqId, &GenerateRequest)],
    ) -> Vec<Result<Admission, EngineError>> {
        let mut answers = Vec::with_capacity(requests.len());
        for &(id, request) in requests {
            let answer = self.admit(id, request);
            let last = match &answer {
                Ok(admission) => *admission == Admission::NoRoomYet,
                Err(e) => e.kind == crate::backend::ErrorKind::DeviceFatal,
            };
            answers.push(answer);
            if last {
                break;
            }
        }
        answers
    }

    /// Runs one forward pass for every running sequence (the prefill of newly admitted ones
    /// joins, in chunks when long) and samples their next tokens. An error here fails the
    /// whole batch. An engine whose passes run elsewhere (a worker process, which steps on its
    /// own) returns the events of the passes that ended since the last call, in order: at least
    /// one pass's while sequences run.
    fn step(&mut self) -> Result<Vec<SeqEvent>, EngineError>;

    /// Drops a sequence and frees its reservation; unknown ids are ignored.
    fn cancel(&mut self, id: SeqId);

    /// The KV-cache tokens its running sequences reserve now, and its budget; read after each
    /// admit, step and cancel, so it must be cheap. Engines without a budget report zero.
    fn kv_usage(&self) -> KvUsage {
        KvUsage::default()
    }
}
