//! The controller path of the bench: a prewarmed worker that attaches, makes a first token, detaches.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use wc_actors::process::{ProcessBackend, WorkerCommand};
use wc_actors::{
    Attach, Backend, DType, DeviceSpec, EngineRef, Handle, ModelSpec, PrewarmOptions, Runtime,
    RuntimeConfig, Timeline, WorkerConfig,
};

use super::decode::{self, DecodeRecord};
use super::results::RunMemory;
use crate::backend::CandleBackend;

/// This process's resident set size, from `/proc/self/statm` (0 where it cannot be read).
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// One prewarmed worker behind the actor runtime, driven from synchronous code.
pub struct ControllerPath {
    handle: Handle,
    runtime: tokio::runtime::Runtime,
    dtype: Option<DType>,
    /// The worker's free device memory once prewarmed.
    baseline_free_bytes: u64,
    /// How long the worker's prewarm took (context, kernels, staging), in milliseconds.
    pub prewarm_ms: f64,
}

impl ControllerPath {
    /// Starts the runtime with one worker on `device`, prewarmed as `prewarm` says (a host
    /// cache of 0: off, so every attach reads the checkpoint from the page cache).
    /// With `worker_exe`, the worker runs in its own process of that program (the server's
    /// default isolation); without, on a thread of this one.
    pub fn start(
        device: &DeviceSpec,
        dtype: Option<DType>,
        prewarm: PrewarmOptions,
        worker_exe: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let config = RuntimeConfig {
            workers: vec![WorkerConfig {
                device: device.clone(),
                count: 1,
                prewarm,
            }],
            ..RuntimeConfig::default()
        };
        let local: Arc<dyn Backend> = Arc::new(CandleBackend::default());
        let backend: Arc<dyn Backend> = match worker_exe {
            Some(exe) => Arc::new(ProcessBackend::new(
                local,
                WorkerCommand {
                    exe: exe.to_path_buf(),
                    args: vec!["worker".into()],
                    env: Vec::new(),
                    heartbeat_timeout: std::time::Duration::from_secs(60),
                },
            )),
            None => local,
        };
        let handle = Runtime::start_in_background(config, backend);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let workers = runtime
            .block_on(handle.wait_ready())
            .context("prewarming the controller's worker")?;
        let prewarm_ms = workers
            .iter()
            .filter_map(|w| w.prewarm.as_ref())
            .map(|p| p.total_ms)
            .sum();
        let baseline_free_bytes = workers
            .iter()
            .filter_map(|w| w.memory.as_ref())
            .map(|m| m.free_bytes)
            .sum();
        Ok(Self {
            handle,
            runtime,
            dtype,
            baseline_free_bytes,
            prewarm_ms,
        })
    }

    /// Attaches `model`, takes the report's anchors (through `first_token`), streams
    /// `decode_tokens` tokens from it when that is not 0 (timed as [`decode::measure`] says),
    /// and detaches.
    pub fn start_engine(
        &mut self,
        model: &str,
        decode_tokens: usize,
    ) -> anyhow::Result<(Timeline, u64, Option<DecodeRecord>, Option<RunMemory>)> {
        let spec = ModelSpec {
            model: model.to_string(),
            dtype: self.dtype,
            canonical: false,
            park: None,
        };
        let report = self
            .runtime
            .block_on(self.handle.attach(Attach::new(spec)))?;
        let engine = EngineRef::Id(report.engine_id);
        let decoded = match decode_tokens {
            0 => None,
            n => Some(
                self.runtime
                    .block_on(decode::measure(&self.handle, engine.clone(), n))
                    .context("decoding after the attach")?,
            ),
        };
        let detached = self.runtime.block_on(self.handle.detach(engine))?;
        let memory = RunMemory {
            baseline_free_bytes: self.baseline_free_bytes,
            after_detach_free_bytes: detached.memory_after_detach.free_bytes,
            rss_bytes: resident_bytes(),
        };
        Ok((report.timeline, report.bytes_moved, decoded, Some(memory)))
    }

    /// Detaches everything and stops the worker.
    pub fn stop(&mut self) {
        self.runtime.block_on(self.handle.shutdown());
    }
}
