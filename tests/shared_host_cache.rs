//! One host weight cache per machine, shared by every worker process (`serve`'s default
//! isolation): a model read by one worker is a cache hit on another, the cache is counted once
//! in `/workers` and `/metrics`, a worker killed mid-read leaves no half-written entry, and a
//! large cache does not delay `/ready`.

mod server_common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server_common::{fixture, model_entry, Server};

const MODEL: &str = "tiny-opt-prenorm";

fn config(host_cache: &str) -> String {
    config_with(host_cache, "process")
}

fn config_with(host_cache: &str, isolation: &str) -> String {
    format!(
        "[server]\nmodel_roots = [{:?}]\n\n\
         [runtime]\nrestart_backoff = \"50ms\"\nisolation = \"{isolation}\"\n\n\
         [prewarm]\nhost_cache = \"{host_cache}\"\n\n\
         [[workers]]\ndevice = \"cpu\"\ncount = 2\n\n{}",
        fixture("").display().to_string(),
        model_entry(MODEL, MODEL, false, "-1"),
    )
}

/// Attaches the model on `worker`; its greedy completion of a fixed prompt.
fn attach_on(server: &Server, worker: usize) -> String {
    let reply = server.post("/engines", &json!({"model": MODEL, "worker": worker}));
    assert_eq!(reply.status, 201, "{}", reply.body);
    let completion = server.post(
        "/v1/completions",
        &json!({"model": MODEL, "prompt": [2, 5, 7, 11], "max_tokens": 12, "temperature": 0}),
    );
    assert_eq!(completion.status, 200, "{}", completion.body);
    completion.json()["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn detach(server: &Server) {
    let reply = server.request("DELETE", &format!("/engines/{MODEL}"), None);
    assert_eq!(reply.status, 200, "{}", reply.body);
}

fn workers(server: &Server) -> Value {
    server.get("/workers").json()
}

/// The machine's cache as `/workers` reports it.
fn cache(server: &Server) -> Value {
    workers(server)["host_cache"].clone()
}

/// The value of the one `/metrics` line that starts with `series`.
fn metric(server: &Server, series: &str) -> String {
    let text = server.get("/metrics").body;
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(series)).collect();
    assert_eq!(lines.len(), 1, "one `{series}` line: {text}");
    lines[0].rsplit(' ').next().unwrap().to_owned()
}

#[test]
fn a_model_read_by_one_worker_process_is_a_cache_hit_on_the_other_counted_once() {
    let server = Server::start("shared-cache-hit", &config("64MiB"));
    let first = attach_on(&server, 0);
    detach(&server);
    let after = cache(&server);
    assert_eq!(after["capacity_bytes"], 64 << 20, "{after}");
    assert_eq!(
        (after["hits"].as_u64(), after["misses"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(
        after["models"][0]["model"],
        format!("fixtures/{MODEL}"),
        "{after}"
    );
    let used = after["used_bytes"].as_u64().unwrap();
    assert!(used > 0, "{after}");

    // On the other worker process: from the cache, and the same text.
    assert_eq!(
        attach_on(&server, 1),
        first,
        "the cached bytes are the checkpoint's"
    );
    let after = cache(&server);
    assert_eq!(
        (after["hits"].as_u64(), after["misses"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(after["used_bytes"], used, "no second copy: {after}");

    // Counted once: the workers do not report it as their own, and /metrics has one series.
    let listed = workers(&server);
    for worker in listed["workers"].as_array().unwrap() {
        let memory = &worker["memory"];
        assert_eq!(memory["host_cache_capacity_bytes"], 0, "{worker}");
        assert_eq!(memory["host_cache_used_bytes"], 0, "{worker}");
    }
    assert_eq!(
        metric(&server, "wc_host_cache_bytes{state=\"capacity\"}"),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        metric(&server, "wc_host_cache_bytes{state=\"used\"}"),
        used.to_string()
    );
    assert_eq!(
        metric(&server, "wc_host_cache_attaches_total{result=\"hit\"}"),
        "1"
    );
}

#[test]
#[cfg_attr(
    not(any(debug_assertions, feature = "fault-injection")),
    ignore = "needs fault injection: a debug build or --features fault-injection"
)]
fn a_worker_process_killed_mid_read_leaves_no_entry_and_the_next_attach_is_correct() {
    let dir = std::env::temp_dir().join(format!("wc-shared-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("paused");
    let _ = std::fs::remove_file(&marker);
    // The first fill of the cache pauses half-way, in the worker process, until killed.
    let env = [("WC_TEST_PAUSE_CACHE_FILL", marker.to_str().unwrap())];
    let server = Server::spawn_with_env("shared-cache-kill", &config("64MiB"), &[], &env);
    let addr = server.addr.clone();
    let victim = std::thread::spawn(move || {
        let body = json!({"model": MODEL, "worker": 0}).to_string();
        server_common::request(&addr, "POST", "/engines", &[], Some(&body))
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|p| p.parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the fill never paused");
        std::thread::sleep(Duration::from_millis(20));
    };
    let worker_pid = workers(&server)["workers"][0]["prewarm"]["pid"].as_i64();
    assert_eq!(worker_pid, Some(pid as i64), "worker 0's process paused");
    // SAFETY: kill(2) of the worker process this test's server started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let reply = victim.join().unwrap();
    reply.assert_error(503, "worker_failed");

    // Nothing of the half-read file is visible.
    let after = cache(&server);
    assert_eq!(after["used_bytes"], 0, "{after}");
    assert_eq!(after["models"], json!([]), "{after}");

    // The restarted worker reads it from disk (not a hit on half-written blocks), and the
    // other worker then finds it whole in the cache.
    let deadline = Instant::now() + Duration::from_secs(60);
    while workers(&server)["workers"][0]["state"] != "idle" {
        assert!(Instant::now() < deadline, "{}", workers(&server));
        std::thread::sleep(Duration::from_millis(20));
    }
    let read = attach_on(&server, 0);
    let after = cache(&server);
    assert_eq!(
        (after["hits"].as_u64(), after["misses"].as_u64()),
        (Some(0), Some(1))
    );
    detach(&server);
    assert_eq!(attach_on(&server, 1), read);
    assert_eq!(cache(&server)["hits"], 1);
    // The cache outlived the killed process: its replacement reads the model from it too.
    detach(&server);
    assert_eq!(attach_on(&server, 0), read);
    assert_eq!(cache(&server)["hits"], 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_large_cache_does_not_delay_ready() {
    let began = Instant::now();
    // The start waits for /ready; 40 GiB of cache is reserved, not touched, on the way.
    let server = Server::start("shared-cache-ready", &config("40GiB"));
    let ready = began.elapsed();
    let after = cache(&server);
    assert_eq!(after["capacity_bytes"], 40u64 << 30, "{after}");
    assert_eq!(after["used_bytes"], 0, "{after}");
    assert!(ready < Duration::from_secs(3), "ready after {ready:?}");
    // A model attaches and answers before anything of the cache was pinned or touched.
    let text = attach_on(&server, 0);
    assert!(!text.is_empty());
    eprintln!(
        "ready {:.2} s after start with a 40 GiB host cache",
        ready.as_secs_f64()
    );
}

#[test]
fn worker_threads_share_the_same_cache() {
    let server = Server::start("shared-cache-threads", &config_with("64MiB", "thread"));
    let first = attach_on(&server, 0);
    detach(&server);
    assert_eq!(attach_on(&server, 1), first);
    let after = cache(&server);
    assert_eq!(
        (after["hits"].as_u64(), after["misses"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        after["models"][0]["model"],
        format!("fixtures/{MODEL}"),
        "{after}"
    );
}
