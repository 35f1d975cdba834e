//! The worker process's side: opens one device and serves its controller over stdin/stdout.
//!
//! The main thread runs the device and the engine, as a worker thread does in thread mode. A
//! reader thread takes frames off stdin (a `Cancel` reaches a running generation; an `Encode`
//! runs beside it, on a small pool with a timeout: [`encode`]), and a heartbeat thread sends
//! `Alive` while the main thread keeps beating: between messages, per token, and for the whole
//! of a prewarm, a load or a prefill.
//!
//! A batching engine's steps are not asked for: while its batch has sequences the main thread
//! handles every message waiting (admits, cancels), runs one step and sends its events, and
//! again, so decoding costs no round trip to the controller. A step that fails pauses the loop
//! until the next admit (the controller cancels the failed batch's sequences).

use std::collections::{HashSet, VecDeque};
use std::io::{BufReader, Write};
use std::os::fd::AsFd;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::frame::{read_frame, write_frame};
use super::liveness::{die_with_parent, Beat};
use super::protocol::{AttachedEngine, FromWorker, ToWorker};
use crate::backend::{
    Backend, Engine, EngineError, ErrorKind, ModelSpec, PromptEncoder, WarmEngine, WorkerDevice,
};
use crate::batch::{Admission, SeqId};
use crate::timeline::Timeline;

type Output = Arc<Mutex<Box<dyn Write + Send>>>;

fn send(out: &Output, message: &FromWorker) {
    let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
    if write_frame(&mut *out, message).is_err() {
        // The controller is gone: nothing is left to serve.
        std::process::exit(0);
    }
}

/// Serves one worker for the controller that started this process, on stdin and stdout, until
/// stdin closes. Logs must go to stderr: stdout carries only frames.
pub fn serve_worker(backend: Arc<dyn Backend>) {
    die_with_parent();
    // Frames go straight to the pipe (one write each), not through stdout's line buffer.
    let stdout = std::io::stdout().as_fd().try_clone_to_owned();
    let out: Output = match stdout {
        Ok(fd) => Arc::new(Mutex::new(Box::new(std::fs::File::from(fd)))),
        Err(_) => Arc::new(Mutex::new(Box::new(std::io::stdout()))),
    };
    let out_for_beats = out.clone();
    let beat = Beat::start(move || send(&out_for_beats, &FromWorker::Alive));
    let encoder: Arc<Mutex<Option<Arc<dyn PromptEncoder>>>> = Arc::default();
    let (tx, rx) = mpsc::channel::<ToWorker>();
    {
        let (out, encoder) = (out.clone(), encoder.clone());
        let replies = out.clone();
        let encoders = encode::Encoders::start(
            encode::encode_timeout(),
            Arc::new(move |id, ids| send(&replies, &FromWorker::Encoded { id, ids })),
            || {
                // The encode's thread cannot be stopped: the process ends, and is restarted.
                eprintln!("a prompt encode ran past its timeout: this worker process ends");
                std::process::exit(EXIT_ENCODE_TIMEOUT);
            },
        );
        std::thread::spawn(move || {
            let mut input = BufReader::new(std::io::stdin());
            while let Ok(Some(message)) = read_frame::<ToWorker>(&mut input) {
                match message {
                    ToWorker::Encode { id, prompt } => {
                        let current = encoder.lock().map(|e| e.clone()).unwrap_or(None);
                        encoders.submit(id, prompt, current);
                    }
                    other => {
                        if tx.send(other).is_err() {
                            break;
                        }
                    }
                }
            }
            // stdin closed: the controller let go of this worker (or died).
            std::process::exit(0);
        });
    }
    Worker::new(backend, out, beat, encoder).run(&rx);
}

/// The exit status of a worker process whose prompt encode ran past its timeout.
const EXIT_ENCODE_TIMEOUT: i32 = 75;

fn no(what: &str) -> EngineError {
    EngineError::new(
        ErrorKind::Internal,
        format!("the worker process has no {what}"),
    )
}

