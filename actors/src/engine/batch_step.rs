//! One step of a batching engine as its actor drives it: requests no one waits for leave,
//! waiting requests are admitted in arrival order while they fit, and the batch runs one pass
//! whose tokens and finished requests are delivered.

use super::{fatal_only, EngineActor, Sequence};
use crate::backend::{EngineError, ErrorKind, GenerateRequest};
use crate::batch::{Admission, BatchEngine, SeqEvent, SeqId};
use crate::errors::GenerateError;
use crate::guard::{call, Failure};

impl EngineActor {
    /// Cancelled and disconnected requests leave the queue and the batch, freeing their room.
    pub(super) fn drop_unwanted(&mut self, batch: &mut dyn BatchEngine) -> Result<(), String> {
        self.waiting.retain(|seq| seq.wanted());
        let gone: Vec<SeqId> = self
            .running
            .values()
            .filter(|seq| !seq.wanted())
            .map(|seq| seq.id)
            .collect();
        for id in gone {
            if let Some(seq) = self.running.remove(&id) {
                self.outbox.push((seq.reply, Err(GenerateError::Cancelled)));
            }
            fatal_only(call("cancelling", || {
                batch.cancel(id);
                Ok(())
            }))?;
        }
        Ok(())
    }

    /// Admits waiting requests in order while the engine has room for them, all in one
    /// [`BatchEngine::admit_many`] (one round trip to a worker process, not one per request).
    pub(super) fn admit(&mut self, batch: &mut dyn BatchEngine) -> Result<(), String> {
        loop {
            let requests: Vec<(SeqId, &GenerateRequest)> = self
                .waiting
                .iter()
                .map(|seq| (seq.id, &seq.request))
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            let answers = call("admitting requests", || Ok(batch.admit_many(&requests)))
                .map_err(|f| f.into_error().message)?;
            let tried: Vec<Sequence> = self.waiting.drain(..answers.len()).collect();
            // Requests behind a refused one were answered "no room" because of it: try again.
            let mut again = false;
            let mut still_waiting = Vec::new();
            for (seq, answer) in tried.into_iter().zip(answers) {
                match call("admitting a request", || answer) {
                    Ok(Admission::Admitted) => {
                        self.running.insert(seq.id, seq);
                    }
                    Ok(Admission::NoRoomYet) if self.running.is_empty() && !again => {
                        // Nothing will free room: refuse rather than wait for ever.
                        let refused = Err(GenerateError::Engine(EngineError::new(
                            ErrorKind::InvalidRequest,
                            "the request does not fit the engine's KV-cache budget",
                        )));
                        self.outbox.push((seq.reply, refused));
                        again = true;
                    }
                    Ok(Admission::NoRoomYet) => still_waiting.push(seq),
                    Err(Failure::Engine(e)) => {
                        self.outbox.push((seq.reply, Err(GenerateError::Engine(e))));
                    }
                    Err(Failure::Fatal(reason)) => {
                        still_waiting.push(seq);
                        for seq in still_waiting.into_iter().rev() {
                            self.waiting.push_front(seq);
                        }
                        return Err(reason);
                    }
                }
            }
            for seq in still_waiting.into_iter().rev() {
                self.waiting.push_front(seq);
            }
            if !again {
                return Ok(());
            }
        }
    }

    /// One forward pass for the batch; tokens go to their streams, outputs to their callers.
    pub(super) fn run_step(&mut self, batch: &mut dyn BatchEngine) -> Result<(), String> {
        if self.running.is_empty() {
            return Ok(());
        }
        let events = match call("generating", || batch.step()) {
            Ok(events) => events,
            Err(Failure::Fatal(reason)) => return Err(reason),
            Err(Failure::Engine(e)) => {
                // The pass failed for every sequence in it; the worker itself is fine.
                for (id, seq) in self.running.drain() {
                    self.outbox
                        .push((seq.reply, Err(GenerateError::Engine(e.clone()))));
                    fatal_only(call("cancelling", || {
                        batch.cancel(id);
                        Ok(())
                    }))?;
                }
                return Ok(());
            }
        };
        for event in events {
            match event {
                SeqEvent::Token(id, token) => {
                    // A closed stream is noticed, and its sequence dropped, at the next step.
                    if let Some(tx) = self.running.get(&id).and_then(|s| s.stream.as_ref()) {
                        let _ = tx.send(token);
                    }
                }
                SeqEvent::Finished(id, result) => {
                    if let Some(seq) = self.running.remove(&id) {
                        self.outbox
                            .push((seq.reply, result.map_err(GenerateError::Engine)));
                    }
                }
            }
        }
        Ok(())
    }
}
