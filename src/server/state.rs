//! What every handler shares: the runtime handle, the configuration, the pool, metrics and flags.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use wc_actors::Handle;

use super::auth::ApiKey;
use super::hosts::HostPolicy;
use super::metrics::Metrics;
use super::model_access::ModelRoots;
use super::openai::Limits;
use super::pool::Pool;
use crate::config::Config;

/// The application state, shared by every HTTP worker thread.
pub struct AppState {
    /// The actor runtime.
    pub handle: Handle,
    /// The configuration the server started with (flags applied).
    pub config: Arc<Config>,
    /// Attaches with eviction, and what the server remembers about each engine.
    pub pool: Pool,
    pub metrics: Metrics,
    pub api_key: ApiKey,
    /// Which `Host` headers are answered.
    pub hosts: HostPolicy,
    /// Where checkpoints named by path may come from.
    pub model_roots: ModelRoots,
    /// The machine's host weight cache shared by the workers, reported once in `/workers` and
    /// `/metrics` (`None`: no cache, or each worker's own).
    pub host_cache: Option<std::sync::Arc<crate::load::shared_cache::SharedCache>>,
    /// Set once workers are prewarmed and start-up models attached.
    ready: AtomicBool,
    /// Set on Ctrl-C / SIGTERM: `/ready` says 503 and new work is refused.
    draining: AtomicBool,
}

impl AppState {
    pub fn new(handle: Handle, config: Arc<Config>) -> Self {
        let api_key = ApiKey {
            key: config.server.api_key.clone(),
            open_inference: config.server.open_inference,
        };
        Self {
            hosts: HostPolicy::new(&config.server.host, &config.server.allowed_hosts),
            model_roots: ModelRoots::from_config(&config),
            pool: Pool::new(handle.clone(), config.prewarm.kv_cache_tokens),
            handle,
            config,
            metrics: Metrics::default(),
            api_key,
            host_cache: None,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_draining()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The completion limits from `[server]`.
    pub fn limits(&self) -> Limits {
        Limits {
            max_tokens: self.config.server.max_tokens,
            default_max_tokens: self.config.server.default_max_tokens,
        }
    }
}
