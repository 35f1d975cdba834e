//! The fake backend's device (it counts the bytes its engines hold) and its engine (tokens made
//! from the prompt, slow, failing or panicking as the model spec asks).

use super::*;

/// A device that counts the bytes its engines hold. Not `Send` (an `Rc`), like a real context.
pub(super) struct FakeDevice {
    pub(super) total: u64,
    pub(super) used: Rc<Cell<u64>>,
    pub(super) state: Arc<FakeState>,
}

/// Device bytes held by an engine (or a load in progress); given back when dropped.
struct Reservation {
    used: Rc<Cell<u64>>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.used.set(self.used.get() - self.bytes);
    }
}

impl WorkerDevice for FakeDevice {
    fn memory(&self) -> Result<MemoryInfo, EngineError> {
        let failing = self
            .state
            .memory_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(EngineError::new(
                ErrorKind::Internal,
                "fake memory query failed",
            ));
        }
        Ok(MemoryInfo {
            total_bytes: self.total,
            free_bytes: self.total - self.used.get(),
            ..MemoryInfo::default()
        })
    }

    fn load(
        &mut self,
        spec: &ModelSpec,
        _: &Handoff,
        timeline: &mut Timeline,
    ) -> Result<(Box<dyn Engine>, u64), EngineError> {
        let model = FakeModel::parse(&spec.model)?;
        std::thread::sleep(Duration::from_millis(model.load_ms / 2));
        timeline.mark(Anchor::WeightsRead);
        if model.panic_on_load {
            panic!("fake device panicked while loading on purpose");
        }
        if model.fatal_on_load {
            return Err(EngineError::new(ErrorKind::DeviceFatal, "fake device lost"));
        }
        if self.used.get() + model.size > self.total {
            return Err(EngineError::new(
                ErrorKind::OutOfMemory,
                "fake device is full",
            ));
        }
        self.used.set(self.used.get() + model.size);
        let reservation = Reservation {
            used: self.used.clone(),
            bytes: model.size,
        };
        let host = if model.alloc {
            vec![1u8; model.size as usize]
        } else {
            Vec::new()
        };
        std::thread::sleep(Duration::from_millis(model.load_ms - model.load_ms / 2));
        if model.fail_load {
            return Err(EngineError::new(
                ErrorKind::InvalidModel,
                "fake checkpoint is corrupt",
            ));
        }
        timeline.mark(Anchor::WeightsOnDevice);
        self.state.live_engines.fetch_add(1, Ordering::SeqCst);
        let engine = FakeEngine {
            name: spec.model.clone(),
            model: model.clone(),
            _reservation: reservation,
            _host: host,
            state: self.state.clone(),
        };
        timeline.mark(Anchor::EngineReady);
        Ok((Box::new(engine), model.size))
    }

    fn synchronize(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

struct FakeEngine {
    name: String,
    model: FakeModel,
    _reservation: Reservation,
    _host: Vec<u8>,
    state: Arc<FakeState>,
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        self.state.live_engines.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Engine for FakeEngine {
    fn generate(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<GenerateOutput, EngineError> {
        let prompt = prompt_ids(&request.prompt);
        if prompt.is_empty() {
            return Err(EngineError::new(
                ErrorKind::InvalidRequest,
                "the prompt is empty",
            ));
        }
        self.state
            .generated
            .lock()
            .unwrap()
            .push((self.name.clone(), prompt.clone()));
        let _running = Running::enter(&self.state, self.model.meet);
        if self.model.panic_on_generate {
            panic!("fake engine panicked mid-request on purpose");
        }
        if self.model.fatal_on_generate {
            return Err(EngineError::new(
                ErrorKind::DeviceFatal,
                "fake device fell off the bus",
            ));
        }
        let mut output = GenerateOutput {
            prompt_ids: prompt.clone(),
            new_tokens: Vec::new(),
            text: String::new(),
            finish_reason: FinishReason::Length,
            prefill_ms: 0.0,
            decode_ms: 0.0,
            cumulative_logprob: 0.0,
            logprobs: Vec::new(),
        };
        for id in expected_tokens(&prompt, request.max_new_tokens) {
            std::thread::sleep(Duration::from_millis(self.model.gen_ms));
            let text = format!(" t{id}");
            output.new_tokens.push(id);
            output.text.push_str(&text);
            if !on_token(TokenEvent::new(id, text)) {
                output.finish_reason = FinishReason::Cancelled;
                break;
            }
        }
        self.state.finished.lock().unwrap().push((
            prompt,
            output.new_tokens.len(),
            output.finish_reason,
        ));
        Ok(output)
    }

    fn warm_up(&mut self) -> Result<u32, EngineError> {
        Ok(0)
    }

    fn device_bytes(&self) -> u64 {
        self.model.size
    }
}
