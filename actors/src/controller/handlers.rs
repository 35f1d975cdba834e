//! The controller's message handlers: each a few lines around a method of the controller.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{ControllerActor, PendingAttach};
use crate::backend::{
    Backend, EngineError, ErrorKind, Footprint, GenerateOutput, ModelSpec, Prompt, PromptEncoder,
};
use crate::errors::{AttachError, DetachError, GenerateError};
use crate::guard::{call, Failure};
use crate::messages::{
    Attach, Detach, Drain, Generate, GetStats, Inspect, ListEngines, ListWorkers, RunGenerate,
    Shutdown, WaitReady, WorkerFailed, WorkerReady,
};
use crate::reports::{DetachReport, EngineInfo, WorkerInfo};
use crate::timeline::Timeline;

impl Actor for ControllerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for index in 0..self.workers.len() {
            self.spawn_worker(index, ctx);
        }
        self.answer_ready_waiters();
    }
}

impl Handler<Attach> for ControllerActor {
    type Result = ResponseFuture<Result<crate::reports::AttachReport, AttachError>>;

    fn handle(&mut self, msg: Attach, ctx: &mut Context<Self>) -> Self::Result {
        let timeline = Timeline::starting_now();
        let received = Instant::now();
        let (engine_id, name) = match self.accept_attach(msg.name) {
            Ok(accepted) => accepted,
            Err(error) => {
                self.stats.attaches_failed += 1;
                return Box::pin(async move { Err(error) });
            }
        };
        let (reply, replied) = oneshot::channel();
        let inspect = inspect_off_thread(self.backend.clone(), msg.model.clone(), Check::Headers);
        let (model, worker, device, caller) = (msg.model, msg.worker, msg.device, msg.caller);
        ctx.spawn(
            inspect
                .into_actor(self)
                .map(move |footprint, act, ctx| match footprint {
                    Ok(footprint) => act.enqueue_attach(
                        PendingAttach {
                            engine_id,
                            name,
                            spec: model,
                            footprint,
                            worker,
                            device,
                            timeline,
                            received,
                            reply,
                            caller,
                            retried: false,
                        },
                        ctx,
                    ),
                    Err(e) => act.refuse_attach(&name, &model.model, reply, AttachError::Load(e)),
                }),
        );
        Box::pin(async move {
            replied.await.unwrap_or_else(|_| {
                Err(AttachError::Unavailable {
                    reason: "the controller stopped before answering".into(),
                })
            })
        })
    }
}

/// How much of a model an inspection checks.
#[derive(Clone, Copy)]
enum Check {
    /// The headers ([`Backend::inspect`]): every attach, on its way to a worker.
    Headers,
    /// Every check short of a device ([`Backend::preflight`]): an [`Inspect`] request.
    Preflight,
}

/// Runs the backend's inspection on a blocking thread: it reads files, and a panic in it is a
/// typed failure, not a dead controller.
fn inspect_off_thread(
    backend: Arc<dyn Backend>,
    spec: ModelSpec,
    check: Check,
) -> impl Future<Output = Result<Footprint, EngineError>> {
    let inspect = actix_rt::task::spawn_blocking(move || {
        call("inspecting the model", || match check {
            Check::Headers => backend.inspect(&spec),
            Check::Preflight => backend.preflight(&spec),
        })
    });
    async move {
        match inspect.await {
            Ok(Ok(footprint)) => Ok(footprint),
            Ok(Err(Failure::Engine(e))) => Err(e),
            Ok(Err(Failure::Fatal(reason))) => Err(EngineError::new(ErrorKind::Internal, reason)),
            Err(e) => Err(EngineError::new(
                ErrorKind::Internal,
                format!("inspecting the model did not finish: {e}"),
            )),
        }
    }
}

/// Runs a prompt encoder on a blocking thread; a panic in it is an internal error.
async fn encode_off_thread(
    encoder: Arc<dyn PromptEncoder>,
    prompt: &Prompt,
) -> Result<Vec<u32>, EngineError> {
    let prompt = prompt.clone();
    match actix_rt::task::spawn_blocking(move || encoder.encode(&prompt)).await {
        Ok(encoded) => encoded,
        Err(e) => Err(EngineError::new(
            ErrorKind::Internal,
            format!("encoding the prompt failed: {e}"),
        )),
    }
}

impl Handler<Inspect> for ControllerActor {
    type Result = ResponseFuture<Result<Footprint, AttachError>>;

    fn handle(&mut self, msg: Inspect, _: &mut Context<Self>) -> Self::Result {
        if self.shutting_down {
            return Box::pin(async { Err(AttachError::ShuttingDown) });
        }
        let inspect = inspect_off_thread(self.backend.clone(), msg.model, Check::Preflight);
        Box::pin(async move { inspect.await.map_err(AttachError::Load) })
    }
}

impl Handler<Detach> for ControllerActor {
    type Result = ResponseActFuture<Self, Result<DetachReport, DetachError>>;

    fn handle(&mut self, msg: Detach, _: &mut Context<Self>) -> Self::Result {
        let started = Instant::now();
        match self.begin_detach(msg.engine) {
            Ok((entry, released)) => {
                Box::pin(released.into_actor(self).map(move |released, act, ctx| {
                    act.finish_detach(entry, released, started, ctx)
                }))
            }
            Err(error) => Box::pin(fut::ready(Err(error))),
        }
    }
}

impl Handler<Generate> for ControllerActor {
    type Result = ResponseActFuture<Self, Result<GenerateOutput, GenerateError>>;

