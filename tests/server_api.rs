//! The HTTP API of `worker-controller serve` over real HTTP: every endpoint, reference-exact
//! completions (plain and streamed), metrics, and every error status in the API's JSON shape.

mod server_common;

use serde_json::{json, Value};
use server_common::{fixture, model_entry, reference, scratch, stream_text, EventStream, Server};

const PRENORM: &str = "tiny-opt-prenorm";
const POSTNORM: &str = "tiny-opt-postnorm-proj";

/// Two CPU workers, both fixtures configured (the pre-norm one attached at start).
fn two_model_config(extra: &str) -> String {
    format!(
        "[server]\nshutdown_deadline = \"10s\"\n{extra}\n[runtime]\nattach_timeout = \"300ms\"\n\n\
         [[workers]]\ndevice = \"cpu\"\ncount = 2\n\n{}{}",
        model_entry(PRENORM, PRENORM, true, "5m"),
        model_entry(POSTNORM, POSTNORM, false, "5m"),
    )
}

fn completion(model: &str, prompt: Value, stream: bool) -> Value {
    json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": 24,
        "temperature": 0,
        "ignore_eos": true,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

#[test]
fn control_api_attaches_lists_and_detaches_engines_with_timing_reports() {
    let server = Server::start("control", &two_model_config(""));
    let health = server.get("/health");
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["status"], "ok");
    for probe in ["/ready", "/v2/health/ready"] {
        assert_eq!(server.get(probe).status, 200, "{probe}");
    }
    let workers = server.get("/workers").json();
    let workers = workers["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    assert!(workers
        .iter()
        .all(|w| w["prewarm"]["total_ms"].as_f64().is_some()));

    // Attach by path under a chosen name: 201 with the engine id and every phase.
    let path = fixture(POSTNORM).display().to_string();
    let reply = server.post(
        "/engines",
        &json!({"model": path, "name": "post", "dtype": "f32", "keep_alive": "1m"}),
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    let report = reply.json();
    let id = report["engine_id"].as_u64().unwrap();
    assert_eq!(
        reply.header("location"),
        Some(format!("/engines/{id}").as_str())
    );
    assert_eq!(report["name"], "post");
    assert_eq!(report["keep_alive"], "1m");
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["anchor"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "process_started",
            "device_ready",
            "weights_read",
            "weights_on_device",
            "engine_ready",
            "first_token"
        ]
    );
    assert!(report["total_ms"].as_f64().unwrap() > 0.0);
    let bytes_moved = report["bytes_moved"].as_u64().unwrap();
    assert!(bytes_moved > 0);

    let engines = server.get("/engines").json();
    let names: Vec<&str> = engines["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [PRENORM, "post"]);
    let by_id = server.get(&format!("/engines/{id}"));
    assert_eq!(by_id.status, 200);
    assert_eq!(by_id.json()["name"], "post");
    assert_eq!(server.get("/engines/post").json()["engine_id"], id);
    assert_eq!(model_ids(&server), [PRENORM, "post"]);

    let detached = server.request("DELETE", "/engines/post", None);
    assert_eq!(detached.status, 200, "{}", detached.body);
    assert_eq!(detached.json()["engine_id"], id);
    server
        .get(&format!("/engines/{id}"))
        .assert_error(404, "engine_not_found");
    server
        .request("DELETE", "/engines/post", None)
        .assert_error(404, "engine_not_found");
    assert_eq!(model_ids(&server), [PRENORM]);

    // The machine's host cache (shared by the workers, reported once) keeps the detached
    // model's weights, and `/workers` says so.
    let workers = server.get("/workers").json();
    let cache = &workers["host_cache"];
    assert_eq!(cache["capacity_bytes"], 512 << 20, "{cache}");
    let cached = cache["used_bytes"].as_u64().unwrap();
    assert!(cached >= bytes_moved, "{cached} bytes cached: {cache}");
    assert!(
        workers["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["memory"]["host_cache_used_bytes"] == 0),
        "counted once, not per worker: {workers}"
    );
}

fn model_ids(server: &Server) -> Vec<String> {
    let list = server.get("/v1/models").json();
    assert_eq!(list["object"], "list");
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "attached")
        .map(|m| {
            assert_eq!(m["object"], "model");
            assert!(m["created"].as_u64().unwrap() > 0);
            assert!(m["owned_by"].is_string());
            m["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn completions_match_the_reference_plain_and_streamed() {
    let server = Server::start("reference", &two_model_config(""));
    for model in [PRENORM, POSTNORM] {
        for (prompt, ids, greedy) in reference(model) {
            let reply = server.post("/v1/completions", &completion(model, json!(prompt), false));
            assert_eq!(reply.status, 200, "{}", reply.body);
            let body = reply.json();
            assert_eq!(body["object"], "text_completion");
            assert_eq!(body["model"], model);
            assert_eq!(
                body["choices"][0]["text"],
                greedy.as_str(),
                "{model}: {prompt}"
            );
            assert_eq!(body["choices"][0]["finish_reason"], "length");
            assert_eq!(body["usage"]["prompt_tokens"], ids.len());
            assert_eq!(body["usage"]["completion_tokens"], 24);
            assert_eq!(body["usage"]["total_tokens"], ids.len() + 24);

            let stream = EventStream::open(
                &server.addr,
                "/v1/completions",
                &completion(model, json!(ids), true),
            );
            assert_eq!(stream.status, 200);
            let content_type = stream.headers.iter().find(|(n, _)| n == "content-type");
            assert!(content_type.is_some_and(|(_, v)| v.starts_with("text/event-stream")));
            let (chunks, done) = stream.collect();
            assert!(done, "the stream ends with data: [DONE]");
            assert_eq!(stream_text(&chunks), greedy, "{model}: {prompt} (streamed)");
            let id = chunks[0]["id"].as_str().unwrap();
            assert!(chunks
                .iter()
                .all(|c| c["id"] == id && c["object"] == "text_completion"));
            let last = &chunks[chunks.len() - 1];
            assert_eq!(last["usage"]["completion_tokens"], 24, "usage chunk last");
            let finish = &chunks[chunks.len() - 2];
            assert_eq!(finish["choices"][0]["finish_reason"], "length");
        }
    }
    // The post-norm model was attached on demand by the first request for it.
    assert_eq!(model_ids(&server), [PRENORM, POSTNORM]);

    // A stop string ends the text just before it: the greedy text without it, cut there.
    let greedy_text = |stop: Value| {
        let reply = server.post(
            "/v1/completions",
            &json!({"model": PRENORM, "prompt": "Beautiful is better than", "max_tokens": 24,
                    "temperature": 0, "ignore_eos": true, "stop": stop}),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["choices"][0].clone()
    };
    let full = greedy_text(json!([]));
    let full = full["text"].as_str().unwrap().to_owned();
    let at = full
        .find("Explicit")
        .unwrap_or_else(|| panic!("the greedy text has no `Explicit`: {full:?}"));
    assert!(at > 0, "{full:?}");
    let stopped = greedy_text(json!(["Explicit"]));
    assert_eq!(stopped["text"], full[..at], "cut before the stop string");
    assert_eq!(stopped["finish_reason"], "stop");
    let sample = |temperature: f64, seed: u64| {
        server
            .post(
                "/v1/completions",
                &json!({"model": PRENORM, "prompt": "Now is better", "max_tokens": 12,
                        "ignore_eos": true, "temperature": temperature, "top_p": 0.9,
                        "seed": seed}),
            )
            .json()["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(sample(1.5, 7), sample(1.5, 7), "one seed, one sample");
    // ... and the temperature samples: other seeds give other texts, and not the greedy one
    // (an engine ignoring the temperature, or the seed, gives one text for all).
    let greedy = sample(0.0, 7);
    let samples: std::collections::BTreeSet<String> =
        (1..=6).map(|seed| sample(1.5, seed)).collect();
    assert!(samples.len() > 1, "every seed gave {samples:?}");
    assert!(
        samples.iter().any(|s| *s != greedy),
        "every sample is the greedy {greedy:?}"
    );
}

#[test]
fn metrics_expose_attach_phases_workers_requests_and_errors() {
    let server = Server::start("metrics", &two_model_config(""));
    let (prompt, _, _) = &reference(PRENORM)[0];
    assert_eq!(
        server
            .post(
                "/v1/completions",
                &completion(PRENORM, json!(prompt), false)
            )
            .status,
        200
    );
    server
        .get("/engines/nope")
        .assert_error(404, "engine_not_found");
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.body;
    let series = |name: &str| text.lines().filter(|l| l.starts_with(name)).count();
    assert_eq!(series("wc_pod_num_requests_waiting "), 1, "{text}");
    assert_eq!(series("wc_pod_num_requests_running "), 1, "{text}");
    for line in [
        "wc_pod_num_requests_running 0",
        "wc_workers{state=\"serving\"} 1",
        "wc_workers{state=\"idle\"} 1",
        "wc_engines 1",
        "wc_attach_phase_seconds_count{phase=\"weights_read\"} 1",
        "wc_attach_phase_seconds_bucket{phase=\"first_token\",le=\"+Inf\"} 1",
        "wc_completions_total{model=\"tiny-opt-prenorm\",finish_reason=\"length\"} 1",
        "vllm:generation_tokens_total{model_name=\"tiny-opt-prenorm\"} 24",
        "vllm:prompt_tokens_total{model_name=\"tiny-opt-prenorm\"} 6",
        "wc_errors_total{type=\"engine_not_found\"} 1",
        "wc_http_requests_total{route=\"/v1/completions\",status=\"200\"} 1",
        "wc_ready 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
}

#[test]
fn errors_have_the_right_status_and_json_shape() {
    let broken = scratch("errors-truncated");
    let roots = format!(
        "model_roots = [{:?}, {:?}]\n",
        fixture("").display().to_string(),
        broken.display().to_string()
    );
    let server = Server::start(
        "errors",
        &two_model_config(&format!(
            "max_body_bytes = \"4KiB\"\nmax_tokens = 64\n{roots}"
        )),
    );
    // 400: malformed JSON, wrong types, bad parameters, unknown attach options.
    server
        .raw("POST", "/v1/completions", &[], Some("{\"model\": "))
        .assert_error(400, "invalid_request");
    server
        .post("/v1/completions", &json!({"model": PRENORM, "prompt": 5}))
        .assert_error(400, "invalid_request");
    for bad in [
        json!({"model": PRENORM, "prompt": "x", "max_tokens": 65}),
        json!({"model": PRENORM, "prompt": "x", "temperature": 3}),
        json!({"model": PRENORM, "prompt": "x", "top_p": 0}),
        json!({"model": PRENORM, "prompt": [[5], []]}),
    ] {
        server
            .post("/v1/completions", &bad)
            .assert_error(400, "invalid_request");
    }
    server
        .post("/engines", &json!({"model": PRENORM, "colour": "red"}))
        .assert_error(400, "invalid_request");
    server
        .post("/engines", &json!({"model": PRENORM, "dtype": "f12"}))
        .assert_error(400, "invalid_request");
    // 400 from the engine: a prompt longer than the position table, a token outside the vocab.
    server
        .post(
            "/v1/completions",
            &json!({"model": PRENORM, "prompt": vec![5; 200], "max_tokens": 4}),
        )
        .assert_error(400, "invalid_request");
    server
        .post(
            "/v1/completions",
            &json!({"model": PRENORM, "prompt": [2, 99999], "max_tokens": 4}),
        )
        .assert_error(400, "invalid_request");
    // 404: unknown engine, model, route.
    server
        .get("/engines/999")
        .assert_error(404, "engine_not_found");
    server
        .post("/v1/completions", &json!({"model": "gpt-5", "prompt": "x"}))
        .assert_error(404, "model_not_found");
    let stream = EventStream::open(
        &server.addr,
        "/v1/completions",
        &json!({"model": "gpt-5", "prompt": "x", "stream": true}),
    );
    assert_eq!(stream.status, 404, "a refused stream is a plain error");
    server
        .post("/engines", &json!({"model": "/no/such/checkpoint"}))
        .assert_error(403, "model_not_allowed");
    let missing = fixture("no-such-checkpoint").display().to_string();
    server
        .post("/engines", &json!({"model": missing}))
        .assert_error(404, "model_not_found");
    server.get("/no/such/route").assert_error(404, "not_found");
    // 409: the name is taken.
    server
        .post("/engines", &json!({"model": PRENORM}))
        .assert_error(409, "name_in_use");
    // 413: the body is larger than max_body_bytes.
    let big = json!({"model": PRENORM, "prompt": "x".repeat(8000)}).to_string();
    server
        .raw("POST", "/v1/completions", &[], Some(&big))
        .assert_error(413, "payload_too_large");
    // 422: the checkpoint exists but cannot be loaded.
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixture(PRENORM).join(file), broken.join(file)).unwrap();
    }
    let weights = std::fs::read(broken.join("model.safetensors")).unwrap();
    std::fs::write(
        broken.join("model.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();
    server
        .post(
            "/engines",
            &json!({"model": broken.display().to_string(), "name": "broken"}),
        )
        .assert_error(422, "invalid_model");
    let _ = std::fs::remove_dir_all(&broken);
    // 503 + Retry-After: both workers hold engines that are never evicted.
    let path = fixture(POSTNORM).display().to_string();
    let second = server.post(
        "/engines",
        &json!({"model": path, "name": "second", "keep_alive": -1}),
    );
    assert_eq!(second.status, 201, "{}", second.body);
    let full = server.post("/engines", &json!({"model": path, "name": "third"}));
    full.assert_error(503, "no_free_worker");
    assert!(full
        .header("retry-after")
        .is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    // The server is still healthy after all of that.
    assert_eq!(server.get("/ready").status, 200);
}

#[test]
fn does_not_fit_is_507() {
    let config = format!(
        "[prewarm]\nmemory_limit = \"100KiB\"\n\n[[workers]]\ndevice = \"cpu\"\n\n{}",
        model_entry(PRENORM, PRENORM, false, "5m")
    );
    let server = Server::start("does-not-fit", &config);
    server
        .post("/engines", &json!({"model": PRENORM}))
        .assert_error(507, "does_not_fit");
    server
        .post("/v1/completions", &json!({"model": PRENORM, "prompt": "x"}))
        .assert_error(507, "does_not_fit");
}

#[test]
fn api_key_guards_control_endpoints_and_json_logs_are_one_object_per_line() {
    let server = Server::spawn(
        "api-key",
        &two_model_config("api_key = \"from-the-file\"\n"),
        &["--api-key", "s3cret", "--log-format", "json"],
    );
    for (method, path) in [
        ("GET", "/workers"),
        ("GET", "/engines"),
        ("GET", "/engines/1"),
        ("DELETE", "/engines/1"),
    ] {
        server
            .raw(method, path, &[], None)
            .assert_error(401, "unauthorized");
        server
            .raw(
                method,
                path,
                &[("Authorization", "Bearer from-the-file")],
                None,
            )
            .assert_error(401, "unauthorized");
    }
    server
        .raw("POST", "/engines", &[], Some("not even json"))
        .assert_error(401, "unauthorized");
    let ok = server.raw(
        "GET",
        "/engines",
        &[("Authorization", "Bearer s3cret")],
        None,
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    for open in ["/health", "/ready", "/metrics"] {
        assert_eq!(server.get(open).status, 200, "{open} needs no key");
    }
    server.get("/v1/models").assert_error(401, "unauthorized");
    let log = server.log();
    let ready = log
        .lines()
        .find(|l| l.contains("listening on http://"))
        .expect("ready line");
    let ready: Value = serde_json::from_str(ready).expect("a JSON log line");
    assert_eq!(ready["address"], server.addr.as_str());
    assert!(log
        .lines()
        .any(|l| l.contains("worker prewarmed") && l.starts_with('{')));
    assert!(log
        .lines()
        .any(|l| l.contains("engine attached") && l.contains("first_token")));
}

#[test]
fn wrong_methods_are_405_in_the_error_shape() {
    let server = Server::start("methods", &two_model_config(""));
    server
        .raw("PUT", "/engines", &[], Some("{}"))
        .assert_error(405, "method_not_allowed");
    server
        .raw("GET", "/v1/completions", &[], None)
        .assert_error(405, "method_not_allowed");
    server
        .raw("POST", "/engines/1", &[], Some("{}"))
        .assert_error(405, "method_not_allowed");
}
