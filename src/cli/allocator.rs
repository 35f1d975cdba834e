//! The host allocator of the processes that hold engines.

/// Keeps the host memory a detached engine freed inside this process, for the next engine,
/// instead of handing it back to the OS and faulting every page in again on the next attach:
/// for every process that holds engines (a worker process, `serve` and `bench`, whose worker
/// threads hold them in thread mode).
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
/// counts engine bytes, not the heap, so placement is unchanged. Worker threads need it as much:
/// glibc raises its `mmap` threshold to the size of each block freed, so after the first detach
/// an engine's KV cache (tens of MB even for the bundled tiny model) came from the heap and was
/// zeroed page by page: the tiny model's attach took 25 ms on a thread against 1.6 ms in a
/// process (benchmarks/cpu-2026-11-28-overhead).
///
/// With `engines_on_threads` (worker threads, not processes, hold the engines) every thread
/// allocates from the one main arena: glibc gives other threads arenas of 64 MiB heaps, and a
/// heap left wholly free by a detach is unmapped whatever the trim threshold, so a worker
/// thread's next attach faulted its memory in again (the tiny model's attach: 8.4 ms on a
/// thread with the thresholds alone, 3.3 ms with one arena, 3.4 ms in a worker process).
/// Small allocations still go through each thread's cache without the arena's lock.
pub fn keep_freed_host_memory(engines_on_threads: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc allocator parameters; it is called before this process
    // starts any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        if engines_on_threads {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = engines_on_threads;
}
