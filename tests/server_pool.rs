//! On-demand attach (Ollama-style) and least-recently-used eviction past `keep_alive`; attaches
//! waiting side by side within their bound; readiness and workers lost (failed for good, or
//! stopped) before or under an attach; a detached engine's series leaving `/metrics`.

mod server_common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server_common::{model_entry, reference, send_only, Response, Server};

const PRENORM: &str = "tiny-opt-prenorm";
const POSTNORM: &str = "tiny-opt-postnorm-proj";

fn ask(server: &Server, model: &str, fixture: &str) {
    let (prompt, _, greedy) = &reference(fixture)[0];
    let reply = server.post(
        "/v1/completions",
        &json!({"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(reply.status, 200, "{model}: {}", reply.body);
    assert_eq!(
        reply.json()["choices"][0]["text"],
        greedy.as_str(),
        "{model}"
    );
}

fn model_ids(server: &Server) -> Vec<String> {
    let mut ids: Vec<String> = server.get("/v1/models").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "attached")
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn metric(server: &Server, name: &str) -> f64 {
    let text = server.get("/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in\n{text}"))
}

#[test]
fn configured_models_attach_on_demand_and_the_least_recently_used_idle_one_is_evicted() {
    // Two workers, three models that may be evicted as soon as they are idle.
    let config = format!(
        "[runtime]\nattach_timeout = \"2s\"\n\n[[workers]]\ndevice = \"cpu\"\ncount = 2\n\n{}{}{}",
        model_entry("a", PRENORM, false, "0s"),
        model_entry("b", POSTNORM, false, "0s"),
        model_entry("c", PRENORM, false, "0s"),
    );
    let server = Server::start("lru", &config);
    assert!(model_ids(&server).is_empty(), "nothing attached at start");

    // Eight concurrent first requests for `a` share one on-demand attach.
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| ask(&server, "a", PRENORM));
        }
    });
    assert_eq!(model_ids(&server), ["a"]);
    assert_eq!(metric(&server, "wc_on_demand_attaches_total"), 1.0);

    ask(&server, "b", POSTNORM);
    assert_eq!(model_ids(&server), ["a", "b"]);
    // `a` is now the most recently used; `b` the least.
    std::thread::sleep(std::time::Duration::from_millis(20));
    ask(&server, "a", PRENORM);
    ask(&server, "c", PRENORM);
    assert_eq!(model_ids(&server), ["a", "c"], "b was evicted, not a");
    assert_eq!(metric(&server, "wc_evictions_total"), 1.0);
    // And back: `b` evicts `a`, the least recently used now.
    ask(&server, "b", POSTNORM);
    assert_eq!(model_ids(&server), ["b", "c"]);
    assert_eq!(metric(&server, "wc_evictions_total"), 2.0);
}

