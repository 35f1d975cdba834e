//! A worker process's signs of life: the heartbeat its main thread keeps (a silent process is
//! a hung one, and is restarted), and its death with its parent.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::timeline::monotonic_ns;

/// How often the heartbeat thread looks, and how stale a beat may be before it stays silent.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(200);
const STALE_AFTER_NS: u64 = 1_000_000_000;

/// The main thread's signs of life.
#[derive(Default)]
pub(super) struct Beat {
    last_ns: AtomicU64,
    /// Inside a step allowed to run long without beating (prewarm, load, prefill).
    long_step: AtomicBool,
}

impl Beat {
    /// A beat taken now, and a thread that calls `alive` every [`HEARTBEAT_EVERY`] while the
    /// beat is fresh (or a long step runs).
    pub(super) fn start(alive: impl Fn() + Send + 'static) -> Arc<Self> {
        let beat = Arc::new(Beat::default());
        beat.now();
        let watched = beat.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(HEARTBEAT_EVERY);
            if watched.alive() {
                alive();
            }
        });
        beat
    }

    pub(super) fn now(&self) {
        self.last_ns.store(monotonic_ns(), Ordering::SeqCst);
    }

    /// A step that may run long without beating begins (a prefill before its first token).
    pub(super) fn long_step_begins(&self) {
        self.long_step.store(true, Ordering::SeqCst);
    }

    /// The long step is over: beats are expected again.
    pub(super) fn long_step_ends(&self) {
        self.long_step.store(false, Ordering::SeqCst);
    }

    pub(super) fn during<T>(&self, step: impl FnOnce() -> T) -> T {
        self.long_step_begins();
        let out = step();
        self.long_step_ends();
        self.now();
        out
    }

    fn alive(&self) -> bool {
        self.long_step.load(Ordering::SeqCst)
            || monotonic_ns().saturating_sub(self.last_ns.load(Ordering::SeqCst)) < STALE_AFTER_NS
    }
}

/// Ends this process with its parent (Linux), so a dead controller leaves no worker behind.
pub(super) fn die_with_parent() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_PDEATHSIG) with a valid signal number affects only this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } == 1 {
        std::process::exit(0);
    }
}
