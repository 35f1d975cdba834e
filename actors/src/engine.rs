//! The engine actor: one attached model on its worker's thread. An engine that batches
//! ([`Engine::batch`]) serves every request it has room for at once, one step at a time:
//! requests wait in arrival order until their KV-cache reservation fits, join the running
//! batch at the next step, and leave it as soon as they finish or their caller goes away.
//! Other engines serve requests one at a time, in mailbox order.
//!
//! The actor writes the engine's load ([`EngineLoad`]: batch size, requests waiting for room,
//! KV-cache reservation) whenever its queue or batch changes, before it answers the requests
//! that left, so the controller never counts a finished request as still running.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{mpsc::UnboundedSender, oneshot};

use crate::backend::{Engine, GenerateOutput, GenerateRequest, TokenEvent};
use crate::batch::{BatchEngine, KvUsage, SeqId};
use crate::errors::GenerateError;
use crate::guard::{call, drop_guarded, Failure};
use crate::messages::{CallerAlive, DropEngine, RunGenerate, WorkerFailed};
use crate::occupancy::{EngineLoad, LoadNow};

mod batch_step;

/// The engine, shared by the worker and its engine actor (both on the worker's thread), so either
/// can drop it there and then.
pub(crate) type SharedEngine = Rc<RefCell<Option<Box<dyn Engine>>>>;

type Reply = oneshot::Sender<Result<GenerateOutput, GenerateError>>;

/// An answer held back until the load is written (see the module's documentation).
type Answer = (Reply, Result<GenerateOutput, GenerateError>);

/// A request in the batch or waiting for room in it.
struct Sequence {
    id: SeqId,
    request: GenerateRequest,
    stream: Option<UnboundedSender<TokenEvent>>,
    caller: CallerAlive,
    reply: Reply,
}

impl Sequence {
    /// Whether anyone still waits for this sequence's tokens or output.
    fn wanted(&self) -> bool {
        let stream_closed = self.stream.as_ref().is_some_and(|tx| tx.is_closed());
        self.caller.is_alive() && !stream_closed && !self.reply.is_closed()
    }
}

/// Serves generation requests for one engine.
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
    /// Requests waiting for room in the batch, in arrival order.
    waiting: VecDeque<Sequence>,
    /// Requests in the batch.
    running: HashMap<SeqId, Sequence>,
    next_id: SeqId,
    /// A step is scheduled.
    stepping: bool,
    /// A drop asked for while requests were still being served; done once they are.
    drop_when_idle: Option<oneshot::Sender<Result<(), String>>>,
    /// What the engine holds now, read by the controller.
    load: Arc<EngineLoad>,
    /// Answers to send once the load that no longer counts their requests is written.
    outbox: Vec<Answer>,
}

impl EngineActor {
    pub(crate) fn new(
        worker: usize,
        incarnation: u64,
        engine: SharedEngine,
        failed: Recipient<WorkerFailed>,
        load: Arc<EngineLoad>,
    ) -> Self {
        Self {
            worker,
            incarnation,
            engine,
            failed,
            lost: None,
            waiting: VecDeque::new(),
            running: HashMap::new(),
            next_id: 0,
            stepping: false,
            drop_when_idle: None,
            load,
            outbox: Vec::new(),
        }
    }

    /// Writes the load of the batch now (`kv` is the engine's reservation, when it was read),
    /// then sends the answers held back.
    fn publish(&mut self, kv: Option<KvUsage>) {
        let before = self.load.now();
        self.load.set(LoadNow {
            running: self.running.len(),
            waiting_for_room: self.waiting.len(),
            kv: kv.unwrap_or(before.kv),
        });
        for (reply, result) in self.outbox.drain(..) {
            let _ = reply.send(result);
        }
    }

    /// Whether the engine serves requests through batched steps.
    fn batches(&self) -> bool {
        let mut slot = self.engine.borrow_mut();
        slot.as_mut().is_some_and(|engine| engine.batch().is_some())
    }

    /// Runs one request on the engine, streaming tokens to `msg.stream` while its receiver lives.
    fn generate(&mut self, msg: RunGenerate) -> Result<GenerateOutput, GenerateError> {
        let mut slot = self.engine.borrow_mut();
        let Some(engine) = slot.as_mut() else {
            return Err(self.worker_lost("the engine was already released".into()));
        };
        let (stream, caller) = (msg.stream, msg.caller);
        self.load.set_running(1);
        let mut on_token = |token: TokenEvent| match &stream {
            Some(tx) => tx.send(token).is_ok(),
            None => caller.is_alive(),
        };
        let result = call("generating", || {
            engine.generate(&msg.request, &mut on_token)
        });
        drop(slot);
        self.load.set_running(0);
        match result {
            Ok(output) => Ok(output),
            Err(Failure::Engine(e)) => Err(GenerateError::Engine(e)),
            Err(Failure::Fatal(reason)) => Err(self.fail(reason)),
        }
    }

    /// Marks the worker lost, reports it, and fails everything queued; returns the error.
    fn fail(&mut self, reason: String) -> GenerateError {
        tracing::error!(worker = self.worker, %reason, "engine failed; worker lost");
        self.lost = Some(reason.clone());
        self.failed.do_send(WorkerFailed {
            worker: self.worker,
            incarnation: self.incarnation,
            reason: reason.clone(),
        });
        let queued = self
            .waiting
            .drain(..)
            .chain(self.running.drain().map(|(_, s)| s));
        for seq in queued.collect::<Vec<_>>() {
            let lost = Err(self.worker_lost(reason.clone()));
            self.outbox.push((seq.reply, lost));
        }
        // Nothing is held any more: the engine is gone with its worker.
        self.publish(Some(KvUsage::default()));
        self.worker_lost(reason)
    }

