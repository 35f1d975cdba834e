//! A worker process's generation one request at a time (engines that do not batch): tokens sent
//! as they come, a cancel read between them, and the fault-injection hook of test builds.

use std::sync::mpsc::Receiver;
use std::time::Duration;

use super::{no, send, Worker, FAULT_PREFIX};
use crate::backend::{EngineError, ErrorKind, GenerateRequest, TokenEvent};
use crate::process::protocol::{FromWorker, ToWorker};

impl Worker {
    /// The fault a request asks for (see [`FAULT_PREFIX`]); `abort` and `device` happen here.
    pub(super) fn fault_of(
        &self,
        request: &GenerateRequest,
    ) -> Result<Option<String>, EngineError> {
        let fault = match cfg!(any(debug_assertions, feature = "fault-injection")) {
            true => request
                .stop
                .iter()
                .find_map(|s| s.strip_prefix(FAULT_PREFIX))
                .map(str::to_owned),
            false => None,
        };
        match fault.as_deref() {
            Some("abort") => std::process::abort(),
            Some("device") => {
                let injected = match &self.device {
                    Some(device) => device.inject_fault(),
                    None => Err(no("open device")),
                };
                injected.and_then(|()| {
                    Err(EngineError::new(
                        ErrorKind::Internal,
                        "the fault did not fault",
                    ))
                })
            }
            _ => Ok(fault),
        }
    }

    pub(super) fn generate(
        &mut self,
        request: GenerateRequest,
        rx: &Receiver<ToWorker>,
    ) -> FromWorker {
        let fault = match self.fault_of(&request) {
            Ok(fault) => fault,
            Err(e) => return FromWorker::Generated(Err(e)),
        };
        let fault = fault.as_deref();
        let Some(engine) = self.engine.as_mut() else {
            return FromWorker::Generated(Err(no("engine")));
        };
        let (out, beat, stashed) = (&self.out, &self.beat, &mut self.stashed);
        // The prefill may take long; from the first token on, every token is a beat.
        beat.long_step_begins();
        let mut tokens = 0usize;
        let mut on_token = |token: TokenEvent| {
            beat.long_step_ends();
            if fault == Some("hang") && tokens == 1 {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            tokens += 1;
            beat.now();
            send(out, &FromWorker::Token(token));
            let mut cancelled = false;
            while let Ok(message) = rx.try_recv() {
                match message {
                    ToWorker::Cancel => cancelled = true,
                    other => stashed.push_back(other),
                }
            }
            !cancelled
        };
        let result = engine.generate(&request, &mut on_token);
        beat.long_step_ends();
        beat.now();
        FromWorker::Generated(result)
    }
}
