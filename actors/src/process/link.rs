//! One worker process and the pipes to it: started with its parent-death signal, messages sent
//! as frames, replies read by a thread (prompt encodes answered on the side), a process that
//! exits or stops answering reported with its exit status or signal.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::BufReader;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::frame::{read_frame, write_frame};
use super::parent::WorkerCommand;
use super::protocol::{FromWorker, StepReport, ToWorker};
use crate::backend::{EngineError, ErrorKind};
use crate::timeline::monotonic_ns;

pub(super) type EncodeReplies = Arc<Mutex<HashMap<u64, Sender<Result<Vec<u32>, EngineError>>>>>;

/// One worker process and the pipes to it.
pub(super) struct Link {
    pub(super) child: RefCell<Child>,
    pub(super) input: Arc<Mutex<ChildStdin>>,
    pub(super) replies: Receiver<FromWorker>,
    pub(super) encodes: EncodeReplies,
    pub(super) next_encode: Arc<AtomicU64>,
    pub(super) timeout: Duration,
    /// Steps that arrived while an answer to another message was awaited, in order.
    pub(super) steps: RefCell<VecDeque<StepReport>>,
    /// When the process last sent anything, a heartbeat included ([`monotonic_ns`]).
    heard_ns: Arc<AtomicU64>,
}

pub(super) fn fatal(message: String) -> EngineError {
    EngineError::new(ErrorKind::DeviceFatal, message)
}

impl Link {
    pub(super) fn spawn(command: &WorkerCommand) -> Result<Self, EngineError> {
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
        let heard_ns = Arc::new(AtomicU64::new(monotonic_ns()));
        let heard = heard_ns.clone();
        std::thread::Builder::new()
            .name(format!("wc-worker-{}-reader", child.id()))
            .spawn(move || {
                let mut output = BufReader::new(output);
                while let Ok(Some(message)) = read_frame::<FromWorker>(&mut output) {
                    heard.store(monotonic_ns(), Ordering::SeqCst);
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
            heard_ns,
        })
    }

    /// Kills a process that has sent nothing, not even a heartbeat, for the timeout, while no
    /// one waits for it (an idle worker): a stopped or hung process is found without a request.
    pub(super) fn check_heard(&self) -> Result<(), EngineError> {
        let silent_ns = monotonic_ns().saturating_sub(self.heard_ns.load(Ordering::SeqCst));
        if Duration::from_nanos(silent_ns) < self.timeout {
            return Ok(());
        }
        Err(self.hung())
    }

    /// Kills a process that stopped answering; the error says so.
    fn hung(&self) -> EngineError {
        let _ = self.child.borrow_mut().kill();
        let _ = self.child.borrow_mut().wait();
        fatal(format!(
            "the worker process stopped answering (no heartbeat for {} ms); killed",
            self.timeout.as_millis()
        ))
    }

    pub(super) fn send(&self, message: &ToWorker) -> Result<(), EngineError> {
        let mut input = self.input.lock().unwrap_or_else(|p| p.into_inner());
        write_frame(&mut *input, message).map_err(|_| self.gone())
    }

    /// The next answer (neither a heartbeat nor a step, which is kept for [`Self::next_step`]).
    pub(super) fn wait(&self) -> Result<FromWorker, EngineError> {
        loop {
            match self.receive()? {
                FromWorker::Stepped(step) => self.steps.borrow_mut().push_back(step),
                message => return Ok(message),
            }
        }
    }

    /// The next step the process reported: one kept by [`Self::wait`], else one that arrived;
    /// without `block`, `None` when none has.
    pub(super) fn next_step(&self, block: bool) -> Result<Option<StepReport>, EngineError> {
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
                Err(RecvTimeoutError::Timeout) => return Err(self.hung()),
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

    pub(super) fn unexpected(&self, message: &FromWorker) -> EngineError {
        fatal(format!(
            "the worker process answered out of turn: {message:?}"
        ))
    }

    pub(super) fn exited(&self) -> Option<ExitStatus> {
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
pub(super) fn describe(status: ExitStatus) -> String {
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
