//! `/metrics` over real HTTP: the `vllm:` series per model (every one labelled `model_name`, so
//! a `sum()` counts each request once) and the pod's `wc_pod_` totals move with requests, every
//! series inference-perf's vLLM client reads is there and agrees with the requests made, the
//! gauges follow a request in flight, and the OpenMetrics output passes a strict parser.
//! Request ids: `x-request-id` honoured when sane, made otherwise, echoed on every reply and
//! used in the completion's `id`; one access line per request.

mod server_common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server_common::{
    model_entry, python_with, scratch, skip_without_python, slow_model, EventStream, Server,
};

const MODEL: &str = "tiny-opt-prenorm";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0";

fn config() -> String {
    format!(
        "[[workers]]\ndevice = \"cpu\"\ncount = 1\n\n{}",
        model_entry(MODEL, MODEL, true, "5m")
    )
}

fn completion(stream: bool) -> Value {
    json!({"model": MODEL, "prompt": "Hello there", "max_tokens": 24, "temperature": 0,
           "ignore_eos": true, "stream": stream, "stream_options": {"include_usage": true}})
}

/// The value of the sample written exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no `{series}` in\n{text}"))
}

fn scrape(server: &Server) -> String {
    server.get("/metrics").body
}

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Every sample of a Prometheus text exposition (comments skipped).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let mut labels = BTreeMap::new();
                let mut rest = rest.strip_suffix('}').expect("closing brace");
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").expect("key=\"");
                    let end = after.find('"').expect("closing quote");
                    labels.insert(key.to_owned(), after[..end].to_owned());
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name.to_owned(), labels)
            }
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// The sum of the samples named `name` whose labels include every one of `with`.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| s.value)
        .sum()
}

/// The series inference-perf's vLLM client reads (inference_perf/client/modelserver/
/// vllm_client.py), each filtered by `model_name`: counters by their family name (the samples
/// carry `_total`), histograms by their name (the samples carry `_bucket`, `_sum`, `_count`).
const INFERENCE_PERF_COUNTERS: [&str; 4] = [
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:request_success",
    "vllm:num_preemptions",
];
const INFERENCE_PERF_GAUGES: [&str; 3] = [
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
];
const INFERENCE_PERF_HISTOGRAMS: [&str; 11] = [
    "vllm:e2e_request_latency_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
    "vllm:iteration_tokens_total",
];

#[test]
fn vllm_series_count_requests_per_model_and_for_the_pod() {
    let server = Server::start("metrics-vllm", &config());
    let reply = server.post("/v1/completions", &completion(false));
    assert_eq!(reply.status, 200);
    let prompt_tokens = reply.json()["usage"]["prompt_tokens"].as_f64().unwrap();
    let (chunks, done) =
        EventStream::open(&server.addr, "/v1/completions", &completion(true)).collect();
    assert!(done && !chunks.is_empty());

    let text = scrape(&server);
    let m = |name: &str| format!("{name}{{model_name=\"{MODEL}\"}}");
    assert_eq!(sample(&text, &m("vllm:generation_tokens_total")), 48.0);
    assert_eq!(
        sample(&text, &m("vllm:prompt_tokens_total")),
        2.0 * prompt_tokens
    );
    for histogram in [
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
    ] {
        assert_eq!(
            sample(&text, &m(&format!("{histogram}_count"))),
            2.0,
            "{histogram}"
        );
    }
    // 24 tokens a request: 23 gaps each.
    assert_eq!(
        sample(&text, &m("vllm:inter_token_latency_seconds_count")),
        46.0
    );
    let ttft_sum = sample(&text, &m("vllm:time_to_first_token_seconds_sum"));
    let e2e_sum = sample(&text, &m("vllm:e2e_request_latency_seconds_sum"));
    assert!(
        0.0 < ttft_sum && ttft_sum <= e2e_sum,
        "{ttft_sum} {e2e_sum}"
    );
    // Per model only: the pod's totals are their own families.
    for gauge in ["num_requests_running", "num_requests_waiting"] {
        let vllm = format!("vllm:{gauge}");
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&vllm)).collect();
        assert_eq!(lines, [format!("{} 0", m(&vllm))]);
        assert_eq!(sample(&text, &format!("wc_pod_{gauge}")), 0.0);
    }
    assert_eq!(sample(&text, "wc_pod_kv_cache_usage_perc"), 0.0);
    assert_eq!(sample(&text, &m("vllm:kv_cache_usage_perc")), 0.0);

    // A model name that does not exist leaves no series behind (clients choose names).
    let unknown = json!({"model": "no-such-model", "prompt": "x"});
    assert_eq!(server.post("/v1/completions", &unknown).status, 404);
    let text = scrape(&server);
    assert!(!text.contains("no-such-model"), "{text}");
}