    fn worker_lost(&self, reason: String) -> GenerateError {
        GenerateError::WorkerLost {
            worker: self.worker,
            reason,
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if !self.stepping {
            self.stepping = true;
            // After yielding to the thread's other tasks (replies on their way out) and to the
            // mailbox, so requests that came meanwhile join the next step; no timer involved.
            let yielded = actix::fut::wrap_future::<_, Self>(tokio::task::yield_now());
            ctx.spawn(yielded.map(|(), act, ctx| act.step(ctx)));
        }
    }

    /// Drops sequences nobody waits for, admits waiting ones while they fit, runs one step, and
    /// schedules the next while anything is left.
    fn step(&mut self, ctx: &mut Context<Self>) {
        self.stepping = false;
        let engine = self.engine.clone();
        let mut slot = engine.borrow_mut();
        let Some(batch) = slot.as_mut().and_then(|e| e.batch()) else {
            drop(slot);
            let reason = "the engine was already released".to_owned();
            let queued: Vec<Sequence> = self
                .waiting
                .drain(..)
                .chain(self.running.drain().map(|(_, s)| s))
                .collect();
            for seq in queued {
                let lost = Err(self.worker_lost(reason.clone()));
                self.outbox.push((seq.reply, lost));
            }
            self.publish(Some(KvUsage::default()));
            return self.finish_drop_if_idle(ctx);
        };
        // The load is written once the batch is made up (before its first tokens go out) and
        // again after the step.
        let outcome = self.drop_unwanted(batch).and_then(|()| self.admit(batch));
        let outcome = outcome.and_then(|()| {
            self.publish(read_kv_usage(batch));
            self.run_step(batch)
        });
        let kv = outcome.is_ok().then(|| read_kv_usage(batch)).flatten();
        drop(slot);
        match outcome {
            Ok(()) => self.publish(kv),
            Err(reason) => {
                self.fail(reason);
            }
        }
        if !self.running.is_empty() || (!self.waiting.is_empty() && self.lost.is_none()) {
            self.schedule(ctx);
        } else {
            self.finish_drop_if_idle(ctx);
        }
    }

    fn finish_drop_if_idle(&mut self, ctx: &mut Context<Self>) {
        if self.running.is_empty() && self.waiting.is_empty() {
            if let Some(reply) = self.drop_when_idle.take() {
                let _ = reply.send(self.drop_engine(ctx));
            }
        }
    }

    fn drop_engine(&mut self, ctx: &mut Context<Self>) -> Result<(), String> {
        ctx.stop();
        let engine = self.engine.borrow_mut().take();
        drop_guarded("dropping the engine", engine)
    }
}

/// The engine's KV-cache usage, or `None` when reading it panicked (the last one stands).
fn read_kv_usage(batch: &mut dyn BatchEngine) -> Option<KvUsage> {
    call("reading the KV-cache usage", || Ok(batch.kv_usage())).ok()
}

/// Keeps a fatal failure's reason; an ordinary error of a call that cannot fail is ignored.
fn fatal_only(result: Result<(), Failure>) -> Result<(), String> {
    match result {
        Err(Failure::Fatal(reason)) => Err(reason),
        _ => Ok(()),
    }
}

impl Actor for EngineActor {
    type Context = Context<Self>;
}

impl Handler<RunGenerate> for EngineActor {
    type Result = ResponseFuture<Result<GenerateOutput, GenerateError>>;

    fn handle(&mut self, msg: RunGenerate, ctx: &mut Context<Self>) -> Self::Result {
        let now = |result| -> Self::Result { Box::pin(std::future::ready(result)) };
        if let Some(reason) = &self.lost {
            return now(Err(self.worker_lost(reason.clone())));
        }
        if self.drop_when_idle.is_some() {
            return now(Err(self.worker_lost("the engine is being released".into())));
        }
        let stream_closed = msg.stream.as_ref().is_some_and(|tx| tx.is_closed());
        if !msg.caller.is_alive() || stream_closed {
            return now(Err(GenerateError::Cancelled));
        }
        if !self.batches() {
            return now(self.generate(msg));
        }
        let (reply, answer) = oneshot::channel();
        self.next_id += 1;
        self.waiting.push_back(Sequence {
            id: self.next_id,
            request: msg.request,
            stream: msg.stream,
            caller: msg.caller,
            reply,
        });
        self.load.set_waiting(self.waiting.len());
        self.schedule(ctx);
        let (worker, released) = (self.worker, "the engine was released".to_owned());
        Box::pin(async move {
            answer.await.unwrap_or(Err(GenerateError::WorkerLost {
                worker,
                reason: released,
            }))
        })
    }
}

impl Handler<DropEngine> for EngineActor {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, _: DropEngine, ctx: &mut Context<Self>) -> Self::Result {
        if self.running.is_empty() && self.waiting.is_empty() {
            return Box::pin(std::future::ready(self.drop_engine(ctx)));
        }
        // The requests sent before this drop finish first.
        let (reply, answer) = oneshot::channel();
        self.drop_when_idle = Some(reply);
        Box::pin(async move { answer.await.unwrap_or(Ok(())) })
    }
}
