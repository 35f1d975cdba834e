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

/// One prewarmed worker behind the actor runtime, driven from synchronous code (two for the
/// peer path: the model attached on worker 0 and kept serving, each start attached on worker 1
/// and copied from worker 0).
pub struct ControllerPath {
    handle: Handle,
    runtime: tokio::runtime::Runtime,
    dtype: Option<DType>,
    /// The peer path: the model whose source engine is attached on worker 0.
    peer: Option<PeerSource>,
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
        Self::start_on(std::slice::from_ref(device), dtype, prewarm, worker_exe)
    }

    /// The peer path: worker 0 on `source` holds the model (attached once, serving), and each
    /// start attaches it on worker 1 on `device`, copied from worker 0 (threads of this
    /// process: a peer copy between worker processes is not built).
    pub fn start_peer(
        source: &DeviceSpec,
        device: &DeviceSpec,
        dtype: Option<DType>,
        prewarm: PrewarmOptions,
    ) -> anyhow::Result<Self> {
        let mut path = Self::start_on(&[source.clone(), device.clone()], dtype, prewarm, None)?;
        path.peer = Some(PeerSource::default());
        Ok(path)
    }

    fn start_on(
        devices: &[DeviceSpec],
        dtype: Option<DType>,
        prewarm: PrewarmOptions,
        worker_exe: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let config = RuntimeConfig {
            workers: devices
                .iter()
                .map(|device| WorkerConfig {
                    device: device.clone(),
                    count: 1,
                    prewarm: prewarm.clone(),
                })
                .collect(),
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
        // The worker each start attaches on: the last.
        let baseline_free_bytes = workers
            .last()
            .and_then(|w| w.memory.as_ref())
            .map_or(0, |m| m.free_bytes);
        Ok(Self {
            handle,
            runtime,
            dtype,
            peer: None,
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
        let target = match self.peer.is_some() {
            true => Some(self.ensure_source(&spec)?),
            false => None,
        };
        let attach = Attach {
            worker: target,
            ..Attach::new(spec)
        };
        let report = self.runtime.block_on(self.handle.attach(attach))?;
        anyhow::ensure!(
            target.is_none() || report.source.starts_with("peer:"),
            "the peer path's attach came from `{}`, not a peer: {}",
            report.source,
            report
                .source_fallback
                .as_deref()
                .unwrap_or("no reason given")
        );
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

    /// The peer path: `spec` attached on worker 0 (the engine before it detached); returns the
    /// worker each start attaches on.
    fn ensure_source(&mut self, spec: &ModelSpec) -> anyhow::Result<usize> {
        let peer = self.peer.as_mut().expect("the peer path");
        if peer.model.as_deref() == Some(spec.model.as_str()) {
            return Ok(1);
        }
        if let Some(engine) = peer.engine.take() {
            self.runtime.block_on(self.handle.detach(engine))?;
        }
        let attach = Attach {
            worker: Some(0),
            ..Attach::new(spec.clone())
        };
        let report = self
            .runtime
            .block_on(self.handle.attach(attach))
            .context("attaching the peer path's source engine")?;
        peer.engine = Some(EngineRef::Id(report.engine_id));
        peer.model = Some(spec.model.clone());
        Ok(1)
    }

    /// Detaches everything and stops the worker.
    pub fn stop(&mut self) {
        self.runtime.block_on(self.handle.shutdown());
    }
}

/// The peer path's source: the model attached on worker 0 and its engine.
#[derive(Default)]
struct PeerSource {
    model: Option<String>,
    engine: Option<EngineRef>,
}