#[test]
fn every_series_inference_perf_reads_is_there_per_model_and_agrees_with_the_requests() {
    let server = Server::start("metrics-inference-perf", &config());
    // Three requests: two that run to max_tokens (one streamed) and one that stops early.
    let mut generated = 0.0;
    let mut prompt = 0.0;
    for body in [
        completion(false),
        json!({"model": MODEL, "prompt": "Now is better", "max_tokens": 5, "temperature": 0,
               "ignore_eos": true}),
    ] {
        let reply = server.post("/v1/completions", &body);
        assert_eq!(reply.status, 200, "{}", reply.body);
        generated += reply.json()["usage"]["completion_tokens"].as_f64().unwrap();
        prompt += reply.json()["usage"]["prompt_tokens"].as_f64().unwrap();
    }
    let (chunks, done) =
        EventStream::open(&server.addr, "/v1/completions", &completion(true)).collect();
    assert!(done);
    let usage = &chunks.last().unwrap()["usage"];
    generated += usage["completion_tokens"].as_f64().unwrap();
    prompt += usage["prompt_tokens"].as_f64().unwrap();
    let requests = 3.0;

    let text = scrape(&server);
    let samples = parse(&text);
    // Every vllm:* sample is per model.
    for sample in samples.iter().filter(|s| s.name.starts_with("vllm:")) {
        assert_eq!(
            sample.labels.get("model_name").map(String::as_str),
            Some(MODEL),
            "{sample:?}"
        );
    }
    let model = [("model_name", MODEL)];
    let has = |name: &str| samples.iter().any(|s| s.name == name);
    for counter in INFERENCE_PERF_COUNTERS {
        assert!(
            has(&format!("{counter}_total")),
            "no {counter}_total in\n{text}"
        );
    }
    for gauge in INFERENCE_PERF_GAUGES {
        assert!(has(gauge), "no {gauge} in\n{text}");
    }
    for histogram in INFERENCE_PERF_HISTOGRAMS {
        for suffix in ["_bucket", "_sum", "_count"] {
            assert!(
                has(&format!("{histogram}{suffix}")),
                "no {histogram}{suffix}"
            );
        }
        let count = total(&samples, &format!("{histogram}_count"), &model);
        let expected = match histogram {
            // One observation per token after the first.
            "vllm:inter_token_latency_seconds" => generated - requests,
            _ => requests,
        };
        assert_eq!(count, expected, "{histogram}");
    }

    // Finished requests by reason: all ran to max_tokens (ignore_eos).
    let success = "vllm:request_success_total";
    assert_eq!(total(&samples, success, &model), requests);
    assert_eq!(
        total(
            &samples,
            success,
            &[("model_name", MODEL), ("finished_reason", "length")]
        ),
        requests
    );
    for reason in ["stop", "abort"] {
        let labels = [("model_name", MODEL), ("finished_reason", reason)];
        assert_eq!(total(&samples, success, &labels), 0.0, "{reason}");
        assert!(
            samples.iter().any(|s| s.name == success
                && s.labels.get("finished_reason").map(String::as_str) == Some(reason)),
            "no {reason} series"
        );
    }
    // The token histograms sum to the counters and to the replies' usage.
    let sum = |name: &str| total(&samples, &format!("{name}_sum"), &model);
    assert_eq!(sum("vllm:request_generation_tokens"), generated);
    assert_eq!(
        total(&samples, "vllm:generation_tokens_total", &model),
        generated
    );
    assert_eq!(sum("vllm:request_prompt_tokens"), prompt);
    assert_eq!(total(&samples, "vllm:prompt_tokens_total", &model), prompt);
    assert_eq!(sum("vllm:iteration_tokens_total"), prompt + generated);
    // Inference is prefill and decode; none is longer than the whole request.
    let (prefill, decode) = (
        sum("vllm:request_prefill_time_seconds"),
        sum("vllm:request_decode_time_seconds"),
    );
    let inference = sum("vllm:request_inference_time_seconds");
    assert!(prefill > 0.0 && decode > 0.0, "{prefill} {decode}");
    assert!(
        (inference - prefill - decode).abs() < 1e-6,
        "{inference} {prefill} {decode}"
    );
    assert!(inference <= sum("vllm:e2e_request_latency_seconds"));
    let tpot = sum("vllm:request_time_per_output_token_seconds");
    assert!(
        0.0 < tpot && tpot < sum("vllm:e2e_request_latency_seconds"),
        "{tpot}"
    );
    // Nothing preempted; one cache-config info for the engine.
    assert_eq!(total(&samples, "vllm:num_preemptions_total", &model), 0.0);
    let info: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "vllm:cache_config_info")
        .collect();
    assert_eq!(info.len(), 1, "{text}");
    assert_eq!(info[0].value, 1.0);
    for label in [
        "block_size",
        "num_gpu_blocks",
        "cache_dtype",
        "gpu_memory_utilization",
    ] {
        assert!(
            info[0].labels.contains_key(label),
            "no {label}: {:?}",
            info[0]
        );
    }
    let blocks: f64 = info[0].labels["num_gpu_blocks"].parse().unwrap();
    assert!(blocks > 0.0, "{:?}", info[0]);
    // The attach and detach series stay beside them.
    assert!(
        has("wc_attach_seconds_count") && has("wc_detach_seconds_count"),
        "{text}"
    );
}