/// Faults for the tests of supervision, honoured only in debug builds or with the
/// `fault-injection` feature: a generation with a stop string of this prefix and `abort` aborts
/// the process; with `hang`, it hangs after sending its first token; with `device`, the device
/// faults ([`WorkerDevice::inject_fault`]). `WC_WORKER_FAULT_ON_LOAD=<text>` aborts a load whose model path contains it.
const FAULT_PREFIX: &str = "\u{0}wc-fault:";

struct Worker {
    backend: Arc<dyn Backend>,
    out: Output,
    beat: Arc<Beat>,
    encoder: Arc<Mutex<Option<Arc<dyn PromptEncoder>>>>,
    device: Option<Box<dyn WorkerDevice>>,
    engine: Option<Box<dyn Engine>>,
    /// Messages that arrived during a generation (other than `Cancel`).
    stashed: VecDeque<ToWorker>,
    /// Batched sequences with the `hang` fault, and whether each has had its first token.
    hang_after_first_token: Vec<(SeqId, bool)>,
    /// The sequences in the batch (admitted, neither finished nor cancelled).
    running: HashSet<SeqId>,
    /// A step failed: no more steps until the next admit.
    paused: bool,
    /// `Admit`s and `CancelSequence`s handled (see [`StepReport::control`]).
    control: u64,
    /// An admit since the last step found no room: the admits after it in the same burst are
    /// answered "no room yet" untried, so that none overtakes it (see `BatchEngine::admit_many`).
    refused: bool,
}

impl Worker {
    fn new(
        backend: Arc<dyn Backend>,
        out: Output,
        beat: Arc<Beat>,
        encoder: Arc<Mutex<Option<Arc<dyn PromptEncoder>>>>,
    ) -> Self {
        Self {
            backend,
            out,
            beat,
            encoder,
            device: None,
            engine: None,
            stashed: VecDeque::new(),
            hang_after_first_token: Vec::new(),
            running: HashSet::new(),
            paused: false,
            control: 0,
            refused: false,
        }
    }

    /// Whether the batch has sequences to step.
    fn stepping(&self) -> bool {
        !self.paused && !self.running.is_empty()
    }

