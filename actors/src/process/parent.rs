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

use std::path::PathBuf;
use std::process::ChildStdin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::frame::write_frame;

use super::ledger::Ledger;
use super::link::{describe, fatal, EncodeReplies, Link};
use super::protocol::{AttachedEngine, FromWorker, ToWorker};
use crate::backend::{
    Backend, DeviceSpec, Engine, EngineError, Footprint, GenerateOutput, GenerateRequest, Handoff,
    MemoryInfo, ModelSpec, PrewarmOptions, PrewarmReport, Prompt, PromptEncoder, TokenEvent,
    WarmEngine, WorkerDevice,
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

    fn preflight(&self, spec: &ModelSpec) -> Result<Footprint, EngineError> {
        self.local.preflight(spec)
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
                let local = self.local.clone();
                Ok((Box::new(ProcessDevice { link, local }), report))
            }
            other => Err(link.unexpected(&other)),
        }
    }
}

/// A device in a worker process.
struct ProcessDevice {
    link: Rc<Link>,
    /// The serving process's backend: grants each attach its share of the shared state.
    local: Arc<dyn Backend>,
}

impl ProcessDevice {
    /// The proxy of the engine the process just attached; takes the anchors it marked.
    fn engine(&self, attached: AttachedEngine, timeline: &mut Timeline) -> WarmEngine {
        *timeline = attached.timeline;
        let encoder = attached.has_encoder.then(|| {
            Arc::new(EncoderProxy {
                input: self.link.input.clone(),
                encodes: self.link.encodes.clone(),
                next: self.link.next_encode.clone(),
                timeout: self.link.timeout,
            }) as Arc<dyn PromptEncoder>
        });
        self.link.steps.borrow_mut().clear();
        WarmEngine {
            engine: Box::new(ProcessEngine {
                link: self.link.clone(),
                encoder,
                batches: attached.batches,
                ledger: Ledger::new(attached.kv),
                device_bytes: attached.device_bytes,
            }),
            bytes_moved: attached.bytes_moved,
            device_bytes: attached.device_bytes,
            memory_before: attached.memory_before,
            memory_attached: attached.memory_attached,
            source: attached.source,
        }
    }
}

impl WorkerDevice for ProcessDevice {
    fn memory(&self) -> Result<MemoryInfo, EngineError> {
        self.link.send(&ToWorker::Memory)?;
        match self.link.wait()? {
            FromWorker::Memory(memory) => memory,
            other => Err(self.link.unexpected(&other)),
        }
    }

    /// A process loads only as a whole attach (one round trip): the engine comes back warm.
    fn load(
        &mut self,
        spec: &ModelSpec,
        handoff: &Handoff,
        timeline: &mut Timeline,
    ) -> Result<(Box<dyn Engine>, u64), EngineError> {
        self.attach(spec, handoff, timeline)
            .map(|warm| (warm.engine, warm.bytes_moved))
    }

    /// One round trip: the process loads, warms up and sizes the engine on its own.
    fn attach(
        &mut self,
        spec: &ModelSpec,
        handoff: &Handoff,
        timeline: &mut Timeline,
    ) -> Result<WarmEngine, EngineError> {
        // The grant ends with the attach: a process that died mid-read ends it unsuccessful.
        let grant = self.local.grant_attach(handoff)?;
        let sent = self.link.send(&ToWorker::Attach {
            spec: spec.clone(),
            handoff: grant.handoff.clone(),
            timeline: timeline.clone(),
        });
        let attached = sent.and_then(|()| match self.link.wait()? {
            FromWorker::Attached(attached) => attached,
            other => Err(self.link.unexpected(&other)),
        });
        grant.finish(attached.is_ok());
        Ok(self.engine(*attached?, timeline))
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
            None => self.link.check_heard(),
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
    /// Device bytes the engine holds, as its attach reported them.
    device_bytes: u64,
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
            request: request.clone(),
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

    /// Sends every admit, then reads their answers: the process answers the ones that have
    /// come between two of its steps, so a burst of requests costs one step, not one each.
    /// After a "no room yet" the process answers the rest the same (the queue keeps its order).
    fn admit_many(
        &mut self,
        requests: &[(SeqId, &GenerateRequest)],
    ) -> Vec<Result<Admission, EngineError>> {
        let mut sent = 0;
        let mut answers = Vec::with_capacity(requests.len());
        for &(id, request) in requests {
            let admit = ToWorker::Admit {
                id,
                request: request.clone(),
            };
            match self.send_control(&admit) {
                Ok(()) => sent += 1,
                Err(e) => {
                    answers.push(Err(e));
                    break;
                }
            }
        }
        let mut read = Vec::with_capacity(sent);
        for &(id, _) in &requests[..sent] {
            match self.link.wait() {
                Ok(FromWorker::Admitted { result, kv, share }) => {
                    let admitted = matches!(result, Ok(Admission::Admitted));
                    self.ledger.admitted(id, admitted, share, kv);
                    read.push(result);
                }
                Ok(other) => {
                    read.push(Err(self.link.unexpected(&other)));
                    break;
                }
                Err(e) => {
                    read.push(Err(e));
                    break;
                }
            }
        }
        read.append(&mut answers);
        read
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
        self.link.send(&ToWorker::Generate(request.clone()))?;
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
        self.device_bytes
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
                    prompt: prompt.clone(),
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
