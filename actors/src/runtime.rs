//! The library entry point: configuration, starting the runtime, and the [`Handle`] to use it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::backend::{
    Backend, DeviceSpec, Footprint, GenerateOutput, GenerateRequest, ModelSpec, PrewarmOptions,
    TokenEvent,
};
use crate::controller::ControllerActor;
use crate::errors::{AttachError, DetachError, GenerateError};
use crate::messages::{
    Attach, CallerAlive, Detach, Drain, Generate, GetStats, Inspect, ListEngines, ListWorkers,
    Shutdown, WaitReady,
};
use crate::reports::{AttachReport, DetachReport, EngineInfo, EngineRef, RuntimeStats, WorkerInfo};
use crate::worker::MAILBOX_CAPACITY;

/// How the runtime is set up: which workers, and how attaches and restarts behave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Groups of identical workers; each worker gets its own thread and device context.
    /// Default: one CPU worker.
    pub workers: Vec<WorkerConfig>,
    /// Attach timeout, restarts, queue bounds and worker processes: the `[runtime]` section of
    /// `serve`'s config file.
    pub options: RuntimeOptions,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: vec![WorkerConfig::default()],
            options: RuntimeOptions::default(),
        }
    }
}

/// How attaches, requests and restarts behave, and how worker processes are run. The
/// `[runtime]` section of `serve`'s config file deserializes into this type, so the keys, the
/// duration rule ([`crate::quantity::duration_text`]) and the defaults are the same everywhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeOptions {
    /// How long an attach waits for a busy worker to free up before `NoFreeWorker`.
    #[serde(with = "crate::quantity::duration_text")]
    pub attach_timeout: Duration,
    /// Restarts allowed in a row (without a successful attach in between) before a failed
    /// worker is left `failed`.
    pub max_restarts: u32,
    /// Wait before the first restart; doubled for each further failure in a row.
    #[serde(with = "crate::quantity::duration_text")]
    pub restart_backoff: Duration,
    /// Where workers run. [`Runtime::start`] runs the backend it is given; the program that
    /// builds that backend reads this (`serve` wraps its backend in a
    /// [`crate::process::ProcessBackend`] for `Process`).
    pub isolation: Isolation,
    /// A worker process that sends no heartbeat for this long is killed and restarted
    /// (see [`crate::process::WorkerCommand::heartbeat_timeout`]).
    #[serde(with = "crate::quantity::duration_text")]
    pub heartbeat_timeout: Duration,
    /// The program worker processes run; default: the current one. Not read from files.
    #[serde(skip)]
    pub worker_exe: Option<PathBuf>,
    /// Requests that may wait on each engine outside its running batch (being encoded, queued,
    /// or waiting for KV-cache room: [`crate::EngineInfo::requests_waiting`]); one more is
    /// refused at once with [`GenerateError::QueueFull`] (an API answers 503 + `Retry-After`).
    pub max_waiting_requests: usize,
    /// Attaches that may wait for a busy worker; one more is refused at once with
    /// [`AttachError::TooManyWaiting`].
    pub max_waiting_attaches: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            attach_timeout: Duration::from_secs(10),
            max_restarts: 3,
            restart_backoff: Duration::from_millis(500),
            isolation: Isolation::Process,
            heartbeat_timeout: Duration::from_secs(30),
            worker_exe: None,
            max_waiting_requests: 256,
            max_waiting_attaches: 64,
        }
    }
}

/// Where workers run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Each worker in its own process: a crash, abort or device fault costs only that worker.
    #[default]
    Process,
    /// Each worker on a thread of this process.
    Thread,
}

/// `count` identical workers on one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub device: DeviceSpec,
    #[serde(default = "one")]
    pub count: usize,
    #[serde(default)]
    pub prewarm: PrewarmOptions,
}

fn one() -> usize {
    1
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            device: DeviceSpec::Cpu,
            count: 1,
            prewarm: PrewarmOptions::default(),
        }
    }
}

