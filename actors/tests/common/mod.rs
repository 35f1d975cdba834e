//! A fake backend for the runtime's tests: models described by their spec string can be made
//! slow, fail, or panic on purpose, and devices track the bytes their engines hold.
//!
//! A model is `fake:` followed by comma-separated options:
//! `size=N` (device bytes, default 1000), `load_ms=N`, `gen_ms=N` (per token), `alloc` (really
//! allocate `size` bytes of host memory), `fail_load`, `panic_on_load`, `fatal_on_load`,
//! `panic_on_generate`, `fatal_on_generate`, `meet=N` (each generation waits, up to 10 s, until
//! N generations have been running at once). Plain `fake` takes the defaults; anything not
//! starting with `fake` is not found. [`FakeState`] counts the generations running at once.
#![allow(dead_code)]

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wc_actors::*;

mod fake_device;
use fake_device::FakeDevice;

/// What a fake model spec asks for.
#[derive(Clone, Debug, Default)]
pub struct FakeModel {
    pub size: u64,
    pub load_ms: u64,
    pub gen_ms: u64,
    pub alloc: bool,
    pub fail_load: bool,
    pub panic_on_load: bool,
    pub fatal_on_load: bool,
    pub panic_on_generate: bool,
    pub fatal_on_generate: bool,
    pub meet: usize,
}

impl FakeModel {
    pub fn parse(spec: &str) -> Result<Self, EngineError> {
        let options = spec
            .strip_prefix("fake")
            .map(|rest| rest.trim_start_matches(':'));
        let options = options
            .ok_or_else(|| EngineError::new(ErrorKind::NotFound, format!("no model `{spec}`")))?;
        let mut model = FakeModel {
            size: 1000,
            ..Default::default()
        };
        for option in options.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            let number = || {
                value.parse::<u64>().map_err(|_| {
                    EngineError::new(ErrorKind::InvalidModel, format!("bad number in `{option}`"))
                })
            };
            match key {
                "size" => model.size = number()?,
                "load_ms" => model.load_ms = number()?,
                "gen_ms" => model.gen_ms = number()?,
                "alloc" => model.alloc = true,
                "fail_load" => model.fail_load = true,
                "panic_on_load" => model.panic_on_load = true,
                "fatal_on_load" => model.fatal_on_load = true,
                "panic_on_generate" => model.panic_on_generate = true,
                "fatal_on_generate" => model.fatal_on_generate = true,
                "meet" => model.meet = number()? as usize,
                _ => {
                    return Err(EngineError::new(
                        ErrorKind::InvalidModel,
                        format!("unknown fake option `{option}`"),
                    ))
                }
            }
        }
        Ok(model)
    }
}

/// The model spec for a fake model string.
pub fn spec(model: &str) -> ModelSpec {
    ModelSpec {
        model: model.to_owned(),
        dtype: None,
        canonical: false,
        park: None,
    }
}

/// The tokens a fake engine makes for a prompt: deterministic, so tests can check outputs.
pub fn expected_tokens(prompt: &[u32], n: usize) -> Vec<u32> {
    let seed: u32 = prompt.iter().fold(0u32, |a, b| a.wrapping_add(*b));
    (0..n as u32).map(|i| (seed + i * 7) % 1000).collect()
}

fn prompt_ids(prompt: &Prompt) -> Vec<u32> {
    match prompt {
        Prompt::Ids(ids) => ids.clone(),
        Prompt::Text(text) => text.bytes().map(u32::from).collect(),
        Prompt::Chat(messages) => messages
            .iter()
            .flat_map(|m| m.content.bytes().map(u32::from))
            .collect(),
        Prompt::ChatWith(chat) => chat
            .messages
            .iter()
            .flat_map(|m| m.content.bytes().map(u32::from))
            .collect(),
    }
}

/// Shared observations and knobs of a fake backend.
#[derive(Default)]
pub struct FakeState {
    /// Every generate call, in the order engines saw them: `(model, prompt ids)`.
    pub generated: Mutex<Vec<(String, Vec<u32>)>>,
    /// Every generation that returned an output: `(prompt ids, tokens made, finish reason)`.
    pub finished: Mutex<Vec<(Vec<u32>, usize, FinishReason)>>,
    /// Engines alive now (created and not dropped).
    pub live_engines: AtomicI64,
    /// How many times a device was opened.
    pub opens: AtomicU32,
    /// The next this many `open_device` calls fail.
    pub open_failures: AtomicU32,
    /// Generations running now, on every engine.
    pub running: AtomicUsize,
    /// The most generations that ever ran at the same time.
    pub max_running: AtomicUsize,
    /// The next this many memory queries fail.
    pub memory_failures: AtomicU32,
}

