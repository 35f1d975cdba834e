//! The controller's side: a backend whose devices are worker processes, and the proxies a
//! worker thread uses to drive its process (device, engine, prompt encoder).
//!
//! A batching engine's decode costs no round trip per step. The process steps its batch on its
//! own while it has sequences and streams each step's events (`Stepped`); admits are answered
//! (their room in the KV cache decides), cancels are sent and not waited for, and
//! [`ProcessEngine`]'s `step` hands the engine actor the events of every step that arrived since
//! the last call, blocking only when none has arrived and sequences run. This was chosen over
//! pipelining (sending the next `Step` before the last one's answer is read) because it keeps
//! the [`BatchEngine`] contract as it is, needs no speculative step to take back when the batch
//! empties or a request is cancelled, and is smaller: the process's loop decides when to step.
//! The KV-cache usage stays exact: each admit's reservation comes with its answer, and a step's
//! usage is taken only when the process had seen every admit and cancel sent before it.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::BufReader;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::frame::{read_frame, write_frame};
use super::ledger::Ledger;
use super::protocol::{FromWorker, StepReport, ToWorker};
use crate::backend::{
    Backend, DeviceSpec, Engine, EngineError, ErrorKind, Footprint, GenerateOutput,
    GenerateRequest, MemoryInfo, ModelSpec, PrewarmOptions, PrewarmReport, Prompt, PromptEncoder,
    TokenEvent, WorkerDevice,
};
use crate::batch::{Admission, BatchEngine, KvUsage, SeqEvent, SeqId};
use crate::timeline::Timeline;

/// How to start a worker process.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    /// The program (the `worker-controller` binary).
    pub exe: PathBuf,
    /// Its arguments (`["worker"]`).
    pub args: Vec<String>,
    /// Environment variables set for it (e.g. the log format).
    pub env: Vec<(String, String)>,
    /// A process that sends nothing for this long is taken for hung, killed and restarted.
    pub heartbeat_timeout: Duration,
}

/// A [`Backend`] whose devices live in worker processes; models are inspected here, by `local`.
pub struct ProcessBackend {
    local: Arc<dyn Backend>,
    command: WorkerCommand,
}

impl ProcessBackend {
    pub fn new(local: Arc<dyn Backend>, command: WorkerCommand) -> Self {
        Self { local, command }
    }
}

impl Backend for ProcessBackend {
    fn inspect(&self, spec: &ModelSpec) -> Result<Footprint, EngineError> {
        self.local.inspect(spec)
    }

    fn open_device(
        &self,
        device: &DeviceSpec,
        options: &PrewarmOptions,
    ) -> Result<(Box<dyn WorkerDevice>, PrewarmReport), EngineError> {
        let link = Rc::new(Link::spawn(&self.command)?);
        link.send(&ToWorker::Open {
            device: device.clone(),
            options: options.clone(),
        })?;
        match link.wait()? {
            FromWorker::Opened(report) => {
                let mut report = report?;
                report.pid = Some(link.child.borrow().id());
                Ok((Box::new(ProcessDevice { link }), report))
            }
            other => Err(link.unexpected(&other)),
        }
    }
}

type EncodeReplies = Arc<Mutex<HashMap<u64, Sender<Result<Vec<u32>, EngineError>>>>>;

/// One worker process and the pipes to it.
struct Link {
    child: RefCell<Child>,
    input: Arc<Mutex<ChildStdin>>,
    replies: Receiver<FromWorker>,
    encodes: EncodeReplies,
    next_encode: Arc<AtomicU64>,
    timeout: Duration,
    /// Steps that arrived while an answer to another message was awaited, in order.
    steps: RefCell<VecDeque<StepReport>>,
}

fn fatal(message: String) -> EngineError {
    EngineError::new(ErrorKind::DeviceFatal, message)
}

