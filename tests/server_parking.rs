//! `[prewarm] park_detached` through `serve` with worker processes: a model detached over HTTP
//! stays parked on its worker (`GET /workers` says how many bytes), attaching it again moves no
//! bytes and answers the same, and the phases of its attach report say nothing was read.

mod server_common;

use serde_json::{json, Value};
use server_common::{fixture, Server};

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