#[test]
fn running_and_waiting_follow_a_request_in_flight_and_a_client_that_leaves() {
    let dir = scratch("metrics-in-flight-model");
    let slow = slow_model(&dir);
    // The budget holds the 3000-token request or the one that follows it, not both.
    let config = format!(
        "[prewarm]\nkv_cache_tokens = 4000\n\n[[workers]]\ndevice = \"cpu\"\ncount = 1\n\n[[models]]\nname = \"slow\"\npath = {:?}\nattach_on_start = true\n",
        slow.display().to_string()
    );
    let server = Server::start("metrics-in-flight", &config);
    let body = json!({"model": "slow", "prompt": "Hello", "max_tokens": 3000,
                      "ignore_eos": true, "stream": true});
    let mut stream = EventStream::open(&server.addr, "/v1/completions", &body);
    assert_eq!(stream.status, 200);
    assert!(stream.next_data().is_some(), "a first token");
    let text = scrape(&server);
    assert_eq!(sample(&text, "wc_pod_num_requests_running"), 1.0, "{text}");
    assert_eq!(
        sample(&text, "vllm:num_requests_running{model_name=\"slow\"}"),
        1.0
    );
    assert_eq!(sample(&text, "wc_pod_num_requests_waiting"), 0.0);
    // A plain sum over each family counts the request once, and the pod's totals are that sum.
    let samples = parse(&text);
    for gauge in ["num_requests_running", "num_requests_waiting"] {
        let per_model = total(&samples, &format!("vllm:{gauge}"), &[]);
        let pod = total(&samples, &format!("wc_pod_{gauge}"), &[]);
        assert_eq!(per_model, pod, "{gauge}: {text}");
    }
    assert_eq!(total(&samples, "vllm:num_requests_running", &[]), 1.0);
    let kv = sample(&text, "vllm:kv_cache_usage_perc{model_name=\"slow\"}");
    assert!(kv > 0.0, "{text}");
    assert_eq!(sample(&text, "wc_pod_kv_cache_usage_perc"), kv);

    // The client goes away: generation stops and the request leaves the gauges, without an
    // end-to-end latency (it did not finish) and without its 3000 tokens counted as generated
    // once the engine's batch is empty (a finished request's tokens are).
    drop(stream);
    wait_for(&server, "wc_pod_num_requests_running", 0.0);
    let engine = engine_settled(&server);
    assert_eq!(engine["total_tokens"], 0, "{engine}");
    let text = scrape(&server);
    assert_eq!(sample(&text, "wc_tokens_total"), 0.0, "{text}");
    assert_eq!(sample(&text, "wc_pod_num_requests_waiting"), 0.0, "{text}");
    assert!(
        !text.contains("vllm:e2e_request_latency_seconds_count{model_name=\"slow\"}"),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "vllm:time_to_first_token_seconds_count{model_name=\"slow\"}"
        ),
        1.0
    );

    // Its generation stopped in the worker process too, room and all: a request reserving
    // 3000 more tokens fits the 4000 only once the first is gone (else it is refused at once).
    let mut next = EventStream::open(&server.addr, "/v1/completions", &body);
    assert_eq!(next.status, 200);
    let first = next.next_data().expect("a first event");
    let first: Value = serde_json::from_str(&first).expect("a chunk, not an error");
    assert!(first["choices"][0]["text"].is_string(), "{first}");
    let text = scrape(&server);
    assert_eq!(sample(&text, "wc_pod_num_requests_running"), 1.0, "{text}");
    drop(next);
    wait_for(&server, "wc_pod_num_requests_running", 0.0);
}

