//! Supervision: panics and fatal device errors fail only their worker, which is restarted.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use wc_actors::*;

#[actix_rt::test]
async fn a_worker_that_panics_mid_request_is_restarted_while_the_other_keeps_answering() {
    let backend = FakeBackend::new(1_000_000);
    let handle = Runtime::start(config(2), Arc::new(backend.clone()));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    let bad = handle.attach(
        Attach::new(spec("fake:panic_on_generate"))
            .named("bad")
            .on_worker(0),
    );
    let bad = within(30, "attach bad", bad).await.unwrap();
    let good = handle.attach(
        Attach::new(spec("fake:gen_ms=1"))
            .named("good")
            .on_worker(1),
    );
    within(30, "attach good", good).await.unwrap();

    // The good engine answers in a loop for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (handle, stop) = (handle.clone(), stop.clone());
        actix_rt::spawn(async move {
            let (mut answered, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match handle.generate("good", request(&[5], 3)).await {
                    Ok(out) if out.new_tokens == expected_tokens(&[5], 3) => answered += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (answered, failed)
        })
    };

    // Five requests queued to the panicking engine: the first panics, none hangs.
    let queued: Vec<_> = (0..5)
        .map(|i| handle.generate("bad", request(&[i + 1], 3)))
        .collect();
    let mut results = Vec::new();
    for reply in queued {
        results.push(within(30, "queued request to a failed engine", reply).await);
    }
    match &results[0] {
        Err(GenerateError::WorkerLost { worker: 0, reason }) => {
            assert!(reason.contains("panicked"), "{reason}")
        }
        other => panic!("the in-flight request should get WorkerLost, got {other:?}"),
    }
    for result in &results {
        assert!(
            matches!(
                result,
                Err(GenerateError::WorkerLost { .. } | GenerateError::EngineLost { .. })
            ),
            "{result:?}"
        );
    }

    let workers = wait_for_workers(&handle, 60, "worker 0 restarted", |w| {
        w[0].state == WorkerState::Idle && w[0].restarts == 1
    })
    .await;
    assert_eq!(workers[0].failures, 1);
    assert!(workers[0]
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("panicked"));
    assert_eq!(workers[1].state, WorkerState::Serving);
    assert_eq!((workers[1].failures, workers[1].restarts), (0, 0));

    // The lost engine is gone from the listing and answers as lost, by name and by id.
    let engines = handle.list_engines().await.unwrap();
    assert_eq!(
        engines.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    let lost = handle.generate("bad", request(&[1], 1)).await.unwrap_err();
    assert!(matches!(lost, GenerateError::EngineLost { .. }), "{lost:?}");
    assert_eq!(lost.status_code(), 410);
    let lost = handle.detach(bad.engine_id).await.unwrap_err();
    assert!(matches!(lost, DetachError::EngineLost { .. }), "{lost:?}");

    // The restarted worker takes a new engine.
    let again = handle.attach(Attach::new(spec("fake")).on_worker(0));
    within(30, "attach after restart", again).await.unwrap();

    stop.store(true, Ordering::SeqCst);
    let (answered, failed) = within(30, "background loop", background).await.unwrap();
    assert!(failed.is_empty(), "the other engine failed: {failed:?}");
    assert!(answered > 0);
    let stats = handle.stats().await.unwrap();
    assert_eq!((stats.worker_failures, stats.worker_restarts), (1, 1));
    handle.shutdown().await;
}

#[actix_rt::test]
async fn a_fatal_device_error_on_load_fails_the_attach_and_restarts_the_worker() {
    let handle = Runtime::start(config(1), Arc::new(FakeBackend::new(1_000_000)));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    let error = within(
        30,
        "attach",
        handle.attach(Attach::new(spec("fake:fatal_on_load"))),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, AttachError::WorkerFailed { worker: 0, .. }),
        "{error:?}"
    );
    assert_eq!(error.status_code(), 503, "the worker restarts: try again");

    let panicking = Attach::new(spec("fake:panic_on_load"));
    wait_for_workers(&handle, 60, "restart", |w| w[0].state == WorkerState::Idle).await;
    let error = within(30, "attach", handle.attach(panicking))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("panicked"), "{error}");

    let workers = wait_for_workers(&handle, 60, "second restart", |w| {
        w[0].state == WorkerState::Idle && w[0].restarts == 2
    })
    .await;
    assert_eq!(workers[0].failures, 2);
    let report = within(30, "attach", handle.attach(Attach::new(spec("fake"))))
        .await
        .unwrap();
    assert_eq!(report.worker, 0);
    handle.shutdown().await;
}

#[actix_rt::test]
async fn a_worker_that_keeps_failing_stays_failed_after_its_restarts() {
    let backend = FakeBackend::new(1_000_000);
    let mut config = config(2);
    config.options.max_restarts = 2;
    let handle = Runtime::start(config, Arc::new(backend.clone()));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    handle
        .attach(
            Attach::new(spec("fake:fatal_on_generate"))
                .named("bad")
                .on_worker(0),
        )
        .await
        .unwrap();
    handle
        .attach(Attach::new(spec("fake")).named("good").on_worker(1))
        .await
        .unwrap();

    // Every later prewarm fails.
    backend
        .state
        .open_failures
        .store(u32::MAX, Ordering::SeqCst);
    let error = within(30, "generate", handle.generate("bad", request(&[1], 2)))
        .await
        .unwrap_err();
    assert!(
        matches!(error, GenerateError::WorkerLost { worker: 0, .. }),
        "{error:?}"
    );

    let workers = wait_for_workers(&handle, 60, "worker 0 given up", |w| {
        w[0].state == WorkerState::Failed
    })
    .await;
    assert_eq!(
        workers[0].restarts, 2,
        "restarts are bounded by max_restarts"
    );
    assert_eq!(workers[0].failures, 3);
    assert!(workers[0]
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("refused to open"));
    within(30, "wait_ready with a failed worker", handle.wait_ready())
        .await
        .unwrap();

    // Attaches pinned to the dead worker fail at once; the other worker still serves.
    let error = handle
        .attach(Attach::new(spec("fake")).on_worker(0))
        .await
        .unwrap_err();
    assert_eq!(error, AttachError::NoWorkerAlive { failed: 1 });
    let ok = handle.generate("good", request(&[2], 2)).await.unwrap();
    assert_eq!(ok.new_tokens, expected_tokens(&[2], 2));
    let stats = handle.stats().await.unwrap();
    assert_eq!(stats.workers_failed, 1);
    handle.shutdown().await;
}
