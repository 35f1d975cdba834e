//! On-demand attach (Ollama-style) and least-recently-used eviction past `keep_alive`.

mod server_common;

use serde_json::json;
use server_common::{model_entry, reference, Server};

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
        "[runtime]\nattach_timeout = \"200ms\"\n\n[[workers]]\ndevice = \"cpu\"\n\n{}{}",
        model_entry("kept", PRENORM, true, "1h"),
        model_entry("other", POSTNORM, false, "-1"),
    );
    let server = Server::start("keep-alive", &config);
    // Four requests wait for one on-demand attach; when it fails they all get its answer
    // together: one failed attach, not one attach timeout after another.
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
