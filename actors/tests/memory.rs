//! Many attach/detach cycles leave process memory flat and device memory at its baseline.
//! (Its own test binary, so no other test's allocations move the process's RSS.)

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use wc_actors::*;

/// Resident set size of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("reading /proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

async fn cycle(handle: &Handle) {
    // Each engine really allocates 4 MiB of host memory: a leak of one per cycle is obvious.
    let attach = handle.attach(Attach::new(spec("fake:size=4194304,alloc")).named("m"));
    let report = within(60, "attach", attach).await.unwrap();
    let output = handle.generate("m", request(&[1, 2], 4)).await.unwrap();
    assert_eq!(output.new_tokens.len(), 4);
    within(60, "detach", handle.detach(report.engine_id))
        .await
        .unwrap();
}

#[actix_rt::test]
async fn two_hundred_attach_detach_cycles_leave_memory_flat() {
    let backend = FakeBackend::new(64 << 20);
    let handle = Runtime::start(config(1), Arc::new(backend.clone()));
    let baseline = within(30, "prewarm", handle.wait_ready()).await.unwrap()[0]
        .memory
        .clone();

    for _ in 0..20 {
        cycle(&handle).await;
    }
    let warm = rss_bytes();
    for _ in 0..200 {
        cycle(&handle).await;
    }
    let after = rss_bytes();
    let growth = after.saturating_sub(warm);
    assert!(
        growth < 16 << 20,
        "RSS grew by {growth} bytes over 200 cycles ({warm} -> {after})"
    );

    let workers = handle.list_workers().await.unwrap();
    assert_eq!(
        workers[0].memory, baseline,
        "device memory back to baseline"
    );
    assert_eq!(workers[0].state, WorkerState::Idle);
    assert_eq!(backend.state.live_engines.load(Ordering::SeqCst), 0);
    let stats = handle.stats().await.unwrap();
    assert_eq!((stats.attaches_succeeded, stats.detaches), (220, 220));
    assert_eq!(stats.engines, 0);
    handle.shutdown().await;
}

#[actix_rt::test]
async fn a_failed_memory_query_fails_the_attach_with_its_reason_not_a_zero() {
    let backend = FakeBackend::new(1_000_000);
    let handle = Runtime::start(config(1), Arc::new(backend.clone()));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    backend.state.memory_failures.store(1, Ordering::SeqCst);
    let error = within(
        30,
        "attach",
        handle.attach(Attach::new(spec("fake:size=5000"))),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, AttachError::Load(e) if e.message.contains("fake memory query failed")),
        "{error:?}"
    );
    // The worker stays usable and the next query succeeds.
    let report = within(
        30,
        "attach",
        handle.attach(Attach::new(spec("fake:size=5000"))),
    )
    .await
    .unwrap();
    assert!(report.memory_before.free_bytes > 0);
    assert_eq!(backend.state.live_engines.load(Ordering::SeqCst), 1);
    handle.shutdown().await;
}
