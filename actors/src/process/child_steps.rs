//! A worker process's batch: admitting into it, and the steps the process runs on its own.

use super::no;
use super::Worker;
use crate::backend::{EngineError, GenerateRequest};
use crate::batch::{Admission, KvUsage, SeqEvent, SeqId};
use crate::process::protocol::{FromWorker, StepReport};
use std::time::Duration;

impl Worker {
    pub(super) fn admit(
        &mut self,
        id: SeqId,
        request: GenerateRequest,
    ) -> Result<Admission, EngineError> {
        let fault = self.fault_of(&request)?;
        let batch = self
            .engine
            .as_mut()
            .and_then(|e| e.batch())
            .ok_or_else(|| no("batching engine"))?;
        let admitted = batch.admit(id, &request)?;
        if admitted == Admission::Admitted && fault.as_deref() == Some("hang") {
            self.hang_after_first_token.push((id, false));
        }
        Ok(admitted)
    }

    /// The batching engine's KV-cache usage (zero without one), sent with each admit and step.
    pub(super) fn kv_usage(&mut self) -> KvUsage {
        let batch = self.engine.as_mut().and_then(|e| e.batch());
        batch.map(|b| b.kv_usage()).unwrap_or_default()
    }

    /// Runs one step and reports it; finished sequences leave the batch, and a failed step
    /// pauses the stepping.
    pub(super) fn step(&mut self) -> FromWorker {
        self.refused = false;
        let result = self.run_step();
        match &result {
            Ok(events) => {
                for event in events {
                    if let SeqEvent::Finished(id, _) = event {
                        self.running.remove(id);
                        self.hang_after_first_token.retain(|(seq, _)| seq != id);
                    }
                }
            }
            Err(_) => self.paused = true,
        }
        FromWorker::Stepped(StepReport {
            result,
            kv: self.kv_usage(),
            control: self.control,
        })
    }

    /// One batched step; the prefill may take long, so the step is one long beat.
    fn run_step(&mut self) -> Result<Vec<SeqEvent>, EngineError> {
        if self.hang_after_first_token.iter().any(|(_, had)| *had) {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let batch = self
            .engine
            .as_mut()
            .and_then(|e| e.batch())
            .ok_or_else(|| no("batching engine"))?;
        let events = self.beat.during(|| batch.step())?;
        for event in &events {
            if let SeqEvent::Token(id, _) = event {
                for (seq, had) in &mut self.hang_after_first_token {
                    *had |= seq == id;
                }
            }
        }
        Ok(events)
    }
}
