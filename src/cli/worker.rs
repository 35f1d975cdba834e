//! `worker`: one worker process started by `serve` (or the bench).

use std::sync::Arc;

/// Serves one worker for the controller that started this process, until it lets go.
pub fn run() -> anyhow::Result<()> {
    super::allocator::keep_freed_host_memory(false);
    crate::server::logging::init(super::log_format_from_env());
    wc_actors::process::serve_worker(Arc::new(crate::CandleBackend::default()));
    Ok(())
}