/// One generation in progress; dropping it (also on an error or a panic) counts it out.
struct Running(Arc<FakeState>);

impl Running {
    /// Counts a generation in and waits, up to 10 s, until `meet` have been running at once.
    fn enter(state: &Arc<FakeState>, meet: usize) -> Self {
        let now = state.running.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_running.fetch_max(now, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.max_running.load(Ordering::SeqCst) < meet && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        Running(state.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A backend whose devices have `memory_bytes` each and take `prewarm_ms` to open.
#[derive(Clone)]
pub struct FakeBackend {
    pub memory_bytes: u64,
    pub prewarm_ms: u64,
    pub state: Arc<FakeState>,
}

impl FakeBackend {
    pub fn new(memory_bytes: u64) -> Self {
        Self {
            memory_bytes,
            prewarm_ms: 5,
            state: Arc::default(),
        }
    }
}

impl Backend for FakeBackend {
    fn inspect(&self, spec: &ModelSpec) -> Result<Footprint, EngineError> {
        let model = FakeModel::parse(&spec.model)?;
        Ok(Footprint {
            device_bytes: model.size,
            kv_bytes_per_token: 0,
            file_bytes: model.size,
            dtype: spec.dtype.unwrap_or(DType::F32),
            handoff: Default::default(),
            weights: String::new(),
        })
    }

    fn open_device(
        &self,
        _device: &DeviceSpec,
        options: &PrewarmOptions,
    ) -> Result<(Box<dyn WorkerDevice>, PrewarmReport), EngineError> {
        self.state.opens.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .state
            .open_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(EngineError::new(
                ErrorKind::DeviceFatal,
                "fake device refused to open",
            ));
        }
        std::thread::sleep(Duration::from_millis(self.prewarm_ms));
        let total = match options.memory_limit_bytes {
            0 => self.memory_bytes,
            limit => limit.min(self.memory_bytes),
        };
        let device = FakeDevice {
            total,
            used: Rc::new(Cell::new(0)),
            state: self.state.clone(),
        };
        let report = PrewarmReport {
            steps: vec![("context".into(), self.prewarm_ms as f64)],
            total_ms: self.prewarm_ms as f64,
            pid: None,
            peer: None,
        };
        Ok((Box::new(device), report))
    }
}

/// A runtime config of `count` CPU workers with test-friendly timeouts.
pub fn config(count: usize) -> RuntimeConfig {
    RuntimeConfig {
        workers: vec![WorkerConfig {
            device: DeviceSpec::Cpu,
            count,
            prewarm: PrewarmOptions::default(),
        }],
        options: RuntimeOptions {
            attach_timeout: Duration::from_secs(30),
            max_restarts: 3,
            restart_backoff: Duration::from_millis(20),
            ..RuntimeOptions::default()
        },
    }
}

/// A generate request for token ids.
pub fn request(prompt: &[u32], max_new_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Ids(prompt.to_vec()),
        max_new_tokens,
        ..Default::default()
    }
}

/// Awaits `future`, failing the test (instead of hanging) after a generous `secs`.
pub async fn within<T>(secs: u64, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {secs} s"),
    }
}

/// Polls the worker list until `check` holds for it, failing after a generous `secs`.
pub async fn wait_for_workers(
    handle: &Handle,
    secs: u64,
    what: &str,
    check: impl Fn(&[WorkerInfo]) -> bool,
) -> Vec<WorkerInfo> {
    let poll = async {
        loop {
            let workers = handle.list_workers().await.expect("runtime running");
            if check(&workers) {
                return workers;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    within(secs, what, poll).await
}

/// Waits until at least one attach is queued for a busy worker.
pub async fn wait_for_queued_attach(handle: &Handle) {
    let queued = async {
        while handle.stats().await.unwrap().attaches_waiting == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    within(30, "attach queued", queued).await;
}

/// The first prompt id of every generation the fake engines ran, in order.
pub fn generated_firsts(backend: &FakeBackend) -> Vec<u32> {
    backend
        .state
        .generated
        .lock()
        .unwrap()
        .iter()
        .map(|(_, prompt)| prompt[0])
        .collect()
}