/// Starts runtimes.
pub struct Runtime;

impl Runtime {
    /// Starts the controller (which starts and prewarms every worker on its own thread) in the
    /// current actix system. Call it from inside a running `actix_rt::System`.
    pub fn start(config: RuntimeConfig, backend: Arc<dyn Backend>) -> Handle {
        // A large mailbox from the first message on, so requests are queued when they are sent.
        let controller = ControllerActor::create(|ctx| {
            ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
            ControllerActor::new(config, backend)
        });
        Handle {
            controller,
            system: None,
        }
    }

    /// Starts the runtime in its own thread with its own actix system, for programs that do
    /// not run one (a plain tokio program). [`Handle::shutdown`] stops that system too.
    pub fn start_in_background(config: RuntimeConfig, backend: Arc<dyn Backend>) -> Handle {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("wc-controller".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(async move {
                    let mut handle = Runtime::start(config, backend);
                    handle.system = Some(actix_rt::System::current());
                    let _ = tx.send(handle);
                });
                let _ = system.run();
            })
            .expect("spawning the runtime's thread");
        rx.recv()
            .expect("the runtime's thread starts the controller")
    }
}

/// A cheap, cloneable handle to a running runtime, usable from any thread or async runtime.
#[derive(Clone)]
pub struct Handle {
    controller: Addr<ControllerActor>,
    /// The system started by [`Runtime::start_in_background`], stopped on shutdown.
    system: Option<actix_rt::System>,
}

/// The runtime is not running any more (it was shut down or its system stopped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("the runtime is not running")]
pub struct RuntimeStopped;

/// A streamed generation: tokens as they are made, then the whole output.
pub struct GenerateStream {
    /// Each token as it is made; ends when generation ends. Dropping it cancels generation.
    pub tokens: mpsc::UnboundedReceiver<TokenEvent>,
    /// The final output (already requested: tokens flow whether or not this is polled).
    pub output: Pin<Box<dyn Future<Output = Result<GenerateOutput, GenerateError>> + Send>>,
}

fn stopped(e: MailboxError) -> String {
    format!("the controller is not running ({e})")
}

