//! The worker actor: owns one prewarmed device on its own thread and loads engines onto it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use crate::backend::{Backend, DeviceSpec, MemoryInfo, PrewarmOptions, WarmEngine, WorkerDevice};
use crate::engine::{EngineActor, SharedEngine};
use crate::errors::AttachError;
use crate::guard::{call, drop_guarded, Failure};
use crate::messages::{
    DropEngine, LoadEngine, LoadFailed, Loaded, ReleaseEngine, WorkerFailed, WorkerReady,
};
use crate::occupancy::EngineLoad;
use crate::timeline::Anchor;

/// How often an idle worker checks that its device (or worker process) is still there.
const HEALTH_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Mailbox size for workers and engines: large, so that queued requests are never refused.
pub(crate) const MAILBOX_CAPACITY: usize = 1 << 16;

/// Where a worker reports what happened to it.
#[derive(Clone)]
pub(crate) struct WorkerEvents {
    pub ready: Recipient<WorkerReady>,
    pub failed: Recipient<WorkerFailed>,
}

/// One device context on its own thread. Created by the controller inside a fresh arbiter; the
/// device is opened (prewarmed) when the actor starts, on that thread, and never leaves it.
pub struct WorkerActor {
    /// Index of this worker in the controller's list.
    index: usize,
    /// Which start of this worker this is (counts up on restarts).
    incarnation: u64,
    /// The device to open.
    device_spec: DeviceSpec,
    /// How to prewarm it.
    options: PrewarmOptions,
    /// Opens the device.
    backend: Arc<dyn Backend>,
    /// Where events go.
    events: WorkerEvents,
    /// The open device; `None` before prewarm and after a failure.
    device: Option<Box<dyn WorkerDevice>>,
    /// The attached engine, shared with its engine actor.
    engine: SharedEngine,
    /// The attached engine's actor.
    engine_addr: Option<Addr<EngineActor>>,
}

impl WorkerActor {
    pub(crate) fn new(
        index: usize,
        incarnation: u64,
        device_spec: DeviceSpec,
        options: PrewarmOptions,
        backend: Arc<dyn Backend>,
        events: WorkerEvents,
    ) -> Self {
        Self {
            index,
            incarnation,
            device_spec,
            options,
            backend,
            events,
            device: None,
            engine: Rc::new(RefCell::new(None)),
            engine_addr: None,
        }
    }

    /// Opens and prewarms the device, then reports `WorkerReady` or `WorkerFailed`.
    fn prewarm(&mut self) {
        let (backend, spec, options) = (&self.backend, &self.device_spec, &self.options);
        let opened = call("opening the device", || backend.open_device(spec, options)).and_then(
            |(device, report)| {
                let memory = call("reading device memory", || device.memory())?;
                Ok((device, report, memory))
            },
        );
        match opened {
            Ok((device, report, memory)) => {
                let steps = report
                    .steps
                    .iter()
                    .map(|(name, ms)| format!("{name}={ms:.1}ms"))
                    .collect::<Vec<_>>()
                    .join(" ");
                tracing::info!(
                    worker = self.index,
                    device = %self.device_spec,
                    total_ms = report.total_ms,
                    steps = %steps,
                    free_bytes = memory.free_bytes,
                    "worker prewarmed"
                );
                self.device = Some(device);
                self.events.ready.do_send(WorkerReady {
                    worker: self.index,
                    incarnation: self.incarnation,
                    prewarm: report,
                    memory,
                });
            }
            Err(failure) => {
                let reason = match failure {
                    Failure::Fatal(reason) => reason,
                    Failure::Engine(e) => format!("opening the device failed: {e}"),
                };
                self.fail(reason);
            }
        }
    }

    /// Gives up the device and tells the controller, which stops this thread and restarts it.
    fn fail(&mut self, reason: String) {
        tracing::error!(worker = self.index, %reason, "worker failed");
        self.events.failed.do_send(WorkerFailed {
            worker: self.index,
            incarnation: self.incarnation,
            reason,
        });
        // Whatever is left is dropped when the controller stops this arbiter.
        self.device = None;
    }

