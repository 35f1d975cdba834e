//! Attach, generate, stream and detach through the public handle; refusals that fail at once.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use wc_actors::*;

#[actix_rt::test]
async fn attach_generate_detach_then_reattach_on_the_same_worker() {
    let backend = FakeBackend::new(1_000_000);
    let handle = Runtime::start(config(1), Arc::new(backend.clone()));
    let workers = within(30, "prewarm", handle.wait_ready()).await.unwrap();
    assert_eq!(workers[0].state, WorkerState::Idle);
    let baseline = workers[0].memory.clone().unwrap();

    let report = within(
        30,
        "attach",
        handle.attach(Attach::new(spec("fake:size=5000")).named("a")),
    )
    .await
    .unwrap();
    assert_eq!(report.worker, 0);
    assert_eq!(report.name, "a");
    assert_eq!(report.bytes_moved, 5000);
    assert_eq!(report.memory_before, baseline);
    assert_eq!(
        report.memory_attached.used_bytes(),
        baseline.used_bytes() + 5000
    );
    let anchors: Vec<Anchor> = report.timeline.marks.iter().map(|(a, _)| *a).collect();
    assert!(anchors.contains(&Anchor::Requested) && anchors.contains(&Anchor::FirstToken));
    assert_eq!(
        report.phases.len(),
        6,
        "one phase per anchor after requested"
    );
    let skipped = &report.phases[..2];
    assert!(
        skipped.iter().all(|p| p.ms == 0.0),
        "prewarmed steps are zero phases"
    );
    let sum: f64 = report.phases.iter().map(|p| p.ms).sum();
    assert!(
        (sum - report.total_ms).abs() < 1e-6,
        "phases add up to the total"
    );
    assert!(report.prewarm.is_some());

    let output = within(30, "generate", handle.generate("a", request(&[1, 2, 3], 5)))
        .await
        .unwrap();
    assert_eq!(output.new_tokens, expected_tokens(&[1, 2, 3], 5));
    assert_eq!(output.finish_reason, FinishReason::Length);

    let engines = handle.list_engines().await.unwrap();
    assert_eq!(engines.len(), 1);
    assert_eq!((engines[0].total_requests, engines[0].total_tokens), (1, 5));
    assert_eq!(engines[0].requests_running + engines[0].requests_waiting, 0);

    let detached = within(30, "detach", handle.detach(report.engine_id))
        .await
        .unwrap();
    assert_eq!(detached.memory_after_detach, baseline);
    assert_eq!(detached.memory_before_attach, baseline);
    assert_eq!(backend.state.live_engines.load(Ordering::SeqCst), 0);
    let workers = handle.list_workers().await.unwrap();
    assert_eq!(workers[0].state, WorkerState::Idle);
    assert!(handle.list_engines().await.unwrap().is_empty());

    let gone = handle.generate("a", request(&[1], 1)).await.unwrap_err();
    assert!(
        matches!(gone, GenerateError::EngineNotFound { .. }),
        "{gone:?}"
    );
    assert_eq!(gone.status_code(), 404);

    // The same name and the same worker can be used again.
    let again = within(
        30,
        "re-attach",
        handle.attach(Attach::new(spec("fake")).named("a")),
    )
    .await
    .unwrap();
    assert_eq!(again.worker, 0);
    assert_ne!(again.engine_id, report.engine_id);
    let output = handle
        .generate(again.engine_id, request(&[9], 2))
        .await
        .unwrap();
    assert_eq!(output.new_tokens, expected_tokens(&[9], 2));

    let stats = handle.stats().await.unwrap();
    assert_eq!((stats.attaches_succeeded, stats.detaches), (2, 1));
    assert_eq!((stats.requests_total, stats.requests_failed), (3, 1));
    handle.shutdown().await;
}

#[actix_rt::test]
async fn two_engines_on_two_workers_answer_at_once() {
    let backend = FakeBackend::new(1_000_000);
    let handle = Runtime::start(config(2), Arc::new(backend.clone()));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    // Each generation waits (up to 10 s) for the other to be running too.
    let a = handle.attach(Attach::new(spec("fake:gen_ms=2,meet=2")).named("a"));
    let b = handle.attach(Attach::new(spec("fake:gen_ms=2,meet=2")).named("b"));
    let (a, b) = within(30, "attaches", async { (a.await, b.await) }).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.worker, b.worker, "each engine has a worker of its own");

    let ga = handle.generate("a", request(&[1], 20));
    let gb = handle.generate("b", request(&[2], 20));
    let (ga, gb) = within(30, "generates", async { (ga.await, gb.await) }).await;
    assert_eq!(ga.unwrap().new_tokens, expected_tokens(&[1], 20));
    assert_eq!(gb.unwrap().new_tokens, expected_tokens(&[2], 20));
    assert_eq!(
        backend.state.max_running.load(Ordering::SeqCst),
        2,
        "the two generations overlapped"
    );

    let workers = handle.list_workers().await.unwrap();
    assert!(workers.iter().all(|w| w.state == WorkerState::Serving));
    assert_eq!(handle.list_engines().await.unwrap().len(), 2);
    handle.shutdown().await;
    assert_eq!(backend.state.live_engines.load(Ordering::SeqCst), 0);
}

