//! `worker`: one worker process started by `serve` (or the bench).

use std::sync::Arc;

use anyhow::Context;

use crate::load::shared_cache::{SharedCache, FD_ENV, PAUSE_FILL_ENV};
use crate::CandleBackend;

/// Serves one worker for the controller that started this process, until it lets go.
pub fn run() -> anyhow::Result<()> {
    super::allocator::keep_freed_host_memory(false);
    crate::server::logging::init(super::log_format_from_env());
    wc_actors::process::serve_worker(Arc::new(backend()?));
    Ok(())
}

/// The backend, with the machine's shared host cache when the serving process handed one down
/// (its descriptor, inherited, named by [`FD_ENV`]).
fn backend() -> anyhow::Result<CandleBackend> {
    let Ok(fd) = std::env::var(FD_ENV) else {
        return Ok(CandleBackend::default());
    };
    let fd: i32 = fd
        .parse()
        .with_context(|| format!("{FD_ENV}={fd} is not a descriptor"))?;
    let mut cache = SharedCache::open(fd).context("mapping the shared host cache")?;
    if cfg!(any(debug_assertions, feature = "fault-injection")) {
        if let Some(marker) = std::env::var_os(PAUSE_FILL_ENV).filter(|m| !m.is_empty()) {
            cache = cache.pause_fills_at_half(marker.into());
        }
    }
    Ok(CandleBackend::with_shared_cache(Arc::new(cache)))
}
