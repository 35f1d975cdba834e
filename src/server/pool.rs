//! Attaching with room made: evicts the least recently used idle engine past its keep_alive.
//!
//! Every attach the server makes (explicit or on demand) goes through [`Pool::attach`], one at a
//! time, so that two attaches never pick the same victim or race for the same free worker.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wc_actors::{
    Attach, AttachReport, DetachReport, EngineId, EngineInfo, EngineRef, Handle, WorkerInfo,
    WorkerState,
};

use super::error::ApiError;
use super::metrics::Metrics;
use super::openai::unix_now;
use crate::config::{KeepAlive, ModelConfig};

/// What the server remembers about an engine it attached.
#[derive(Clone, Copy, Debug)]
pub struct EngineMeta {
    pub keep_alive: KeepAlive,
    /// Unix seconds of the attach (`created` in `/v1/models`).
    pub created: u64,
}

/// The server's side of the engine pool.
pub struct Pool {
    handle: Handle,
    /// Per engine: keep_alive and attach time.
    meta: Mutex<HashMap<EngineId, EngineMeta>>,
    /// Held while making room and attaching, so placement decisions do not interleave.
    placing: tokio::sync::Mutex<()>,
    /// Per configured model: when its last on-demand attach failed, and why. Requests that
    /// were already waiting for that attach get the same answer instead of trying again.
    failed: Mutex<HashMap<String, (Instant, ApiError)>>,
}

impl Pool {
    pub fn new(handle: Handle) -> Self {
        Self {
            handle,
            meta: Mutex::new(HashMap::new()),
            placing: tokio::sync::Mutex::new(()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    fn meta_map(&self) -> std::sync::MutexGuard<'_, HashMap<EngineId, EngineMeta>> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the server remembers about `engine` (engines it did not attach live for ever).
    pub fn meta(&self, engine: EngineId) -> EngineMeta {
        self.meta_map().get(&engine).copied().unwrap_or(EngineMeta {
            keep_alive: KeepAlive::Forever,
            created: unix_now(),
        })
    }

    /// Attaches, detaching an evictable engine first when no matching worker is idle.
    pub async fn attach(
        &self,
        attach: Attach,
        keep_alive: KeepAlive,
        metrics: &Metrics,
        on_demand: bool,
    ) -> Result<AttachReport, ApiError> {
        let _placing = self.placing.lock().await;
        self.attach_placed(attach, keep_alive, metrics, on_demand)
            .await
    }

    /// Makes sure the configured `model` is attached under its own name (attaching it on
    /// demand); concurrent callers for one model share one attach.
    pub async fn ensure(&self, model: &ModelConfig, metrics: &Metrics) -> Result<(), ApiError> {
        let asked = Instant::now();
        let _placing = self.placing.lock().await;
        let engines = self.list_engines().await?;
        if engines.iter().any(|e| e.name == model.name()) {
            return Ok(());
        }
        let earlier = self
            .failures()
            .get(model.name())
            .filter(|(at, _)| *at >= asked)
            .map(|(_, e)| e.clone());
        if let Some(error) = earlier {
            return Err(error);
        }
        let attach = Attach::new(model.spec()).named(model.name());
        let result = self
            .attach_placed(attach, model.keep_alive, metrics, true)
            .await;
        match result {
            Ok(_) => {
                self.failures().remove(model.name());
                Ok(())
            }
            Err(error) => {
                self.failures()
                    .insert(model.name().to_owned(), (Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, ApiError)>> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn attach_placed(
        &self,
        attach: Attach,
        keep_alive: KeepAlive,
        metrics: &Metrics,
        on_demand: bool,
    ) -> Result<AttachReport, ApiError> {
        self.make_room(&attach, metrics).await?;
        let report = self.handle.attach(attach).await?;
        self.meta_map().insert(
            report.engine_id,
            EngineMeta {
                keep_alive,
                created: unix_now(),
            },
        );
        metrics.attach(&report, on_demand);
        Ok(report)
    }

    /// Detaches an engine on request.
    pub async fn detach(
        &self,
        engine: EngineRef,
        metrics: &Metrics,
    ) -> Result<DetachReport, ApiError> {
        let report = self.handle.detach(engine).await?;
        self.meta_map().remove(&report.engine_id);
        metrics.detach(report.detach_ms, false);
        Ok(report)
    }

    /// When no worker the attach may use is idle, detaches the least recently used engine on
    /// such a worker that is idle and past its keep_alive (if any).
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
        if workers
            .iter()
            .any(|w| usable(w) && w.state == WorkerState::Idle)
        {
            return Ok(());
        }
        let engines = self.list_engines().await?;
        self.meta_map()
            .retain(|id, _| engines.iter().any(|e| e.engine_id == *id));
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
        // A model that cannot load must not cost a working engine its place.
        self.handle.inspect(attach.model.clone()).await?;
        tracing::info!(
            engine = %victim.engine_id,
            name = %victim.name,
            worker = victim.worker,
            idle_ms = victim.idle_ms,
            "evicting the least recently used idle engine to make room"
        );
        match self.handle.detach(victim.engine_id).await {
            Ok(report) => {
                self.meta_map().remove(&report.engine_id);
                metrics.detach(report.detach_ms, true);
            }
            // Someone else detached it meanwhile, or its worker failed: the attach will wait.
            Err(e) => tracing::warn!(name = %victim.name, error = %e, "eviction failed"),
        }
        Ok(())
    }

    async fn list_engines(&self) -> Result<Vec<EngineInfo>, ApiError> {
        self.handle
            .list_engines()
            .await
            .map_err(|_| ApiError::shutting_down())
    }
}