impl Handle {
    /// Attaches a model. The request is queued when this is called; await the report.
    pub fn attach(
        &self,
        request: Attach,
    ) -> impl Future<Output = Result<AttachReport, AttachError>> + Send + 'static {
        let reply = self.controller.send(request);
        async move {
            reply
                .await
                .unwrap_or_else(|e| Err(AttachError::Unavailable { reason: stopped(e) }))
        }
    }

    /// Checks a model without loading it (see [`Inspect`]): its footprint, or why it cannot load.
    pub fn inspect(
        &self,
        model: ModelSpec,
    ) -> impl Future<Output = Result<Footprint, AttachError>> + Send + 'static {
        let reply = self.controller.send(Inspect { model });
        async move {
            reply
                .await
                .unwrap_or_else(|e| Err(AttachError::Unavailable { reason: stopped(e) }))
        }
    }

    /// Detaches an engine by id or name.
    pub fn detach(
        &self,
        engine: impl Into<EngineRef>,
    ) -> impl Future<Output = Result<DetachReport, DetachError>> + Send + 'static {
        let reply = self.controller.send(Detach {
            engine: engine.into(),
        });
        async move {
            reply
                .await
                .unwrap_or_else(|e| Err(DetachError::Unavailable { reason: stopped(e) }))
        }
    }

    /// Generates with an engine. Requests are queued in the order of these calls, and each
    /// engine serves its queue in that order.
    pub fn generate(
        &self,
        engine: impl Into<EngineRef>,
        request: GenerateRequest,
    ) -> impl Future<Output = Result<GenerateOutput, GenerateError>> + Send + 'static {
        self.send_generate(engine.into(), request, None)
    }

    /// Generates with an engine, streaming tokens as they are made.
    pub fn generate_stream(
        &self,
        engine: impl Into<EngineRef>,
        request: GenerateRequest,
    ) -> GenerateStream {
        let (tx, tokens) = mpsc::unbounded_channel();
        let output = Box::pin(self.send_generate(engine.into(), request, Some(tx)));
        GenerateStream { tokens, output }
    }

    fn send_generate(
        &self,
        engine: EngineRef,
        request: GenerateRequest,
        stream: Option<mpsc::UnboundedSender<TokenEvent>>,
    ) -> impl Future<Output = Result<GenerateOutput, GenerateError>> + Send + 'static {
        // Held until the answer arrives: dropping this future (a client that went away) lets
        // the engine skip the request, or stop it, instead of running it for nobody.
        let caller = Arc::new(());
        let reply = self.controller.send(Generate {
            engine,
            request,
            stream,
            caller: CallerAlive::tied_to(&caller),
        });
        async move {
            let answer = reply
                .await
                .unwrap_or_else(|e| Err(GenerateError::Unavailable { reason: stopped(e) }));
            drop(caller);
            answer
        }
    }

    /// Every worker with its state, prewarm report, memory and failures.
    pub async fn list_workers(&self) -> Result<Vec<WorkerInfo>, RuntimeStopped> {
        self.controller
            .send(ListWorkers)
            .await
            .map_err(|_| RuntimeStopped)
    }

    /// Every attached engine with its request counters.
    pub async fn list_engines(&self) -> Result<Vec<EngineInfo>, RuntimeStopped> {
        self.controller
            .send(ListEngines)
            .await
            .map_err(|_| RuntimeStopped)
    }

    /// Runtime-wide counters.
    pub async fn stats(&self) -> Result<RuntimeStats, RuntimeStopped> {
        self.controller
            .send(GetStats)
            .await
            .map_err(|_| RuntimeStopped)
    }

    /// Waits until every worker has prewarmed (or failed for good); returns them.
    pub async fn wait_ready(&self) -> Result<Vec<WorkerInfo>, RuntimeStopped> {
        self.controller
            .send(WaitReady)
            .await
            .map_err(|_| RuntimeStopped)
    }

    /// Stops taking attaches ([`Drain`]): those waiting for a worker and every new one are
    /// answered `ShuttingDown`, while attached engines go on serving.
    pub async fn drain(&self) {
        let _ = self.controller.send(Drain).await;
    }

    /// Detaches every engine (after their queued requests), stops every worker's thread, and
    /// stops the runtime's own system if it has one. Safe to call more than once.
    pub async fn shutdown(&self) {
        let _ = self.controller.send(Shutdown).await;
        if let Some(system) = &self.system {
            system.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_from_json_with_defaults_and_text_durations() {
        let config: RuntimeConfig = serde_json::from_str(
            r#"{"workers": [{"device": "cpu", "count": 2}],
                "options": {"attach_timeout": "1.5s", "restart_backoff": 0.25,
                            "isolation": "thread"}}"#,
        )
        .unwrap();
        assert_eq!(config.workers[0].count, 2);
        assert_eq!(config.workers[0].prewarm, PrewarmOptions::default());
        let options = &config.options;
        assert_eq!(options.attach_timeout, Duration::from_millis(1500));
        assert_eq!(options.restart_backoff, Duration::from_millis(250));
        assert_eq!(options.isolation, Isolation::Thread);
        assert_eq!(options.max_restarts, RuntimeOptions::default().max_restarts);
        let back: RuntimeConfig =
            serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn an_empty_config_is_one_cpu_worker_and_unknown_keys_are_refused() {
        let config: RuntimeConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, RuntimeConfig::default());
        assert_eq!(config.workers, vec![WorkerConfig::default()]);
        let err = serde_json::from_str::<RuntimeConfig>(r#"{"options": {"atach_timeout": 1}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `atach_timeout`"), "{err}");
    }
}