    /// Loads a model, warms it up to a first token and starts its engine actor on this thread.
    fn load(&mut self, msg: LoadEngine) -> Result<Loaded, Failure> {
        if self.engine.borrow().is_some() {
            return Err(Failure::Fatal(
                "asked to load while already holding an engine".into(),
            ));
        }
        let device = self
            .device
            .as_mut()
            .ok_or_else(|| Failure::Fatal("the worker has no open device".into()))?;
        let mut timeline = msg.timeline;
        let WarmEngine {
            mut engine,
            bytes_moved,
            device_bytes,
            memory_before,
            memory_attached,
            source,
        } = call("loading the model", || {
            device.attach_from(&msg.spec, &msg.handoff, &msg.source, &mut timeline)
        })?;
        // Here, not where the engine ran: a worker process's answer is counted in.
        timeline.mark(Anchor::FirstToken);
        tracing::debug!(
            worker = self.index,
            engine = %msg.engine_id,
            bytes_moved,
            "engine loaded and warmed up"
        );
        let encoder = call("asking for the prompt encoder", || {
            Ok(engine.prompt_encoder())
        })?;
        let kv = call("reading the KV-cache budget", || {
            Ok(engine.batch().map(|b| b.kv_usage()).unwrap_or_default())
        })?;
        let load = Arc::new(EngineLoad::new(kv));

        *self.engine.borrow_mut() = Some(engine);
        let (worker, incarnation, shared) = (self.index, self.incarnation, self.engine.clone());
        let (failed, shared_load) = (self.events.failed.clone(), load.clone());
        let addr = EngineActor::create(move |ctx| {
            ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
            EngineActor::new(worker, incarnation, shared, failed, shared_load)
        });
        self.engine_addr = Some(addr.clone());
        Ok(Loaded {
            engine: addr,
            encoder,
            load,
            timeline,
            bytes_moved,
            device_bytes,
            memory_before,
            memory_attached,
            source,
        })
    }

    /// Fails the worker when its device reports that it is gone.
    fn poll_health(&mut self) {
        let Some(device) = self.device.as_ref() else {
            return;
        };
        if let Err(failure) = call("checking the device", || device.check_alive()) {
            let reason = match failure {
                Failure::Fatal(reason) => reason,
                Failure::Engine(e) => e.to_string(),
            };
            self.fail(reason);
        }
    }

    /// The device's memory now, or why it cannot be read.
    fn memory_now(&self) -> Result<MemoryInfo, String> {
        let device = self
            .device
            .as_ref()
            .ok_or_else(|| "the worker has no open device".to_owned())?;
        call("reading device memory", || device.memory()).map_err(|failure| match failure {
            Failure::Fatal(reason) => reason,
            Failure::Engine(e) => format!("reading device memory failed: {e}"),
        })
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.prewarm();
        // Between messages, make sure what holds the device (a worker process) is still there.
        ctx.run_interval(HEALTH_POLL, |act, _| act.poll_health());
    }
}

impl Handler<LoadEngine> for WorkerActor {
    type Result = Result<Loaded, LoadFailed>;

    fn handle(&mut self, msg: LoadEngine, _: &mut Context<Self>) -> Self::Result {
        match self.load(msg) {
            Ok(loaded) => Ok(loaded),
            Err(Failure::Engine(e)) => Err(LoadFailed {
                error: AttachError::Load(e),
                memory: self.memory_now().ok().map(Box::new),
            }),
            Err(Failure::Fatal(reason)) => {
                self.fail(reason.clone());
                Err(LoadFailed {
                    error: AttachError::WorkerFailed {
                        worker: self.index,
                        reason,
                    },
                    memory: None,
                })
            }
        }
    }
}

impl Handler<ReleaseEngine> for WorkerActor {
    type Result = ResponseActFuture<Self, Result<MemoryInfo, String>>;

    fn handle(&mut self, _: ReleaseEngine, _: &mut Context<Self>) -> Self::Result {
        let started = Instant::now();
        let engine_addr = self.engine_addr.take();
        let dropped = async move {
            match engine_addr {
                // Queued behind the requests already sent to the engine, so they finish first.
                Some(addr) => addr.send(DropEngine).await.unwrap_or(Ok(())),
                None => Ok(()),
            }
        };
        Box::pin(dropped.into_actor(self).map(move |dropped, act, _| {
            // If the engine actor was already gone, drop the engine here.
            let leftover = act.engine.borrow_mut().take();
            let result = dropped
                .and_then(|()| drop_guarded("dropping the engine", leftover))
                .and_then(|()| act.memory_now());
            match &result {
                Ok(memory) => tracing::debug!(
                    worker = act.index,
                    free_bytes = memory.free_bytes,
                    release_ms = started.elapsed().as_secs_f64() * 1e3,
                    "engine released"
                ),
                Err(reason) => act.fail(reason.clone()),
            }
            result
        }))
    }
}