    fn handle(&mut self, msg: Generate, _: &mut Context<Self>) -> Self::Result {
        self.stats.requests_total += 1;
        if self.shutting_down {
            self.stats.requests_failed += 1;
            return Box::pin(fut::ready(Err(GenerateError::ShuttingDown)));
        }
        let entry = match self.resolve(&msg.engine) {
            Ok(id) => self.engines.get_mut(&id),
            Err(lost) => {
                self.stats.requests_failed += 1;
                let engine = msg.engine;
                let error = match lost {
                    Some(reason) => GenerateError::EngineLost { engine, reason },
                    None => GenerateError::EngineNotFound { engine },
                };
                return Box::pin(fut::ready(Err(error)));
            }
        };
        let Some(entry) = entry else {
            self.stats.requests_failed += 1;
            let engine = msg.engine;
            return Box::pin(fut::ready(Err(GenerateError::EngineNotFound { engine })));
        };
        let waiting = entry.requests().waiting;
        if entry.in_flight > 0 && waiting >= self.config.options.max_waiting_requests {
            self.stats.requests_failed += 1;
            let engine = msg.engine;
            return Box::pin(fut::ready(Err(GenerateError::QueueFull {
                engine,
                waiting,
            })));
        }
        entry.in_flight += 1;
        entry.total_requests += 1;
        entry.last_used = Instant::now();
        let (id, worker, incarnation) = (entry.id, entry.worker, entry.incarnation);
        let encoder = entry
            .encoder
            .clone()
            .filter(|_| !matches!(msg.request.prompt, Prompt::Ids(_)));
        let run: Pin<Box<dyn Future<Output = Result<_, MailboxError>>>> = match encoder {
            // Token ids are sent now, in the order requests arrived: the engine serves them in
            // this order.
            None => Box::pin(entry.addr.send(RunGenerate {
                request: msg.request,
                stream: msg.stream,
                caller: msg.caller,
            })),
            // Text and chats are encoded first, on a blocking thread, then queued.
            Some(encoder) => {
                let addr = entry.addr.clone();
                Box::pin(async move {
                    let mut request = msg.request;
                    match encode_off_thread(encoder, &request.prompt).await {
                        Ok(ids) => request.prompt = Prompt::Ids(ids),
                        // The worker process ended under the encode (one that ran past its
                        // timeout ends it): the worker is lost, and restarted.
                        Err(e) if e.kind == ErrorKind::DeviceFatal => {
                            return Ok(Err(GenerateError::WorkerLost {
                                worker,
                                reason: e.message,
                            }))
                        }
                        Err(e) => return Ok(Err(GenerateError::Engine(e))),
                    }
                    addr.send(RunGenerate {
                        request,
                        stream: msg.stream,
                        caller: msg.caller,
                    })
                    .await
                })
            }
        };
        Box::pin(run.into_actor(self).map(move |result, act, ctx| {
            let result = result.unwrap_or_else(|_| {
                let reason = "the worker's thread stopped".to_owned();
                act.worker_failed(worker, incarnation, reason.clone(), ctx);
                Err(GenerateError::WorkerLost { worker, reason })
            });
            let tokens = result.as_ref().map_or(0, |o| o.new_tokens.len() as u64);
            if let Some(entry) = act.engines.get_mut(&id) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
                entry.total_tokens += tokens;
                entry.last_used = Instant::now();
            }
            act.stats.tokens_total += tokens;
            if result.is_err() {
                act.stats.requests_failed += 1;
            }
            result
        }))
    }
}

impl Handler<ListWorkers> for ControllerActor {
    type Result = Vec<WorkerInfo>;

    fn handle(&mut self, _: ListWorkers, _: &mut Context<Self>) -> Self::Result {
        self.worker_infos()
    }
}

impl Handler<ListEngines> for ControllerActor {
    type Result = Vec<EngineInfo>;

    fn handle(&mut self, _: ListEngines, _: &mut Context<Self>) -> Self::Result {
        self.engine_infos()
    }
}

impl Handler<GetStats> for ControllerActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.runtime_stats())
    }
}

impl Handler<WaitReady> for ControllerActor {
    type Result = ResponseFuture<Vec<WorkerInfo>>;

    fn handle(&mut self, _: WaitReady, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.ready_waiters.push(tx);
        self.answer_ready_waiters();
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}

impl Handler<WorkerReady> for ControllerActor {
    type Result = ();

    fn handle(&mut self, msg: WorkerReady, ctx: &mut Context<Self>) {
        self.worker_ready(msg.worker, msg.incarnation, msg.prewarm, msg.memory, ctx);
    }
}

impl Handler<WorkerFailed> for ControllerActor {
    type Result = ();

    fn handle(&mut self, msg: WorkerFailed, ctx: &mut Context<Self>) {
        self.worker_failed(msg.worker, msg.incarnation, msg.reason, ctx);
    }
}

impl Handler<Drain> for ControllerActor {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) {
        self.refusing_attaches = true;
        self.dispatch_pending(ctx);
    }
}

impl Handler<Shutdown> for ControllerActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        self.refusing_attaches = true;
        self.dispatch_pending(ctx);
        let me = ctx.address();
        let engines: Vec<_> = self.engines.keys().copied().collect();
        let detach_all = async move {
            for id in engines {
                let _ = me.send(Detach { engine: id.into() }).await;
            }
        };
        Box::pin(detach_all.into_actor(self).then(|(), act, _| {
            let arbiters: Vec<_> = act
                .workers
                .iter_mut()
                .filter_map(|slot| slot.stopped())
                .collect();
            for arbiter in &arbiters {
                arbiter.stop();
            }
            act.answer_ready_waiters();
            tracing::info!(workers = arbiters.len(), "runtime shut down");
            let joined = actix_rt::task::spawn_blocking(move || {
                for arbiter in arbiters {
                    let _ = arbiter.join();
                }
            });
            async move {
                let _ = tokio::time::timeout(super::JOIN_TIMEOUT, joined).await;
            }
            .into_actor(act)
        }))
    }
}
