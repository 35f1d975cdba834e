//! Detaching: taking an engine off the books, asking its worker to release it, and reporting.

use std::future::Future;
use std::time::Instant;

use actix::prelude::*;

use super::{ControllerActor, EngineEntry};
use crate::backend::MemoryInfo;
use crate::errors::DetachError;
use crate::messages::ReleaseEngine;
use crate::reports::{DetachReport, EngineRef};

impl ControllerActor {
    /// Removes the engine `engine` names and sets its worker detaching; returns the entry and
    /// the release to await (an error when the worker has no thread to ask).
    pub(super) fn begin_detach(
        &mut self,
        engine: EngineRef,
    ) -> Result<
        (
            EngineEntry,
            impl Future<Output = Result<MemoryInfo, String>>,
        ),
        DetachError,
    > {
        let id = self.resolve(&engine).map_err(|lost| match lost {
            Some(reason) => DetachError::EngineLost {
                engine: engine.clone(),
                reason,
            },
            None => DetachError::EngineNotFound {
                engine: engine.clone(),
            },
        })?;
        let (worker, incarnation) = match self.engines.get(&id) {
            Some(entry) => (entry.worker, entry.incarnation),
            None => return Err(DetachError::EngineNotFound { engine }),
        };
        let slot = &mut self.workers[worker];
        if !slot.detach_begun(incarnation) {
            // An engine on the books is served by its worker; anything else is a worker that
            // is going down, and its failure answers for the engine.
            let reason = format!("worker {worker} is {}", slot.state());
            return Err(DetachError::WorkerFailed { worker, reason });
        }
        let release = slot.addr.clone().map(|addr| addr.send(ReleaseEngine));
        let released = async move {
            match release {
                Some(release) => release
                    .await
                    .unwrap_or_else(|_| Err("the worker's thread stopped".into())),
                None => Err("the worker has no thread".into()),
            }
        };
        let entry = self.engines.remove(&id).expect("looked up above");
        Ok((entry, released))
    }

    /// Finishes a detach once its worker answered the release: the worker is idle again (or
    /// failed), the report says what memory it has now, and waiting attaches get their turn.
    pub(super) fn finish_detach(
        &mut self,
        entry: EngineEntry,
        released: Result<MemoryInfo, String>,
        started: Instant,
        ctx: &mut Context<Self>,
    ) -> Result<DetachReport, DetachError> {
        let worker = entry.worker;
        let memory = match released {
            Ok(memory) => memory,
            Err(reason) => {
                self.worker_failed(worker, entry.incarnation, reason.clone(), ctx);
                return Err(DetachError::WorkerFailed { worker, reason });
            }
        };
        self.workers[worker].detach_done(entry.incarnation, memory.clone());
        self.stats.detaches += 1;
        let freed_bytes = memory
            .free_bytes
            .saturating_sub(entry.memory_attached.free_bytes);
        let report = DetachReport {
            engine_id: entry.id,
            name: entry.name,
            worker,
            memory_before_attach: entry.memory_before,
            memory_attached: entry.memory_attached,
            memory_after_detach: memory,
            detach_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        tracing::info!(
            engine = %report.engine_id,
            name = %report.name,
            worker,
            detach_ms = report.detach_ms,
            freed_bytes,
            "engine detached"
        );
        self.dispatch_pending(ctx);
        Ok(report)
    }
}