#[test]
fn engines_within_keep_alive_are_not_evicted_and_the_request_gets_503() {
    let config = format!(
        "[runtime]\nattach_timeout = \"5s\"\n\n[[workers]]\ndevice = \"cpu\"\n\n{}{}",
        model_entry("kept", PRENORM, true, "1h"),
        model_entry("other", POSTNORM, false, "-1"),
    );
    let server = Server::start("keep-alive", &config);
    // Four requests wait for one on-demand attach; when it fails they all get its answer
    // together: one failed attach, not one attach timeout after another. (The timeout is
    // generous so that all four arrive while the first attach waits, however busy the box.)
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let reply =
                    server.post("/v1/completions", &json!({"model": "other", "prompt": "x"}));
                reply.assert_error(503, "no_free_worker");
                assert!(reply.header("retry-after").is_some());
            });
        }
    });
    assert_eq!(
        metric(&server, "wc_attaches_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(model_ids(&server), ["kept"]);
    ask(&server, "kept", PRENORM);
    // Detached by hand, the worker is free: `other` attaches on demand.
    assert_eq!(server.request("DELETE", "/engines/kept", None).status, 200);
    ask(&server, "other", POSTNORM);
    assert_eq!(model_ids(&server), ["other"]);
}

/// Five attaches at once for one worker that stays busy (its engine may not be evicted).
fn attach_storm(server: &Server, names: &[&str]) -> Vec<(Response, Duration)> {
    let started = Instant::now();
    std::thread::scope(|s| {
        let runs: Vec<_> = names
            .iter()
            .map(|name| {
                let body = json!({"model": "other", "name": name});
                s.spawn(move || (server.post("/engines", &body), started.elapsed()))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

#[test]
fn concurrent_attaches_wait_side_by_side_and_those_over_the_bound_are_refused_at_once() {
    let config = format!(
        "[runtime]\nattach_timeout = \"2s\"\nmax_waiting_attaches = 3\n\n\
         [[workers]]\ndevice = \"cpu\"\n\n{}{}",
        model_entry("kept", PRENORM, true, "1h"),
        model_entry("other", POSTNORM, false, "1h"),
    );
    let server = Server::start("attach-waiters", &config);
    let replies = attach_storm(&server, &["a", "b", "c", "d", "e"]);
    let waited: Vec<_> = replies
        .iter()
        .filter(|(r, _)| r.json()["error"]["type"] == "no_free_worker")
        .collect();
    let refused: Vec<_> = replies
        .iter()
        .filter(|(r, _)| r.json()["error"]["type"] == "too_many_waiting")
        .collect();
    assert_eq!((waited.len(), refused.len()), (3, 2), "{replies:?}");
    // Each waiter's deadline runs from its own arrival: all answer after about one
    // attach_timeout, not one after another (2 s, 4 s, 6 s).
    for (reply, at) in &waited {
        reply.assert_error(503, "no_free_worker");
        assert!(*at < Duration::from_millis(3500), "answered after {at:?}");
    }
    // One over the bound is told at once.
    for (reply, at) in &refused {
        reply.assert_error(503, "too_many_waiting");
        assert!(reply.header("retry-after").is_some());
        assert!(*at < Duration::from_millis(1500), "answered after {at:?}");
    }

    // Attaches whose clients left give their places up: three sent and abandoned ...
    let abandoned: Vec<_> = ["x", "y", "z"]
        .iter()
        .map(|name| {
            send_only(
                &server.addr,
                "/engines",
                &json!({"model": "other", "name": name}),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(abandoned);
    std::thread::sleep(Duration::from_millis(200));
    // ... so three more wait (and time out) instead of being refused.
    let replies = attach_storm(&server, &["f", "g", "h"]);
    for (reply, _) in &replies {
        reply.assert_error(503, "no_free_worker");
    }
    assert_eq!(model_ids(&server), ["kept"]);
}

/// The `/workers` entries.
fn workers(server: &Server) -> Vec<Value> {
    server.get("/workers").json()["workers"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits (30 s at most) until worker `index` satisfies `done`; returns it.
fn worker_when(server: &Server, index: usize, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let worker = workers(server)[index].clone();
        if done(&worker) {
            return worker;
        }
        assert!(Instant::now() < deadline, "never reached: {worker}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(worker: &Value, signal: i32) {
    let pid = worker["prewarm"]["pid"].as_i64().expect("a worker process") as i32;
    // SAFETY: kill(2) on the pid of a worker process this test's server started.
    unsafe { libc::kill(pid, signal) };
}

#[test]
fn a_server_whose_every_worker_failed_for_good_is_not_ready() {
    let config = format!(
        "[runtime]\nmax_restarts = 0\n\n[[workers]]\ndevice = \"cpu\"\n\n{}",
        model_entry("other", POSTNORM, false, "1h"),
    );
    let server = Server::start("ready-failed", &config);
    assert_eq!(server.get("/ready").status, 200);
    signal(&workers(&server)[0], libc::SIGKILL);
    worker_when(&server, 0, |w| w["state"] == "failed");
    for probe in ["/ready", "/v2/health/ready"] {
        server.get(probe).assert_error(503, "no_worker_ready");
    }
    assert_eq!(metric(&server, "wc_ready"), 0.0);
    // Alive, though: the process answers, and says why nothing can be attached.
    assert_eq!(server.get("/health").status, 200);
    let reply = server.post("/v1/completions", &json!({"model": "other", "prompt": "x"}));
    reply.assert_error(503, "no_worker_alive");
    assert!(reply.body.contains("failed for good"), "{}", reply.body);
}

/// Two CPU workers; a worker process silent for 2 s is taken for hung.
fn two_workers_with_heartbeat() -> String {
    format!(
        "[runtime]\nheartbeat_timeout = \"2s\"\nrestart_backoff = \"50ms\"\nattach_timeout = \"20s\"\n\n\
         [[workers]]\ndevice = \"cpu\"\ncount = 2\n\n{}",
        model_entry("other", POSTNORM, false, "1h"),
    )
}

#[test]
fn an_attach_placed_on_a_stopped_worker_is_placed_again_on_a_free_one() {
    let server = Server::start("attach-elsewhere", &two_workers_with_heartbeat());
    let stopped = workers(&server)[0].clone();
    signal(&stopped, libc::SIGSTOP);
    // Worker 0 is idle (as far as anyone knows yet) and first in line: the attach goes there,
    // hears nothing for 2 s, and is placed again on worker 1.
    let reply = server.post("/engines", &json!({"model": "other"}));
    signal(&stopped, libc::SIGKILL);
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.json()["worker"], 1, "{}", reply.body);
    worker_when(&server, 0, |w| w["failures"] == 1);
}

#[test]
fn a_stopped_idle_worker_is_found_by_its_heartbeat_without_a_request() {
    let server = Server::start("idle-heartbeat", &two_workers_with_heartbeat());
    let stopped = workers(&server)[0].clone();
    signal(&stopped, libc::SIGSTOP);
    // No request goes to it: its silence alone gets it killed and restarted.
    let restarted = worker_when(&server, 0, |w| {
        w["restarts"] == 1
            && w["state"] == "idle"
            && w["prewarm"]["pid"] != stopped["prewarm"]["pid"]
    });
    signal(&stopped, libc::SIGKILL);
    assert!(
        restarted["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("heartbeat"),
        "{restarted}"
    );
    let reply = server.post("/engines", &json!({"model": "other"}));
    assert_eq!(reply.status, 201, "{}", reply.body);
}

#[test]
fn a_detached_engines_series_leave_the_scrape() {
    let config = format!(
        "[[workers]]\ndevice = \"cpu\"\ncount = 1\n\n{}",
        model_entry(PRENORM, PRENORM, false, "5m")
    );
    let server = Server::start("metrics-forget", &config);
    // Attach an engine under `name`, serve one completion with it, detach it.
    let serve_and_detach = |name: &str| {
        let attach = json!({"model": PRENORM, "name": name});
        assert_eq!(server.post("/engines", &attach).status, 201);
        let body = json!({"model": name, "prompt": "Hello there", "max_tokens": 4});
        assert_eq!(server.post("/v1/completions", &body).status, 200);
        let text = server.get("/metrics").body;
        assert!(text.contains(&format!("model_name=\"{name}\"")), "{text}");
        let path = format!("/engines/{name}");
        assert_eq!(server.request("DELETE", &path, None).status, 200);
    };
    serve_and_detach("first");
    let lines_before = server.get("/metrics").body.lines().count();
    for i in 0..10 {
        serve_and_detach(&format!("engine-name-{i}"));
    }
    let text = server.get("/metrics").body;
    assert!(!text.contains("engine-name-"), "{text}");
    // Every series of the names is gone (one name's series are some 90 lines).
    let lines_after = text.lines().count();
    assert!(
        lines_after <= lines_before + 10,
        "{lines_before} lines before, {lines_after} after:\n{text}"
    );
}
