//! `[prewarm] park_detached` through `serve` with worker processes: a model detached over HTTP
//! stays parked on its worker (`GET /workers` says how many bytes), attaching it again moves no
//! bytes and answers the same, and the phases of its attach report say nothing was read. A
//! configured model's `park` overrides `park_detached` either way, and `GET /workers` lists the
//! models parked on each worker's device and those in its host cache.

mod server_common;

use serde_json::{json, Value};
use server_common::{fixture, model_entry, Server};

#[test]
fn a_model_detached_over_http_is_parked_and_reattaches_without_moving_bytes() {
    let model = fixture("tiny-llama").display().to_string();
    let config = format!(
        "[server]\nmodel_roots = [{:?}]\n\n[prewarm]\npark_detached = true\n\
         kv_cache_tokens = 256\n\n[[workers]]\ndevice = \"cpu\"\n",
        fixture("").display().to_string()
    );
    let server = Server::start("parking", &config);
    let attach = || {
        let reply = server.post("/engines", &json!({"model": model, "name": "tiny"}));
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.json()
    };
    let generate = || {
        let reply = server.post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": [1, 5, 7], "max_tokens": 6, "ignore_eos": true}),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["choices"][0]["text"].clone()
    };
    let parked = || -> u64 {
        let workers = server.get("/workers").json();
        workers["workers"][0]["memory"]["parked_bytes"]
            .as_u64()
            .expect("parked_bytes in /workers")
    };
    let first = attach();
    assert!(first["bytes_moved"].as_u64().unwrap() > 0);
    let text = generate();
    assert_eq!(parked(), 0, "lent to the live engine, not parked");
    let detached = server.request("DELETE", "/engines/tiny", None);
    assert_eq!(detached.status, 200, "{}", detached.body);
    assert!(
        parked() > 0,
        "the detached model's weights stay on the worker"
    );

    let again = attach();
    assert_eq!(again["bytes_moved"], 0, "nothing read or copied: {again}");
    let phase = |report: &Value, anchor: &str| -> f64 {
        report["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["anchor"] == anchor)
            .and_then(|p| p["ms"].as_f64())
            .unwrap_or_else(|| panic!("no {anchor} phase in {report}"))
    };
    assert!(
        phase(&again, "weights_on_device") < 5.0,
        "no copy on a parked re-attach: {again}"
    );
    assert_eq!(generate(), text, "the same answer from the parked weights");
}

/// Weight bytes of a fixture on the device, and what its engine needs with a KV cache of
/// `kv_cache_tokens`.
fn sizes(name: &str, kv_cache_tokens: usize) -> (u64, u64) {
    let spec = wc_actors::ModelSpec {
        model: fixture(name).display().to_string(),
        dtype: None,
        canonical: false,
        park: None,
    };
    let footprint = worker_controller::inspect(&spec).unwrap().footprint;
    (
        footprint.device_bytes,
        footprint.needed_bytes(kv_cache_tokens),
    )
}

/// A server with one CPU worker, `prewarm` in its [prewarm] section and the models `models`.
fn start(test: &str, prewarm: &str, models: &str) -> Server {
    let config = format!(
        "[server]\nmodel_roots = [{:?}]\n\n[prewarm]\nkv_cache_tokens = 256\n{prewarm}\n\
         [[workers]]\ndevice = \"cpu\"\n\n{models}",
        fixture("").display().to_string()
    );
    Server::start(test, &config)
}

/// The worker's memory as `GET /workers` has it.
fn memory(server: &Server) -> Value {
    server.get("/workers").json()["workers"][0]["memory"].clone()
}

fn attach(server: &Server, model: &str) -> u64 {
    let reply = server.post("/engines", &json!({"model": model}));
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.json()["bytes_moved"].as_u64().unwrap()
}

fn detach(server: &Server, model: &str) {
    let reply = server.request("DELETE", &format!("/engines/{model}"), None);
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn a_model_configured_with_park_false_is_not_parked_under_park_detached() {
    let models = format!(
        "{}park = false\n\n{}",
        model_entry("never", "tiny-llama", false, "-1"),
        model_entry("default", "tiny-opt-prenorm", false, "-1"),
    );
    let server = start("parking-false", "park_detached = true\n", &models);
    let moved = attach(&server, "never");
    assert!(moved > 0);
    detach(&server, "never");
    let after = memory(&server);
    assert_eq!(after["parked_bytes"], 0, "{after}");
    assert_eq!(after["parked"], json!([]), "{after}");
    assert_eq!(attach(&server, "never"), moved, "read and copied again");
    detach(&server, "never");
    // A model that says nothing follows park_detached.
    attach(&server, "default");
    detach(&server, "default");
    let after = memory(&server);
    let (bytes, _) = sizes("tiny-opt-prenorm", 256);
    assert_eq!(after["parked_bytes"], bytes, "{after}");
    assert_eq!(
        after["parked"],
        json!([{"model": "fixtures/tiny-opt-prenorm", "bytes": bytes}]),
        "{after}"
    );
}

#[test]
fn a_model_configured_with_park_true_is_parked_and_listed_until_it_is_needed() {
    let (kept, plain) = ("tiny-llama", "tiny-qwen3");
    let ((kept_bytes, kept_needs), (plain_bytes, plain_needs)) =
        (sizes(kept, 256), sizes(plain, 256));
    // Room for either model with its KV cache, not for one beside the other's parked weights.
    let limit = kept_needs.max(plain_needs) + kept_bytes.min(plain_bytes) / 2;
    let models = format!(
        "{}park = true\n\n{}",
        model_entry("kept", kept, false, "-1"),
        model_entry("plain", plain, false, "-1"),
    );
    let server = start(
        "parking-true",
        &format!("memory_limit = {limit}\n"),
        &models,
    );
    assert_eq!(memory(&server)["parked"], json!([]));
    assert!(attach(&server, "kept") > 0);
    let attached = memory(&server);
    assert_eq!(
        attached["parked"],
        json!([]),
        "lent to the live engine: {attached}"
    );
    detach(&server, "kept");
    let after = memory(&server);
    let listed = json!([{"model": format!("fixtures/{kept}"), "bytes": kept_bytes}]);
    assert_eq!(after["parked"], listed, "{after}");
    assert_eq!(after["parked_bytes"], kept_bytes, "{after}");
    // The host tier is the machine's shared cache, listed once in `/workers`.
    let machine = server.get("/workers").json()["host_cache"].clone();
    let cached = machine["models"]
        .as_array()
        .expect("host_cache in /workers");
    assert_eq!(cached.len(), 1, "{machine}");
    assert_eq!(cached[0]["model"], format!("fixtures/{kept}"), "{machine}");
    assert!(cached[0]["bytes"].as_u64().unwrap() > 0, "{machine}");

    // Re-attached: lent again, not parked.
    assert_eq!(attach(&server, "kept"), 0, "from the parked weights");
    assert_eq!(memory(&server)["parked"], json!([]));
    detach(&server, "kept");
    assert_eq!(memory(&server)["parked"], listed);

    // Evicted from the device by an attach that needs its room; `plain` (park unset, and
    // park_detached off) is not parked after it.
    assert!(attach(&server, "plain") > 0);
    assert_eq!(memory(&server)["parked"], json!([]), "freed for `plain`");
    detach(&server, "plain");
    let after = memory(&server);
    assert_eq!(after["parked"], json!([]), "{after}");
    assert_eq!(after["parked_bytes"], 0, "{after}");
}
