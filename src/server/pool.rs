//! Attaching with room made: evicts the least recently used idle engine past its keep_alive.
//!
//! Every attach the server makes (explicit or on demand) goes through [`Pool::attach`] or
//! [`Pool::ensure`]. Deciding where room comes from (an eviction) is done one attach at a time,
//! so that two attaches never pick the same victim; waiting for a worker is not: each attach then
//! waits in the runtime's queue on its own, with its own deadline from its arrival, counted
//! against `max_waiting_attaches` (503 `too_many_waiting` beyond). An attach sent to the runtime
//! runs in a task of its own, so that its engine is recorded (keep_alive, metrics) even when the
//! request that asked for it is gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use wc_actors::{
    Attach, AttachError, AttachReport, DetachReport, DeviceSpec, EngineId, EngineInfo, EngineRef,
    Footprint, Handle, WorkerInfo, WorkerState,
};

use super::error::ApiError;
use super::metrics::Metrics;
use super::openai::unix_now;
use crate::config::{KeepAlive, ModelEntry};
use crate::load::device::host_available_bytes;
use crate::load::shorten;

/// What the server remembers about an engine it attached.
#[derive(Clone, Copy, Debug)]
pub struct EngineMeta {
    pub keep_alive: KeepAlive,
    /// Unix seconds of the attach (`created` in `/v1/models`).
    pub created: u64,
}

type MetaMap = Arc<Mutex<HashMap<EngineId, EngineMeta>>>;
/// Per configured model: when its last on-demand attach failed, and why.
type Failures = Arc<Mutex<HashMap<String, (Instant, ApiError)>>>;

/// The server's side of the engine pool.
pub struct Pool {
    handle: Handle,
    /// Per engine: keep_alive and attach time.
    meta: MetaMap,
    /// Held while deciding whether to evict (and evicting), never while an attach waits.
    placing: tokio::sync::Mutex<()>,
    /// Attaches sent to the runtime and not answered yet (see [`Claim`]).
    attaching: Arc<AtomicUsize>,
    /// Per configured model: one on-demand attach at a time; held by the attach's task.
    ensuring: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Requests that were already waiting for a failed on-demand attach get the same answer
    /// instead of trying again.
    failed: Failures,
    /// Each worker's KV-cache budget in tokens (`[prewarm] kv_cache_tokens`): what a model's
    /// footprint needs beside its weights, for the fit check before an eviction.
    kv_cache_tokens: usize,
}

/// One attach counted in [`Pool::attaching`] until it is answered (dropped).
struct Claim(Arc<AtomicUsize>);