#[actix_rt::test]
async fn streaming_yields_each_token_and_matches_the_final_output() {
    let handle = Runtime::start(config(1), Arc::new(FakeBackend::new(1_000_000)));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    handle
        .attach(Attach::new(spec("fake:gen_ms=1")).named("s"))
        .await
        .unwrap();

    let mut stream = handle.generate_stream("s", request(&[4, 5], 12));
    let mut ids = Vec::new();
    let mut text = String::new();
    let collect = async {
        while let Some(token) = stream.tokens.recv().await {
            ids.push(token.id);
            text.push_str(&token.text);
        }
    };
    within(30, "stream", collect).await;
    let output = within(30, "output", stream.output).await.unwrap();
    assert_eq!(ids.len(), 12);
    assert_eq!(ids, output.new_tokens);
    assert_eq!(text, output.text);
    handle.shutdown().await;
}

#[actix_rt::test]
async fn dropping_the_stream_cancels_generation_and_the_engine_keeps_serving() {
    let handle = Runtime::start(config(1), Arc::new(FakeBackend::new(1_000_000)));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    handle
        .attach(Attach::new(spec("fake:gen_ms=5")).named("s"))
        .await
        .unwrap();

    let mut stream = handle.generate_stream("s", request(&[1], 100_000));
    for _ in 0..3 {
        within(30, "first tokens", stream.tokens.recv())
            .await
            .expect("a token");
    }
    drop(stream.tokens);
    let output = within(60, "cancelled output", stream.output).await.unwrap();
    assert_eq!(output.finish_reason, FinishReason::Cancelled);
    assert!(output.new_tokens.len() < 100_000);

    let next = within(30, "next", handle.generate("s", request(&[2], 3)))
        .await
        .unwrap();
    assert_eq!(next.new_tokens, expected_tokens(&[2], 3));
    handle.shutdown().await;
}

