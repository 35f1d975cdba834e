//! A backend wrapper whose engines count the generations (one-at-a-time `generate` calls or
//! batched `step`s) running at once and wait for each other, so a test can prove that two
//! engines' work overlapped. The wrapper forwards `batch()` and `prompt_encoder()`, so the
//! runtime drives the inner engine the way `serve` does; it also records the steps run, the
//! one-at-a-time generations and the largest batch stepped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wc_actors::{
    Admission, Backend, BatchEngine, DeviceSpec, Engine, EngineError, Footprint, GenerateOutput,
    GenerateRequest, Handoff, KvUsage, MemoryInfo, ModelSpec, PrewarmOptions, PrewarmReport,
    PromptEncoder, SeqEvent, SeqId, Timeline, TokenEvent, WorkerDevice,
};

/// How long a generation waits for the others before it goes on alone (and the count stays low).
const PATIENCE: Duration = Duration::from_secs(10);

/// Generations running now and the most that ever ran at once.
#[derive(Debug, Default)]
pub struct Meeting {
    /// Each generation waits (up to [`PATIENCE`]) until this many have been running at once.
    pub meet: usize,
    running: AtomicUsize,
    most: AtomicUsize,
    steps: AtomicUsize,
    generations: AtomicUsize,
    largest_batch: AtomicUsize,
    cancels: AtomicUsize,
    /// Tokens each sequence made, by id (one engine's ids: tests reading it attach one).
    tokens: Mutex<HashMap<SeqId, usize>>,
    /// Tokens a step made for a sequence already cancelled.
    tokens_after_cancel: AtomicUsize,
}

impl Meeting {
    /// The most generations (or steps) that ran at the same time so far.
    pub fn max_running(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }

    /// Batched steps run so far, by every engine.
    pub fn steps(&self) -> usize {
        self.steps.load(Ordering::SeqCst)
    }

    /// One-at-a-time `Engine::generate` calls so far, by every engine.
    pub fn generations(&self) -> usize {
        self.generations.load(Ordering::SeqCst)
    }

    /// The most sequences one step ran together so far.
    pub fn largest_batch(&self) -> usize {
        self.largest_batch.load(Ordering::SeqCst)
    }

    /// Sequences cancelled so far.
    pub fn cancels(&self) -> usize {
        self.cancels.load(Ordering::SeqCst)
    }

    /// Tokens sequence `id` made so far.
    pub fn tokens_of(&self, id: SeqId) -> usize {
        let tokens = self.tokens.lock().unwrap();
        tokens.get(&id).copied().unwrap_or(0)
    }

    /// Tokens made for sequences after they were cancelled.
    pub fn tokens_after_cancel(&self) -> usize {
        self.tokens_after_cancel.load(Ordering::SeqCst)
    }

    /// Starts recording the largest batch afresh.
    pub fn reset_largest_batch(&self) {
        self.largest_batch.store(0, Ordering::SeqCst);
    }
}

/// One generation in progress; leaving it (also by an error or a panic) counts it out.
struct Running<'a>(&'a Meeting);