impl Claim {
    fn new(attaching: &Arc<AtomicUsize>) -> Self {
        attaching.fetch_add(1, Ordering::SeqCst);
        Self(attaching.clone())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub fn new(handle: Handle, kv_cache_tokens: usize) -> Self {
        Self {
            kv_cache_tokens,
            handle,
            meta: MetaMap::default(),
            placing: tokio::sync::Mutex::new(()),
            attaching: Arc::default(),
            ensuring: Mutex::new(HashMap::new()),
            failed: Failures::default(),
        }
    }

    /// What the server remembers about `engine` (engines it did not attach live for ever).
    pub fn meta(&self, engine: EngineId) -> EngineMeta {
        locked(&self.meta)
            .get(&engine)
            .copied()
            .unwrap_or(EngineMeta {
                keep_alive: KeepAlive::Forever,
                created: unix_now(),
            })
    }

    /// Attaches, detaching an evictable engine first when no matching worker is free.
    pub async fn attach(
        &self,
        attach: Attach,
        keep_alive: KeepAlive,
        metrics: &Metrics,
        on_demand: bool,
    ) -> Result<AttachReport, ApiError> {
        let claim = self.place(&attach, metrics).await?;
        self.send(attach, keep_alive, metrics, on_demand, claim, |_| {})
            .await
    }

    /// Makes sure the configured `model` is attached under its own name (attaching it on
    /// demand); concurrent callers for one model share one attach.
    pub async fn ensure(&self, model: &ModelEntry, metrics: &Metrics) -> Result<(), ApiError> {
        let asked = Instant::now();
        let turn = self.model_turn(model.name()).lock_owned().await;
        let engines = self.list_engines().await?;
        if engines.iter().any(|e| e.name == model.name()) {
            return Ok(());
        }
        let earlier = locked(&self.failed)
            .get(model.name())
            .filter(|(at, _)| *at >= asked)
            .map(|(_, e)| e.clone());
        if let Some(error) = earlier {
            return Err(error);
        }
        let attach = Attach::new(model.spec()).named(model.name());
        let (failed, name) = (self.failed.clone(), model.name().to_owned());
        // Kept until the attach is answered, even if this request is gone meanwhile.
        let answered = move |result: &Result<AttachReport, ApiError>| {
            match result {
                Ok(_) => locked(&failed).remove(&name),
                Err(error) => locked(&failed).insert(name, (Instant::now(), error.clone())),
            };
            drop(turn);
        };
        let claim = match self.place(&attach, metrics).await {
            Ok(claim) => claim,
            Err(error) => {
                answered(&Err(error.clone()));
                return Err(error);
            }
        };
        self.send(attach, model.keep_alive, metrics, true, claim, answered)
            .await
            .map(|_| ())
    }

    /// The lock that lets one on-demand attach of `model` run at a time.
    fn model_turn(&self, model: &str) -> Arc<tokio::sync::Mutex<()>> {
        locked(&self.ensuring)
            .entry(model.to_owned())
            .or_default()
            .clone()
    }

    /// Makes room for `attach` (one attach at a time) and claims it.
    async fn place(&self, attach: &Attach, metrics: &Metrics) -> Result<Claim, ApiError> {
        let _placing = self.placing.lock().await;
        self.make_room(attach, metrics).await?;
        Ok(Claim::new(&self.attaching))
    }

    /// Sends `attach` to the runtime in a task of its own and waits for its answer; the task
    /// records the engine (and calls `answered`) whether or not anyone still waits.
    fn send(
        &self,
        attach: Attach,
        keep_alive: KeepAlive,
        metrics: &Metrics,
        on_demand: bool,
        claim: Claim,
        answered: impl FnOnce(&Result<AttachReport, ApiError>) + 'static,
    ) -> impl std::future::Future<Output = Result<AttachReport, ApiError>> {
        let (meta, metrics) = (self.meta.clone(), metrics.clone());
        let attached = self.handle.attach(attach);
        let task = actix_web::rt::spawn(async move {
            let result = attached.await.map_err(ApiError::from);
            drop(claim);
            if let Ok(report) = &result {
                let created = unix_now();
                let engine = EngineMeta {
                    keep_alive,
                    created,
                };
                locked(&meta).insert(report.engine_id, engine);
                metrics.attach(report, on_demand);
            }
            answered(&result);
            result
        });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("the attach task failed: {e}"),
                ))
            })
        }
    }

    /// Detaches an engine on request.
    pub async fn detach(
        &self,
        engine: EngineRef,
        metrics: &Metrics,
    ) -> Result<DetachReport, ApiError> {
        let report = self.handle.detach(engine).await?;
        locked(&self.meta).remove(&report.engine_id);
        metrics.detach(report.detach_ms, false);
        Ok(report)
    }

    /// When every worker the attach may use that is idle is already claimed by an attach not
    /// placed yet, detaches the least recently used engine on such a worker that is idle and
    /// past its keep_alive (if any).
    async fn make_room(&self, attach: &Attach, metrics: &Metrics) -> Result<(), ApiError> {
        let workers = self
            .handle
            .list_workers()
            .await
            .map_err(|_| ApiError::shutting_down())?;
        let usable = |w: &WorkerInfo| {
            attach.worker.is_none_or(|i| i == w.worker)
                && attach.device.as_ref().is_none_or(|d| *d == w.device)
        };
        let count = |state: WorkerState| workers.iter().filter(|w| w.state == state).count();
        let idle = workers
            .iter()
            .filter(|w| usable(w) && w.state == WorkerState::Idle)
            .count();
        // Attaches sent but not on a worker yet will take idle workers first.
        let unplaced = self
            .attaching
            .load(Ordering::SeqCst)
            .saturating_sub(count(WorkerState::Attaching));
        if idle > unplaced {
            return Ok(());
        }
        let engines = self.list_engines().await?;
        locked(&self.meta).retain(|id, _| engines.iter().any(|e| e.engine_id == *id));
        let victim = engines
            .iter()
            .filter(|e| workers.iter().any(|w| w.worker == e.worker && usable(w)))
            .filter(|e| e.requests_running == 0 && e.requests_waiting == 0)
            .filter(|e| {
                self.meta(e.engine_id)
                    .keep_alive
                    .expired(Duration::from_millis(e.idle_ms))
            })
            .max_by_key(|e| e.idle_ms);
        let Some(victim) = victim else {
            return Ok(());
        };
        // A model that cannot load, or would not fit once the victim is gone, must not cost a
        // working engine its place.
        let footprint = self.handle.inspect(attach.model.clone()).await?;
        if let Some(worker) = workers.iter().find(|w| w.worker == victim.worker) {
            self.check_fits_after_eviction(&footprint, worker, victim)?;
        }
        tracing::info!(
            engine = %victim.engine_id,
            name = %victim.name,
            worker = victim.worker,
            idle_ms = victim.idle_ms,
            "evicting the least recently used idle engine to make room"
        );
        match self.handle.detach(victim.engine_id).await {
            Ok(report) => {
                locked(&self.meta).remove(&report.engine_id);
                metrics.detach(report.detach_ms, true);
            }
            // Someone else detached it meanwhile, or its worker failed: the attach will wait.
            Err(e) => tracing::warn!(name = %victim.name, error = %e, "eviction failed"),
        }
        Ok(())
    }

    /// Refuses a model that would not fit `worker` even with `victim` detached: its weights and
    /// full KV budget against the worker's free memory plus the victim's, and on a CPU worker
    /// against what the host has available plus the victim's.
    fn check_fits_after_eviction(
        &self,
        footprint: &Footprint,
        worker: &WorkerInfo,
        victim: &EngineInfo,
    ) -> Result<(), ApiError> {
        let Some(memory) = &worker.memory else {
            return Ok(());
        };
        let needed = footprint.needed_bytes(self.kv_cache_tokens);
        let mut room = memory.free_bytes.saturating_add(victim.device_bytes);
        if worker.device == DeviceSpec::Cpu {
            room = room.min(host_available_bytes().saturating_add(victim.device_bytes));
        }
        if needed <= room {
            return Ok(());
        }
        tracing::info!(
            needed,
            room,
            victim = %shorten(&victim.name),
            "not evicting: the model would not fit even with the victim gone"
        );
        Err(AttachError::DoesNotFit {
            needed_bytes: needed,
            free_bytes: room,
        }
        .into())
    }

    async fn list_engines(&self) -> Result<Vec<EngineInfo>, ApiError> {
        self.handle
            .list_engines()
            .await
            .map_err(|_| ApiError::shutting_down())
    }
}
