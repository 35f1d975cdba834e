//! `worker`: one worker process started by `serve` (or the bench), with its allocator set to keep the host memory engines free.

use std::sync::Arc;

/// Serves one worker for the controller that started this process, until it lets go.
pub fn run() -> anyhow::Result<()> {
    keep_freed_host_memory();
    crate::server::logging::init(super::log_format_from_env());
    wc_actors::process::serve_worker(Arc::new(crate::CandleBackend));
    Ok(())
}

/// Keeps the host memory a detached engine freed inside this process, for the next engine,
/// instead of handing it back to the OS and faulting every page in again on the next attach.
///
/// glibc returns the top of its heap to the OS once more than `M_TRIM_THRESHOLD` is free, and by
/// default serves blocks from 128 KiB up to a threshold that moves with every free from fresh
/// `mmap`s. A worker process does little besides its engine, so after a detach nearly all of its
/// heap is free and was trimmed: on CPU the next OPT-125m attach (500 MB of weights copied out
/// of the host cache) took ~120k page faults, and `requested → first_token` p50 was 381 ms in a
/// worker process against 158 ms on a worker thread, whose allocator arena kept its memory
/// (benchmarks/cpu-2026-11-28-isolation-decode). Blocks of 32 MiB and more still come from
/// `mmap` and go back on free, so a large model's tensors never pin a large heap. This is the
/// host-side match of the device memory pool a CUDA worker keeps; the worker's reported memory
/// counts engine bytes, not the heap, so placement is unchanged.
fn keep_freed_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc allocator parameters; it is called before this process
    // starts any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