/// Lists engines until the first has no request running or waiting (two minutes at most).
fn engine_settled(server: &Server) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let engine = server.get("/engines").json()["engines"][0].clone();
        if engine["requests_running"] == 0 && engine["requests_waiting"] == 0 {
            return engine;
        }
        assert!(Instant::now() < deadline, "never settled: {engine}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Scrapes until `series` reads `value` (a minute at most).
fn wait_for(server: &Server, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(server);
        let now = text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        });
        if now == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{series}` never read {value}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Families as Python's strict OpenMetrics parser reads them: `{name: [type, unit, samples]}`.
const STRICT_PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = [f.type, f.unit, [[s.name, s.labels, float(s.value)] for s in f.samples]]
print(json.dumps(out))
"#;

#[test]
fn openmetrics_output_passes_a_strict_parser() {
    let server = Server::start("metrics-openmetrics", &config());
    assert_eq!(
        server.post("/v1/completions", &completion(false)).status,
        200
    );
    let reply = server.raw("GET", "/metrics", &[("Accept", OPENMETRICS)], None);
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{:?}",
        reply.headers
    );
    assert!(reply.body.ends_with("# EOF\n"));
    let Some(python) = python_with("prometheus_client.openmetrics.parser") else {
        return skip_without_python(
            "the strict OpenMetrics parse: no Python with prometheus_client (set WC_PYTHON \
             to one, pip install prometheus-client, or run .ci/python-deps.sh)",
        );
    };
    let mut child = Command::new(python)
        .args(["-c", STRICT_PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(reply.body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the strict parser refused it: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        reply.body
    );
    let families: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (name, kind, unit) in [
        ("vllm:time_to_first_token_seconds", "histogram", "seconds"),
        ("vllm:inter_token_latency_seconds", "histogram", "seconds"),
        ("vllm:e2e_request_latency_seconds", "histogram", "seconds"),
        ("vllm:request_queue_time_seconds", "histogram", "seconds"),
        ("vllm:prompt_tokens", "counter", ""),
        ("vllm:generation_tokens", "counter", ""),
        ("vllm:num_requests_running", "gauge", ""),
        ("vllm:num_requests_waiting", "gauge", ""),
        ("vllm:kv_cache_usage_perc", "gauge", ""),
        ("vllm:request_success", "counter", ""),
        ("vllm:num_preemptions", "counter", ""),
        ("vllm:request_prompt_tokens", "histogram", ""),
        ("vllm:request_generation_tokens", "histogram", ""),
        ("vllm:iteration_tokens_total", "histogram", ""),
        ("vllm:request_prefill_time_seconds", "histogram", "seconds"),
        ("vllm:request_decode_time_seconds", "histogram", "seconds"),
        (
            "vllm:request_inference_time_seconds",
            "histogram",
            "seconds",
        ),
        (
            "vllm:request_time_per_output_token_seconds",
            "histogram",
            "seconds",
        ),
        ("vllm:cache_config_info", "gauge", ""),
        ("wc_pod_num_requests_running", "gauge", ""),
        ("wc_pod_num_requests_waiting", "gauge", ""),
        ("wc_pod_kv_cache_usage_perc", "gauge", ""),
        ("wc_attach_phase_seconds", "histogram", "seconds"),
        ("wc_http_requests", "counter", ""),
        ("wc_workers", "gauge", ""),
    ] {
        let family = &families[name];
        assert_eq!(family[0], kind, "{name}: {family}");
        assert_eq!(family[1], unit, "{name}: {family}");
    }
    let samples = |name: &str| families[name][2].as_array().unwrap().clone();
    assert_eq!(
        samples("vllm:num_requests_waiting"),
        [json!(["vllm:num_requests_waiting", {"model_name": MODEL}, 0.0])]
    );
    assert_eq!(
        samples("wc_pod_num_requests_waiting"),
        [json!(["wc_pod_num_requests_waiting", {}, 0.0])]
    );
    for (name, family) in families.as_object().unwrap() {
        if name.starts_with("vllm:") {
            for sample in family[2].as_array().unwrap() {
                assert_eq!(sample[1]["model_name"], MODEL, "{name}: {sample}");
            }
        }
    }
    assert!(samples("vllm:generation_tokens").contains(&json!([
        "vllm:generation_tokens_total",
        {"model_name": MODEL},
        24.0
    ])));
}

#[test]
fn request_ids_are_honoured_or_made_echoed_on_every_reply_and_logged_once() {
    let server = Server::spawn("request-ids", &config(), &[]);
    let post = |headers: &[(&str, &str)]| {
        server.raw(
            "POST",
            "/v1/completions",
            headers,
            Some(&completion(false).to_string()),
        )
    };
    let reply = post(&[("X-Request-Id", "client-id.42")]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("x-request-id"), Some("client-id.42"));
    let body = reply.json();
    assert_eq!(body["id"], "cmpl-client-id.42");
    let prompt_tokens = format!("prompt_tokens={}", body["usage"]["prompt_tokens"]);

    let too_long = "x".repeat(200);
    for headers in [vec![], vec![("X-Request-Id", too_long.as_str())]] {
        let reply = post(&headers);
        let id = reply.header("x-request-id").expect("an id").to_owned();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        assert_eq!(reply.json()["id"], format!("cmpl-{id}"));
    }

    let mut events = EventStream::open(&server.addr, "/v1/completions", &completion(true));
    let id = events
        .headers
        .iter()
        .find(|(n, _)| n == "x-request-id")
        .unwrap()
        .1
        .clone();
    let first: Value = serde_json::from_str(&events.next_data().unwrap()).unwrap();
    assert_eq!(first["id"], format!("cmpl-{id}"));
    let _ = events.collect();

    // Errors carry one too: refused by the guard, by the router, by the handler.
    let refused = server.raw(
        "POST",
        "/v1/completions",
        &[("Content-Type", "text/plain"), ("X-Request-Id", "e1")],
        Some("x"),
    );
    refused.assert_error(415, "unsupported_media_type");
    assert_eq!(refused.header("x-request-id"), Some("e1"));
    let missing = server.raw("GET", "/nope", &[("X-Request-Id", "e2")], None);
    assert_eq!(
        (missing.status, missing.header("x-request-id")),
        (404, Some("e2"))
    );
    let unknown = server.raw(
        "POST",
        "/v1/completions",
        &[("X-Request-Id", "e3")],
        Some(&json!({"model": "nope", "prompt": "x"}).to_string()),
    );
    assert_eq!(
        (unknown.status, unknown.header("x-request-id")),
        (404, Some("e3"))
    );
    assert!(server.get("/health").header("x-request-id").is_some());

    // One access line per request, with what it did.
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let log = server.log();
        if let Some(line) = log.lines().find(|l| l.contains("request_id=client-id.42")) {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no access line:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    for field in [
        "method=POST",
        "path=/v1/completions",
        "status=200",
        "model=\"tiny-opt-prenorm\"",
        prompt_tokens.as_str(),
        "completion_tokens=24",
        "queue_ms=",
        "ttft_ms=",
        "total_ms=",
    ] {
        assert!(line.contains(field), "no `{field}` in {line}");
    }
    let log = server.log();
    assert_eq!(log.matches("request_id=client-id.42 ").count(), 1, "{log}");
    let line = |id: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = server.log();
            if let Some(l) = log
                .lines()
                .find(|l| l.contains(&format!("request_id={id} ")))
            {
                return l.to_owned();
            }
            assert!(Instant::now() < deadline, "no access line for {id}:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let refused = line("e1");
    assert!(
        refused.contains("status=415") && refused.contains("error=\"unsupported_media_type\""),
        "{refused}"
    );
    assert!(line(&id).contains("completion_tokens=24"), "{}", line(&id));
}