#[actix_rt::test]
async fn a_model_too_large_for_every_worker_fails_at_once_with_both_sizes() {
    let handle = Runtime::start(config(2), Arc::new(FakeBackend::new(10_000)));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    // The attach timeout is 30 s: failing within 10 s means it did not wait for a worker.
    let error = within(
        10,
        "attach",
        handle.attach(Attach::new(spec("fake:size=1234567"))),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, AttachError::DoesNotFit { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("1234567") && message.contains("10000"),
        "{message}"
    );
    assert_eq!(error.status_code(), 507);
    assert_eq!(error.error_type(), "does_not_fit");
    let workers = handle.list_workers().await.unwrap();
    assert!(workers.iter().all(|w| w.state == WorkerState::Idle));
    handle.shutdown().await;
}

#[actix_rt::test]
async fn a_failed_load_leaves_the_worker_idle_with_its_memory_back() {
    let backend = FakeBackend::new(1_000_000);
    let handle = Runtime::start(config(1), Arc::new(backend.clone()));
    let baseline = within(30, "prewarm", handle.wait_ready()).await.unwrap()[0]
        .memory
        .clone();

    let error = within(
        30,
        "attach",
        handle.attach(Attach::new(spec("fake:size=5000,fail_load"))),
    )
    .await
    .unwrap_err();
    match &error {
        AttachError::Load(e) => assert_eq!(e.kind, ErrorKind::InvalidModel),
        other => panic!("expected a load error, got {other:?}"),
    }
    assert_eq!(error.status_code(), 422);
    let worker = &handle.list_workers().await.unwrap()[0];
    assert_eq!(worker.state, WorkerState::Idle);
    assert_eq!(worker.memory, baseline);
    assert_eq!(
        worker.failures, 0,
        "an ordinary load error is not a worker failure"
    );

    let missing = handle
        .attach(Attach::new(spec("hub/nope")))
        .await
        .unwrap_err();
    assert_eq!(missing.status_code(), 404, "{missing}");

    // The worker is still usable.
    handle.attach(Attach::new(spec("fake"))).await.unwrap();
    handle.shutdown().await;
}

#[actix_rt::test]
async fn a_name_in_use_is_refused_and_bad_placements_are_typed() {
    let handle = Runtime::start(config(2), Arc::new(FakeBackend::new(1_000_000)));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    handle
        .attach(Attach::new(spec("fake")).named("x"))
        .await
        .unwrap();
    let error = handle
        .attach(Attach::new(spec("fake")).named("x"))
        .await
        .unwrap_err();
    assert_eq!(error, AttachError::NameInUse { name: "x".into() });
    assert_eq!(error.status_code(), 409);

    let error = handle
        .attach(Attach::new(spec("fake")).on_worker(7))
        .await
        .unwrap_err();
    assert_eq!(error, AttachError::UnknownWorker { worker: 7 });
    let error = handle
        .attach(Attach::new(spec("fake")).on_device(DeviceSpec::Cuda(3)))
        .await
        .unwrap_err();
    assert!(
        matches!(error, AttachError::NoWorkerOnDevice { .. }),
        "{error:?}"
    );

    let error = handle.detach("nope").await.unwrap_err();
    assert!(matches!(error, DetachError::EngineNotFound { .. }));
    assert_eq!(error.status_code(), 404);

    // An ordinary engine error fails the request, not the worker.
    let error = handle.generate("x", request(&[], 3)).await.unwrap_err();
    assert_eq!(error.status_code(), 400, "{error}");
    let ok = handle.generate("x", request(&[3], 3)).await.unwrap();
    assert_eq!(ok.new_tokens.len(), 3);
    handle.shutdown().await;
}

#[actix_rt::test]
async fn shutdown_detaches_every_engine_and_refuses_new_work() {
    let backend = FakeBackend::new(1_000_000);
    let handle = Runtime::start(config(2), Arc::new(backend.clone()));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    handle.attach(Attach::new(spec("fake"))).await.unwrap();
    handle.attach(Attach::new(spec("fake"))).await.unwrap();
    assert_eq!(backend.state.live_engines.load(Ordering::SeqCst), 2);

    within(30, "shutdown", handle.shutdown()).await;
    assert_eq!(backend.state.live_engines.load(Ordering::SeqCst), 0);
    assert!(handle.list_engines().await.unwrap().is_empty());
    let workers = handle.list_workers().await.unwrap();
    assert!(workers.iter().all(|w| w.state == WorkerState::Stopped));
    let error = handle.attach(Attach::new(spec("fake"))).await.unwrap_err();
    assert_eq!(error, AttachError::ShuttingDown);
}

#[actix_rt::test]
async fn an_attach_still_loading_at_shutdown_is_refused_and_leaves_no_engine() {
    let backend = FakeBackend::new(1_000_000);
    let handle = Runtime::start(config(1), Arc::new(backend.clone()));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    let attach = handle.attach(Attach::new(spec("fake:load_ms=400")));
    wait_for_workers(&handle, 30, "attaching", |w| {
        w[0].state == WorkerState::Attaching
    })
    .await;
    let (attached, ()) = within(30, "shutdown", async {
        tokio::join!(attach, handle.shutdown())
    })
    .await;
    assert_eq!(attached.unwrap_err(), AttachError::ShuttingDown);
    assert!(handle.list_engines().await.unwrap().is_empty());
    let workers = handle.list_workers().await.unwrap();
    assert_eq!(workers[0].state, WorkerState::Stopped);
    assert_eq!(workers[0].failures, 0, "a shutdown is not a failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_tokio_program_can_embed_the_runtime() {
    let handle = Runtime::start_in_background(config(1), Arc::new(FakeBackend::new(1_000_000)));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    let report = within(30, "attach", handle.attach(Attach::new(spec("fake"))))
        .await
        .unwrap();
    let clone = handle.clone();
    let output =
        tokio::spawn(async move { clone.generate(report.engine_id, request(&[7], 4)).await })
            .await
            .unwrap()
            .unwrap();
    assert_eq!(output.new_tokens, expected_tokens(&[7], 4));
    within(30, "shutdown", handle.shutdown()).await;
    let stopped = async {
        while handle.list_workers().await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    within(30, "system stop", stopped).await;
    let error = handle
        .generate(report.engine_id, request(&[7], 4))
        .await
        .unwrap_err();
    assert_eq!(error.status_code(), 503);
}
