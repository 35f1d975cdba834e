//! The engine actor: one attached model on its worker's thread, serving requests one at a time.

use std::cell::RefCell;
use std::rc::Rc;

use actix::prelude::*;

use crate::backend::{Engine, GenerateOutput, TokenEvent};
use crate::errors::GenerateError;
use crate::guard::{call, drop_guarded, Failure};
use crate::messages::{DropEngine, RunGenerate, WorkerFailed};

/// The engine, shared by the worker and its engine actor (both on the worker's thread), so either
/// can drop it there and then.
pub(crate) type SharedEngine = Rc<RefCell<Option<Box<dyn Engine>>>>;

/// Serves generation requests for one engine, in mailbox order.
pub struct EngineActor {
    /// The worker this engine lives on, for error messages and failure events.
    worker: usize,
    /// The worker's incarnation, so the controller can ignore stale failures.
    incarnation: u64,
    /// The engine itself; `None` once dropped.
    engine: SharedEngine,
    /// Where a fatal failure is reported.
    failed: Recipient<WorkerFailed>,
    /// Set after a fatal failure: every later request fails at once with this reason.
    lost: Option<String>,
}

impl EngineActor {
    pub(crate) fn new(
        worker: usize,
        incarnation: u64,
        engine: SharedEngine,
        failed: Recipient<WorkerFailed>,
    ) -> Self {
        Self {
            worker,
            incarnation,
            engine,
            failed,
            lost: None,
        }
    }

    /// Runs one request on the engine, streaming tokens to `msg.stream` while its receiver lives.
    fn generate(&mut self, msg: RunGenerate) -> Result<GenerateOutput, GenerateError> {
        if let Some(reason) = &self.lost {
            return Err(self.worker_lost(reason.clone()));
        }
        let stream_closed = msg.stream.as_ref().is_some_and(|tx| tx.is_closed());
        if !msg.caller.is_alive() || stream_closed {
            return Err(GenerateError::Cancelled);
        }
        let mut slot = self.engine.borrow_mut();
        let Some(engine) = slot.as_mut() else {
            return Err(self.worker_lost("the engine was already released".into()));
        };
        let (stream, caller) = (msg.stream, msg.caller);
        let mut on_token = |token: TokenEvent| match &stream {
            Some(tx) => tx.send(token).is_ok(),
            None => caller.is_alive(),
        };
        let result = call("generating", || {
            engine.generate(&msg.request, &mut on_token)
        });
        drop(slot);
        match result {
            Ok(output) => Ok(output),
            Err(Failure::Engine(e)) => Err(GenerateError::Engine(e)),
            Err(Failure::Fatal(reason)) => {
                tracing::error!(worker = self.worker, %reason, "engine failed; worker lost");
                self.lost = Some(reason.clone());
                self.failed.do_send(WorkerFailed {
                    worker: self.worker,
                    incarnation: self.incarnation,
                    reason: reason.clone(),
                });
                Err(self.worker_lost(reason))
            }
        }
    }

    fn worker_lost(&self, reason: String) -> GenerateError {
        GenerateError::WorkerLost {
            worker: self.worker,
            reason,
        }
    }
}

impl Actor for EngineActor {
    type Context = Context<Self>;
}

impl Handler<RunGenerate> for EngineActor {
    type Result = Result<GenerateOutput, GenerateError>;

    fn handle(&mut self, msg: RunGenerate, _: &mut Context<Self>) -> Self::Result {
        self.generate(msg)
    }
}

impl Handler<DropEngine> for EngineActor {
    type Result = Result<(), String>;

    fn handle(&mut self, _: DropEngine, ctx: &mut Context<Self>) -> Self::Result {
        ctx.stop();
        let engine = self.engine.borrow_mut().take();
        drop_guarded("dropping the engine", engine)
    }
}
