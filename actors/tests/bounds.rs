//! Bounds: an engine's waiting queue and the attach waiters have limits that refuse at once, and a
//! caller that goes away frees its place instead of having its request run for nobody.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use wc_actors::*;

/// Polls the engine listing until `ready` holds for engine 0.
async fn wait_for_engine(handle: &Handle, what: &str, ready: impl Fn(&EngineInfo) -> bool) {
    let poll = async {
        loop {
            let engines = handle.list_engines().await.unwrap();
            if engines.first().is_some_and(&ready) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    within(30, what, poll).await;
}

#[actix_rt::test]
async fn a_full_queue_refuses_at_once_and_the_queued_requests_still_finish() {
    let mut config = config(1);
    config.options.max_waiting_requests = 2;
    let backend = FakeBackend::new(1_000_000);
    let handle = Runtime::start(config, Arc::new(backend.clone()));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    handle
        .attach(Attach::new(spec("fake:gen_ms=50")).named("e"))
        .await
        .unwrap();
    // Far longer than the test waits (600 tokens at 50 ms): it runs until its caller leaves.
    let running = actix_rt::spawn(handle.generate("e", request(&[1], 600)));
    wait_for_engine(&handle, "first running", |e| e.requests_running == 1).await;
    let queued: Vec<_> = (2..4u32)
        .map(|i| actix_rt::spawn(handle.generate("e", request(&[i], 1))))
        .collect();
    wait_for_engine(&handle, "two waiting", |e| e.requests_waiting == 2).await;
    // An engine that does not batch runs one and has no KV-cache budget to report.
    let engine = handle.list_engines().await.unwrap().remove(0);
    assert_eq!(engine.requests_running, 1);
    assert_eq!(
        (engine.kv_cache_tokens_budget, engine.kv_cache_usage),
        (0, 0.0)
    );

    let refused = handle.generate("e", request(&[9], 1)).await;
    assert!(
        matches!(refused, Err(GenerateError::QueueFull { waiting: 2, .. })),
        "{refused:?}"
    );
    assert_eq!(refused.unwrap_err().status_code(), 503);
    // Refused at once: nothing moved in the queue meanwhile (the first still runs, both
    // still wait, none of them started).
    let engine = handle.list_engines().await.unwrap().remove(0);
    assert_eq!(
        (engine.requests_running, engine.requests_waiting),
        (1, 2),
        "{engine:?}"
    );
    assert_eq!(generated_firsts(&backend), [1]);

    // The first's caller leaves: it stops at its next token and the queued ones run.
    running.abort();
    for reply in queued {
        within(30, "queued", reply).await.unwrap().unwrap();
    }
    let prompts: Vec<u32> = generated_firsts(&backend);
    assert_eq!(
        prompts,
        [1, 2, 3],
        "the refused request never reached the engine"
    );
    handle.shutdown().await;
}

#[actix_rt::test]
async fn a_caller_that_goes_away_frees_its_place_in_the_queue_and_stops_its_generation() {
    let backend = FakeBackend::new(1_000_000);
    let handle = Runtime::start(config(1), Arc::new(backend.clone()));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    handle
        .attach(Attach::new(spec("fake:gen_ms=40")).named("e"))
        .await
        .unwrap();
    // A long request whose caller leaves while it runs.
    let abandoned_running = actix_rt::spawn(handle.generate("e", request(&[1], 200)));
    let engine_started = async {
        while backend.state.generated.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    within(30, "the engine started the first request", engine_started).await;
    // One whose caller leaves while it waits, and one that stays.
    let abandoned_waiting = actix_rt::spawn(handle.generate("e", request(&[2], 3)));
    let kept = actix_rt::spawn(handle.generate("e", request(&[3], 3)));
    wait_for_engine(&handle, "two waiting", |e| e.requests_waiting == 2).await;
    abandoned_waiting.abort();
    abandoned_running.abort();

    let output = within(30, "the kept request", kept).await.unwrap().unwrap();
    assert_eq!(output.new_tokens, expected_tokens(&[3], 3));
    // The abandoned one stopped early (cancelled, short of its 200 tokens) before the kept
    // one ran.
    let finished = backend.state.finished.lock().unwrap().clone();
    assert_eq!(finished.len(), 2, "{finished:?}");
    let (prompt, tokens, reason) = &finished[0];
    assert_eq!(prompt, &[1]);
    assert_eq!(*reason, FinishReason::Cancelled, "{finished:?}");
    assert!(*tokens < 200, "{finished:?}");
    let prompts: Vec<u32> = generated_firsts(&backend);
    assert_eq!(prompts, [1, 3], "the abandoned waiting request was skipped");
    wait_for_engine(&handle, "queue empty", |e| {
        e.requests_running == 0 && e.requests_waiting == 0
    })
    .await;
    handle.shutdown().await;
}

#[actix_rt::test]
async fn too_many_waiting_attaches_are_refused_at_once() {
    let mut config = config(1);
    config.options.max_waiting_attaches = 1;
    config.options.attach_timeout = Duration::from_secs(60);
    let handle = Runtime::start(config, Arc::new(FakeBackend::new(1_000_000)));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    let first = handle
        .attach(Attach::new(spec("fake")).named("first"))
        .await
        .unwrap();
    let waiting = actix_rt::spawn(handle.attach(Attach::new(spec("fake")).named("second")));
    wait_for_queued_attach(&handle).await;
    let refused = handle
        .attach(Attach::new(spec("fake")).named("third"))
        .await;
    assert!(
        matches!(refused, Err(AttachError::TooManyWaiting { waiting: 1 })),
        "{refused:?}"
    );
    handle.detach(first.engine_id).await.unwrap();
    let second = within(30, "waiting attach", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.name, "second");
    handle.shutdown().await;
}

#[actix_rt::test]
async fn engine_names_follow_the_rule() {
    let handle = Runtime::start(config(1), Arc::new(FakeBackend::new(1_000_000)));
    within(30, "prewarm", handle.wait_ready()).await.unwrap();
    for bad in ["", "12", "a/b", "white space", ".."] {
        let refused = handle.attach(Attach::new(spec("fake")).named(bad)).await;
        assert!(
            matches!(refused, Err(AttachError::InvalidName { .. })),
            "{bad:?}: {refused:?}"
        );
    }
    let report = handle
        .attach(Attach::new(spec("fake")).named("ok-name_1.2"))
        .await
        .unwrap();
    // A numeric reference is the id, never a name.
    let id = report.engine_id.0.to_string();
    assert!(handle
        .generate(EngineRef::Name(id), request(&[5], 1))
        .await
        .is_ok());
    handle.shutdown().await;
}
