//! A backend wrapper whose engines count the generations running at once and wait for each other, so a test can prove that two generations overlapped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wc_actors::{
    Backend, DeviceSpec, Engine, EngineError, Footprint, GenerateOutput, GenerateRequest, Handoff,
    MemoryInfo, ModelSpec, PrewarmOptions, PrewarmReport, Timeline, TokenEvent, WorkerDevice,
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
}

impl Meeting {
    /// The most generations that ran at the same time so far.
    pub fn max_running(&self) -> usize {
        self.most.load(Ordering::SeqCst)
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
        let (inner, bytes) = self.inner.load(spec, handoff, timeline)?;
        let engine = MeetingEngine {
            inner,
            meeting: self.meeting.clone(),
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
}

impl Engine for MeetingEngine {
    fn generate(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<GenerateOutput, EngineError> {
        let _running = Running::enter(&self.meeting);
        self.inner.generate(request, on_token)
    }

    fn warm_up(&mut self) -> Result<u32, EngineError> {
        self.inner.warm_up()
    }

    fn device_bytes(&self) -> u64 {
        self.inner.device_bytes()
    }
}
