//! Concurrency: slow attaches do not block listings, contended attaches all get an answer, and
//! one engine serves concurrent requests in order.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use wc_actors::*;

#[actix_rt::test]
async fn a_slow_attach_does_not_block_listing_workers() {
    let handle = Runtime::start(config(1), Arc::new(FakeBackend::new(1_000_000)));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    let attach = handle.attach(Attach::new(spec("fake:load_ms=2000")).named("slow"));
    let attach = actix_rt::spawn(attach);

    // Answered while the attach runs: the worker is seen `attaching`, which it is only until
    // the attach finishes.
    let workers = wait_for_workers(&handle, 30, "attaching state", |w| {
        w[0].state == WorkerState::Attaching
    })
    .await;
    assert!(workers[0].engine.is_some());
    assert!(
        !attach.is_finished(),
        "the listing came back before the attach did"
    );
    assert!(handle.list_engines().await.unwrap().is_empty());
    assert!(handle.stats().await.is_ok());

    let report = within(60, "slow attach", attach).await.unwrap().unwrap();
    assert_eq!(report.name, "slow");
    let workers = handle.list_workers().await.unwrap();
    assert_eq!(workers[0].state, WorkerState::Serving);
    handle.shutdown().await;
}

#[actix_rt::test]
async fn fifty_concurrent_attaches_on_two_workers_all_get_an_answer() {
    let backend = FakeBackend::new(1_000_000);
    let mut config = config(2);
    config.options.attach_timeout = Duration::from_millis(300);
    let handle = Runtime::start(config, Arc::new(backend.clone()));
    let baseline = within(30, "prewarm", handle.wait_ready()).await.unwrap();

    // Each attach that succeeds detaches again, so waiting attaches get the freed workers.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let handle = handle.clone();
            let attach = handle.attach(Attach::new(spec("fake:load_ms=10")));
            actix_rt::spawn(async move {
                let result = attach.await;
                if let Ok(report) = &result {
                    handle.detach(report.engine_id).await.unwrap();
                }
                result
            })
        })
        .collect();
    let (mut succeeded, mut no_free_worker, mut other) = (0, 0, Vec::new());
    let mut workers_used = std::collections::BTreeSet::new();
    for task in tasks {
        match within(60, "an attach", task).await.unwrap() {
            Ok(report) => {
                succeeded += 1;
                workers_used.insert(report.worker);
            }
            Err(AttachError::NoFreeWorker { waited_ms }) => {
                assert!(waited_ms >= 300, "waited {waited_ms} ms");
                no_free_worker += 1;
            }
            Err(e) => other.push(e),
        }
    }
    assert!(other.is_empty(), "unexpected errors: {other:?}");
    assert_eq!(
        succeeded + no_free_worker,
        50,
        "every attach got exactly one answer"
    );
    // The first two attaches find both workers free (the rest may time out: how many do
    // depends on scheduling, so only the workers that served are checked).
    assert_eq!(
        workers_used.into_iter().collect::<Vec<_>>(),
        [0, 1],
        "both workers were used"
    );

    let stats = handle.stats().await.unwrap();
    assert_eq!(stats.attaches_succeeded + stats.attaches_failed, 50);
    assert_eq!(stats.attaches_waiting, 0);
    let workers = handle.list_workers().await.unwrap();
    for (now, before) in workers.iter().zip(&baseline) {
        assert_eq!(now.state, WorkerState::Idle);
        assert_eq!(now.memory, before.memory);
    }
    handle.shutdown().await;
}

#[actix_rt::test]
async fn a_busy_worker_frees_up_for_a_waiting_attach() {
    let mut config = config(1);
    config.options.attach_timeout = Duration::from_secs(60);
    let handle = Runtime::start(config, Arc::new(FakeBackend::new(1_000_000)));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    let first = handle
        .attach(Attach::new(spec("fake")).named("first"))
        .await
        .unwrap();
    let waiting = actix_rt::spawn(handle.attach(Attach::new(spec("fake")).named("second")));
    wait_for_queued_attach(&handle).await;
    handle.detach(first.engine_id).await.unwrap();
    let second = within(30, "waiting attach", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.worker, 0);
    handle.shutdown().await;
}

#[actix_rt::test]
async fn concurrent_generates_to_one_engine_are_all_answered_in_order() {
    let backend = FakeBackend::new(1_000_000);
    let handle = Runtime::start(config(1), Arc::new(backend.clone()));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    handle
        .attach(Attach::new(spec("fake:gen_ms=1")).named("e"))
        .await
        .unwrap();

    // Queued in this order when each call is made; awaited all together afterwards.
    let replies: Vec<_> = (0..40u32)
        .map(|i| actix_rt::spawn(handle.generate("e", request(&[i, 100], 4))))
        .collect();
    // All 40 were sent (each call queues its message) before this listing, which the
    // controller answers after forwarding them: every one not yet answered counts, running
    // or waiting, and at most those the engine had started (read after it) were answered.
    let running = handle.list_engines().await.unwrap();
    let started = generated_firsts(&backend).len();
    let in_flight = running[0].requests_running + running[0].requests_waiting;
    assert!(
        in_flight <= 40 && in_flight + started >= 40,
        "{in_flight} in flight with {started} started: {:?}",
        running[0]
    );
    assert!(running[0].requests_running <= 1, "one at a time");
    for (i, reply) in replies.into_iter().enumerate() {
        let output = within(60, "a generate", reply).await.unwrap().unwrap();
        assert_eq!(output.new_tokens, expected_tokens(&[i as u32, 100], 4));
    }
    let order: Vec<u32> = generated_firsts(&backend);
    assert_eq!(
        order,
        (0..40).collect::<Vec<_>>(),
        "served in the order sent"
    );
    let engine = &handle.list_engines().await.unwrap()[0];
    assert_eq!((engine.total_requests, engine.total_tokens), (40, 160));
    handle.shutdown().await;
}
