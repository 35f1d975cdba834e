//! Ctrl-C / SIGTERM: the first signal starts a graceful drain, a second one exits at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// Exit status of a second Ctrl-C (128 + SIGINT, as shells report an interrupted program).
pub const FORCED_EXIT_CODE: i32 = 130;

/// Installs the process's signal handler (SIGINT, SIGTERM, SIGHUP); the receiver gets one
/// message on the first signal. The handler can be installed once per process.
pub fn on_signal() -> Result<mpsc::UnboundedReceiver<()>, ctrlc::Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    let count = Arc::new(AtomicUsize::new(0));
    ctrlc::set_handler(move || {
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            tracing::info!("signal received: shutting down gracefully (again to exit at once)");
            let _ = tx.send(());
        } else {
            eprintln!("second signal: exiting now");
            std::process::exit(FORCED_EXIT_CODE);
        }
    })?;
    Ok(rx)
}