impl<'a> Running<'a> {
    fn enter(meeting: &'a Meeting) -> Self {
        let now = meeting.running.fetch_add(1, Ordering::SeqCst) + 1;
        meeting.most.fetch_max(now, Ordering::SeqCst);
        let deadline = Instant::now() + PATIENCE;
        while meeting.max_running() < meeting.meet && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        Running(meeting)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `inner`, with every engine's generations counted by `meeting`.
pub struct MeetingBackend<B> {
    pub inner: B,
    pub meeting: Arc<Meeting>,
}

impl<B> MeetingBackend<B> {
    /// Generations wait until `meet` of them run at once.
    pub fn new(inner: B, meet: usize) -> Self {
        let meeting = Arc::new(Meeting {
            meet,
            ..Meeting::default()
        });
        Self { inner, meeting }
    }
}

impl<B: Backend> Backend for MeetingBackend<B> {
    fn inspect(&self, spec: &ModelSpec) -> Result<Footprint, EngineError> {
        self.inner.inspect(spec)
    }

    fn open_device(
        &self,
        device: &DeviceSpec,
        options: &PrewarmOptions,
    ) -> Result<(Box<dyn WorkerDevice>, PrewarmReport), EngineError> {
        let (inner, report) = self.inner.open_device(device, options)?;
        let device = MeetingDevice {
            inner,
            meeting: self.meeting.clone(),
        };
        Ok((Box::new(device), report))
    }
}

struct MeetingDevice {
    inner: Box<dyn WorkerDevice>,
    meeting: Arc<Meeting>,
}

impl WorkerDevice for MeetingDevice {
    fn memory(&self) -> Result<MemoryInfo, EngineError> {
        self.inner.memory()
    }

    fn load(
        &mut self,
        spec: &ModelSpec,
        handoff: &Handoff,
        timeline: &mut Timeline,
    ) -> Result<(Box<dyn Engine>, u64), EngineError> {
        let (mut inner, bytes) = self.inner.load(spec, handoff, timeline)?;
        let kv = inner.batch().map(|b| b.kv_usage()).unwrap_or_default();
        let engine = MeetingEngine {
            inner,
            meeting: self.meeting.clone(),
            in_batch: HashSet::new(),
            cancelled: HashSet::new(),
            kv,
        };
        Ok((Box::new(engine), bytes))
    }

    fn synchronize(&self) -> Result<(), EngineError> {
        self.inner.synchronize()
    }
}

struct MeetingEngine {
    inner: Box<dyn Engine>,
    meeting: Arc<Meeting>,
    /// The sequences admitted and neither finished nor cancelled.
    in_batch: HashSet<SeqId>,
    cancelled: HashSet<SeqId>,
    /// The inner batch's usage after the last admit, step or cancel (reading it needs `&mut`).
    kv: KvUsage,
}

impl MeetingEngine {
    fn inner_batch(&mut self) -> &mut dyn BatchEngine {
        self.inner
            .batch()
            .expect("batch() was Some when the runtime asked")
    }
}

impl Engine for MeetingEngine {
    fn generate(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<GenerateOutput, EngineError> {
        self.meeting.generations.fetch_add(1, Ordering::SeqCst);
        let _running = Running::enter(&self.meeting);
        self.inner.generate(request, on_token)
    }

    fn warm_up(&mut self) -> Result<u32, EngineError> {
        self.inner.warm_up()
    }

    fn device_bytes(&self) -> u64 {
        self.inner.device_bytes()
    }

    fn prompt_encoder(&self) -> Option<Arc<dyn PromptEncoder>> {
        self.inner.prompt_encoder()
    }

    fn batch(&mut self) -> Option<&mut dyn BatchEngine> {
        if self.inner.batch().is_some() {
            Some(self)
        } else {
            None
        }
    }
}

impl BatchEngine for MeetingEngine {
    fn admit(&mut self, id: SeqId, request: &GenerateRequest) -> Result<Admission, EngineError> {
        let admission = self.inner_batch().admit(id, request);
        self.kv = self.inner_batch().kv_usage();
        if matches!(admission, Ok(Admission::Admitted)) {
            self.in_batch.insert(id);
        }
        admission
    }

    fn step(&mut self) -> Result<Vec<SeqEvent>, EngineError> {
        self.meeting.steps.fetch_add(1, Ordering::SeqCst);
        let size = self.in_batch.len();
        self.meeting.largest_batch.fetch_max(size, Ordering::SeqCst);
        let meeting = self.meeting.clone();
        let _running = Running::enter(&meeting);
        let events = self.inner_batch().step();
        self.kv = self.inner_batch().kv_usage();
        let events = events?;
        for event in &events {
            match event {
                SeqEvent::Finished(id, _) => {
                    self.in_batch.remove(id);
                }
                SeqEvent::Token(id, _) => {
                    *self.meeting.tokens.lock().unwrap().entry(*id).or_default() += 1;
                    if self.cancelled.contains(id) {
                        self.meeting
                            .tokens_after_cancel
                            .fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
        Ok(events)
    }

    fn cancel(&mut self, id: SeqId) {
        self.meeting.cancels.fetch_add(1, Ordering::SeqCst);
        self.in_batch.remove(&id);
        self.cancelled.insert(id);
        self.inner_batch().cancel(id);
        self.kv = self.inner_batch().kv_usage();
    }

    fn kv_usage(&self) -> KvUsage {
        self.kv
    }
}