impl Link {
    fn spawn(command: &WorkerCommand) -> Result<Self, EngineError> {
        let mut child = Command::new(&command.exe)
            .args(&command.args)
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                fatal(format!(
                    "cannot start the worker process `{}`: {e}",
                    command.exe.display()
                ))
            })?;
        let input = child.stdin.take().expect("piped stdin");
        let output = child.stdout.take().expect("piped stdout");
        let (tx, replies) = mpsc::channel();
        let encodes: EncodeReplies = Arc::default();
        let routes = encodes.clone();
        std::thread::Builder::new()
            .name(format!("wc-worker-{}-reader", child.id()))
            .spawn(move || {
                let mut output = BufReader::new(output);
                while let Ok(Some(message)) = read_frame::<FromWorker>(&mut output) {
                    match message {
                        FromWorker::Encoded { id, ids } => {
                            let waiter = routes.lock().ok().and_then(|mut m| m.remove(&id));
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(ids);
                            }
                        }
                        other => {
                            if tx.send(other).is_err() {
                                break;
                            }
                        }
                    }
                }
                // The process is gone: whoever waits for an encode hears it now.
                if let Ok(mut waiting) = routes.lock() {
                    waiting.clear();
                }
            })
            .map_err(|e| fatal(format!("cannot start the worker's reader thread: {e}")))?;
        Ok(Self {
            child: RefCell::new(child),
            input: Arc::new(Mutex::new(input)),
            replies,
            encodes,
            next_encode: Arc::default(),
            timeout: command.heartbeat_timeout,
            steps: RefCell::default(),
        })
    }

    fn send(&self, message: &ToWorker) -> Result<(), EngineError> {
        let mut input = self.input.lock().unwrap_or_else(|p| p.into_inner());
        write_frame(&mut *input, message).map_err(|_| self.gone())
    }

    /// The next answer (neither a heartbeat nor a step, which is kept for [`Self::next_step`]).
    fn wait(&self) -> Result<FromWorker, EngineError> {
        loop {
            match self.receive()? {
                FromWorker::Stepped(step) => self.steps.borrow_mut().push_back(step),
                message => return Ok(message),
            }
        }
    }

    /// The next step the process reported: one kept by [`Self::wait`], else one that arrived;
    /// without `block`, `None` when none has.
    fn next_step(&self, block: bool) -> Result<Option<StepReport>, EngineError> {
        if let Some(step) = self.steps.borrow_mut().pop_front() {
            return Ok(Some(step));
        }
        loop {
            let message = match block {
                true => self.receive()?,
                false => match self.replies.try_recv() {
                    Ok(message) => message,
                    Err(TryRecvError::Empty) => return Ok(None),
                    Err(TryRecvError::Disconnected) => return Err(self.gone()),
                },
            };
            match message {
                FromWorker::Alive => continue,
                FromWorker::Stepped(step) => return Ok(Some(step)),
                other => return Err(self.unexpected(&other)),
            }
        }
    }

    /// The next message that is not a heartbeat. A process that stays silent past the timeout
    /// is killed; one that exited is described by its status.
    fn receive(&self) -> Result<FromWorker, EngineError> {
        loop {
            match self.replies.recv_timeout(self.timeout) {
                Ok(FromWorker::Alive) => continue,
                Ok(message) => return Ok(message),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.borrow_mut().kill();
                    let _ = self.child.borrow_mut().wait();
                    return Err(fatal(format!(
                        "the worker process stopped answering (no heartbeat for {} ms); killed",
                        self.timeout.as_millis()
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.gone()),
            }
        }
    }

    /// Why the process is gone, with its exit status or signal.
    fn gone(&self) -> EngineError {
        let deadline = Instant::now() + Duration::from_secs(2);
        let status = loop {
            match self.child.borrow_mut().try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => break None,
            }
        };
        match status {
            Some(status) => fatal(format!("the worker process {}", describe(status))),
            None => {
                let _ = self.child.borrow_mut().kill();
                let _ = self.child.borrow_mut().wait();
                fatal("the worker process closed its pipe; killed".into())
            }
        }
    }

    fn unexpected(&self, message: &FromWorker) -> EngineError {
        fatal(format!(
            "the worker process answered out of turn: {message:?}"
        ))
    }

    fn exited(&self) -> Option<ExitStatus> {
        self.child.borrow_mut().try_wait().ok().flatten()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `exited with status 3`, `was killed by signal 9 (SIGKILL)`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal} ({})", signal_name(signal)),
        _ => format!("ended ({status})"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}

/// A device in a worker process.
struct ProcessDevice {
    link: Rc<Link>,
}

impl WorkerDevice for ProcessDevice {
    fn memory(&self) -> Result<MemoryInfo, EngineError> {
        self.link.send(&ToWorker::Memory)?;
        match self.link.wait()? {
            FromWorker::Memory(memory) => memory,
            other => Err(self.link.unexpected(&other)),
        }
    }

    fn load(
        &mut self,
        spec: &ModelSpec,
        timeline: &mut Timeline,
    ) -> Result<(Box<dyn Engine>, u64), EngineError> {
        self.link.send(&ToWorker::Load {
            spec: spec.clone(),
            timeline: timeline.clone(),
        })?;
        match self.link.wait()? {
            FromWorker::Loaded(loaded) => {
                let loaded = loaded?;
                *timeline = loaded.timeline;
                let encoder = loaded.has_encoder.then(|| {
                    Arc::new(EncoderProxy {
                        input: self.link.input.clone(),
                        encodes: self.link.encodes.clone(),
                        next: self.link.next_encode.clone(),
                        timeout: self.link.timeout,
                    }) as Arc<dyn PromptEncoder>
                });
                self.link.steps.borrow_mut().clear();
                let engine = ProcessEngine {
                    link: self.link.clone(),
                    encoder,
                    batches: loaded.batches,
                    ledger: Ledger::new(loaded.kv),
                };
                Ok((Box::new(engine), loaded.bytes_moved))
            }
            other => Err(self.link.unexpected(&other)),
        }
    }

    fn synchronize(&self) -> Result<(), EngineError> {
        self.link.send(&ToWorker::Synchronize)?;
        match self.link.wait()? {
            FromWorker::Synchronized(result) => result,
            other => Err(self.link.unexpected(&other)),
        }
    }

    fn check_alive(&self) -> Result<(), EngineError> {
        match self.link.exited() {
            Some(status) => Err(fatal(format!("the worker process {}", describe(status)))),
            None => Ok(()),
        }
    }
}

/// An engine in a worker process.
struct ProcessEngine {
    link: Rc<Link>,
    encoder: Option<Arc<dyn PromptEncoder>>,
    /// The engine in the process batches: admits are answered, cancels are not, and steps
    /// come on their own (see the module's documentation).
    batches: bool,
    /// The sequences running in the process and their KV-cache reservations.
    ledger: Ledger,
}

impl ProcessEngine {
    /// Sends an `Admit` or a `CancelSequence`, counted.
    fn send_control(&mut self, message: &ToWorker) -> Result<(), EngineError> {
        self.ledger.control_sent();
        self.link.send(message)
    }
}

impl BatchEngine for ProcessEngine {
    fn admit(&mut self, id: SeqId, request: &GenerateRequest) -> Result<Admission, EngineError> {
        self.send_control(&ToWorker::Admit {
            id,
            request: request.into(),
        })?;
        match self.link.wait()? {
            FromWorker::Admitted { result, kv, share } => {
                let admitted = matches!(result, Ok(Admission::Admitted));
                self.ledger.admitted(id, admitted, share, kv);
                result
            }
            other => Err(self.link.unexpected(&other)),
        }
    }

    /// The events of every step the process reported since the last call, in order; waits for
    /// one only when none has come and sequences run. A failed step is reported on its own, after
    /// the events of the steps before it.
    fn step(&mut self) -> Result<Vec<SeqEvent>, EngineError> {
        let mut events = Vec::new();
        loop {
            let block = events.is_empty() && self.ledger.running();
            let Some(step) = self.link.next_step(block)? else {
                return Ok(events);
            };
            match step.result {
                Ok(more) => {
                    self.ledger.stepped(&more, step.kv, step.control);
                    events.extend(more);
                }
                Err(e) if events.is_empty() => {
                    self.ledger.stepped(&[], step.kv, step.control);
                    return Err(e);
                }
                Err(_) => {
                    self.link.steps.borrow_mut().push_front(step);
                    return Ok(events);
                }
            }
        }
    }

    fn cancel(&mut self, id: SeqId) {
        // Unanswered; a process that is gone shows at the next step.
        let _ = self.send_control(&ToWorker::CancelSequence(id));
        self.ledger.cancelled(id);
    }

    fn kv_usage(&self) -> KvUsage {
        self.ledger.kv()
    }
}

impl Engine for ProcessEngine {
    fn generate(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<GenerateOutput, EngineError> {
        self.link.send(&ToWorker::Generate(request.into()))?;
        let mut cancelled = false;
        loop {
            match self.link.wait()? {
                FromWorker::Token(token) => {
                    if !cancelled && !on_token(token) {
                        cancelled = true;
                        self.link.send(&ToWorker::Cancel)?;
                    }
                }
                FromWorker::Generated(result) => return result,
                other => return Err(self.link.unexpected(&other)),
            }
        }
    }

    fn warm_up(&mut self) -> Result<u32, EngineError> {
        self.link.send(&ToWorker::WarmUp)?;
        match self.link.wait()? {
            FromWorker::WarmedUp(result) => result,
            other => Err(self.link.unexpected(&other)),
        }
    }

    fn device_bytes(&self) -> u64 {
        let answer = self
            .link
            .send(&ToWorker::DeviceBytes)
            .and_then(|()| self.link.wait());
        match answer {
            Ok(FromWorker::DeviceBytes(bytes)) => bytes,
            _ => 0,
        }
    }

    fn prompt_encoder(&self) -> Option<Arc<dyn PromptEncoder>> {
        self.encoder.clone()
    }

    fn batch(&mut self) -> Option<&mut dyn BatchEngine> {
        match self.batches {
            true => Some(self),
            false => None,
        }
    }
}

impl Drop for ProcessEngine {
    fn drop(&mut self) {
        if self.link.send(&ToWorker::DropEngine).is_ok() {
            let _ = self.link.wait();
        }
        self.link.steps.borrow_mut().clear();
    }
}

/// Encodes prompts in the worker process beside its running generation.
struct EncoderProxy {
    input: Arc<Mutex<ChildStdin>>,
    encodes: EncodeReplies,
    next: Arc<AtomicU64>,
    timeout: Duration,
}

impl PromptEncoder for EncoderProxy {
    fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        if let Ok(mut waiting) = self.encodes.lock() {
            waiting.insert(id, tx);
        }
        let sent = {
            let mut input = self.input.lock().unwrap_or_else(|p| p.into_inner());
            write_frame(
                &mut *input,
                &ToWorker::Encode {
                    id,
                    prompt: prompt.into(),
                },
            )
        };
        let lost = || fatal("the worker process went away while encoding a prompt".into());
        sent.map_err(|_| lost())?;
        let answer = rx.recv_timeout(self.timeout);
        if let Ok(mut waiting) = self.encodes.lock() {
            waiting.remove(&id);
        }
        match answer {
            Ok(ids) => ids,
            Err(_) => Err(lost()),
        }
    }
}