    /// Handles messages as they come and, while the batch has sequences and no message waits,
    /// runs steps. Ends once the controller is gone and the batch is done.
    fn run(&mut self, rx: &Receiver<ToWorker>) {
        let mut closed = false;
        loop {
            let message = match self.stashed.pop_front() {
                Some(message) => Some(message),
                None if closed || self.stepping() => match rx.try_recv() {
                    Ok(message) => Some(message),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        None
                    }
                },
                None => match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(message) => Some(message),
                    Err(RecvTimeoutError::Timeout) => {
                        self.beat.now();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        closed = true;
                        continue;
                    }
                },
            };
            let reply = match message {
                Some(message) => {
                    self.beat.now();
                    self.handle(message, rx)
                }
                None if self.stepping() => Some(self.step()),
                None => return,
            };
            if let Some(reply) = reply {
                send(&self.out, &reply);
            }
        }
    }

    /// The answer to `message`, if it has one.
    fn handle(&mut self, message: ToWorker, rx: &Receiver<ToWorker>) -> Option<FromWorker> {
        Some(match message {
            ToWorker::Open { device, options } => {
                let backend = self.backend.clone();
                let opened = self.beat.during(|| backend.open_device(&device, &options));
                FromWorker::Opened(opened.map(|(device, report)| {
                    self.device = Some(device);
                    report
                }))
            }
            ToWorker::Memory => match &self.device {
                Some(device) => FromWorker::Memory(device.memory()),
                None => FromWorker::Memory(Err(no("open device"))),
            },
            ToWorker::Attach {
                spec,
                handoff,
                mut timeline,
            } => {
                let beat = self.beat.clone();
                let attached = self.device_for_load(&spec).and_then(|device| {
                    beat.during(|| device.attach(&spec, &handoff, &mut timeline))
                });
                FromWorker::Attached(attached.map(|warm| Box::new(self.keep(warm, timeline))))
            }
            ToWorker::WarmUp => match self.engine.as_mut() {
                Some(engine) => {
                    let beat = self.beat.clone();
                    FromWorker::WarmedUp(beat.during(|| engine.warm_up()))
                }
                None => FromWorker::WarmedUp(Err(no("engine"))),
            },
            ToWorker::Generate(request) => self.generate(request, rx),
            ToWorker::Admit { id, request } => {
                self.control += 1;
                let before = self.kv_usage().reserved_tokens;
                let result = match self.refused {
                    true => Ok(Admission::NoRoomYet),
                    false => self.admit(id, request),
                };
                // With nothing running the controller refuses it (nothing will free room), and
                // the admits after it must be tried.
                self.refused =
                    matches!(result, Ok(Admission::NoRoomYet)) && !self.running.is_empty();
                let kv = self.kv_usage();
                if let Ok(Admission::Admitted) = result {
                    self.running.insert(id);
                    self.paused = false;
                }
                FromWorker::Admitted {
                    share: kv.reserved_tokens.saturating_sub(before),
                    result,
                    kv,
                }
            }
            ToWorker::CancelSequence(id) => {
                self.control += 1;
                self.running.remove(&id);
                self.hang_after_first_token.retain(|(seq, _)| *seq != id);
                if let Some(batch) = self.engine.as_mut().and_then(|e| e.batch()) {
                    batch.cancel(id);
                }
                return None;
            }
            // A cancel that came after its generation ended.
            ToWorker::Cancel => return None,
            ToWorker::Encode { .. } => unreachable!("encodes are answered by the reader thread"),
            ToWorker::Synchronize => FromWorker::Synchronized(match &self.device {
                Some(device) => device.synchronize(),
                None => Err(no("open device")),
            }),
            ToWorker::DropEngine => {
                if let Ok(mut slot) = self.encoder.lock() {
                    *slot = None;
                }
                self.engine = None;
                self.forget_batch();
                FromWorker::Dropped
            }
        })
    }

    /// The device, for a load of `spec` (any batch before went with the engine before); aborts
    /// here when the load fault asks for it (see [`FAULT_PREFIX`]).
    fn device_for_load(
        &mut self,
        spec: &ModelSpec,
    ) -> Result<&mut Box<dyn WorkerDevice>, EngineError> {
        self.forget_batch();
        let device = self.device.as_mut().ok_or_else(|| no("open device"))?;
        if cfg!(any(debug_assertions, feature = "fault-injection"))
            && std::env::var("WC_WORKER_FAULT_ON_LOAD")
                .is_ok_and(|m| !m.is_empty() && spec.model.contains(&m))
        {
            std::process::abort();
        }
        Ok(device)
    }

    /// Holds an attached engine (and its encoder, for the reader thread); what the controller
    /// needs to know of it.
    fn keep(&mut self, warm: WarmEngine, timeline: Timeline) -> AttachedEngine {
        let mut engine = warm.engine;
        let encoder = engine.prompt_encoder();
        let batches = engine.batch().is_some();
        let kv = engine.batch().map(|b| b.kv_usage()).unwrap_or_default();
        let has_encoder = encoder.is_some();
        if let Ok(mut slot) = self.encoder.lock() {
            *slot = encoder;
        }
        self.engine = Some(engine);
        AttachedEngine {
            timeline,
            bytes_moved: warm.bytes_moved,
            device_bytes: warm.device_bytes,
            memory_before: warm.memory_before,
            memory_attached: warm.memory_attached,
            source: warm.source,
            has_encoder,
            batches,
            kv,
        }
    }

    /// The batch went with its engine.
    fn forget_batch(&mut self) {
        self.running.clear();
        self.hang_after_first_token.clear();
        self.paused = false;
    }
}

#[path = "child_encode.rs"]
mod encode;
#[path = "child_generate.rs"]
mod generate;
#[path = "child_steps.rs"]
mod steps;

#[cfg(test)]
#[path = "child_tests.rs"]
mod tests;
