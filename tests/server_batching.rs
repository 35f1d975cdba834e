//! Batching through the HTTP API with workers in their own processes (the default isolation):
//! reference-exact greedy completions among 16 concurrent requests, `n` and `best_of`,
//! logprobs in the completions and chat shapes, `echo`, `logit_bias`, the KV-cache budget's
//! 400, streamed and not, and the batch, queue and KV-cache reservation in `/engines` and
//! `/metrics`.

mod server_common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server_common::{model_entry, reference, scratch, send_only, slow_model, EventStream, Server};

const PRENORM: &str = "tiny-opt-prenorm";
const LLAMA: &str = "tiny-llama";

/// One CPU worker per model, a KV-cache budget of `kv_cache_tokens`.
fn config(kv_cache_tokens: usize) -> String {
    format!(
        "[prewarm]\nkv_cache_tokens = {kv_cache_tokens}\n\n[[workers]]\ndevice = \"cpu\"\ncount = 2\n\n{}{}",
        model_entry(PRENORM, PRENORM, true, "5m"),
        model_entry(LLAMA, LLAMA, true, "5m"),
    )
}

fn greedy(prompt: &str, tokens: usize) -> Value {
    json!({"model": PRENORM, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
           "ignore_eos": true})
}

#[test]
fn greedy_completions_are_reference_exact_among_sixteen_concurrent_requests() {
    let server = Server::start("batching-concurrent", &config(32768));
    let cases = reference(PRENORM);
    // The reference prompts among others of other lengths, all at once, half of them streamed.
    let mut bodies: Vec<(Option<String>, Value)> = (0..16 - cases.len())
        .map(|i| {
            let prompt = "the quick brown fox ".repeat(1 + i % 4);
            (None, greedy(&prompt, 4 + 3 * i))
        })
        .collect();
    for (i, (prompt, _, text)) in cases.iter().enumerate() {
        bodies.insert(2 + 5 * i, (Some(text.clone()), greedy(prompt, 24)));
    }
    std::thread::scope(|scope| {
        let runs: Vec<_> = bodies
            .iter()
            .enumerate()
            .map(|(i, (expected, body))| {
                let server = &server;
                scope.spawn(move || {
                    let text = if i % 2 == 0 {
                        let reply = server.post("/v1/completions", body);
                        assert_eq!(reply.status, 200, "{}", reply.body);
                        reply.json()["choices"][0]["text"]
                            .as_str()
                            .unwrap()
                            .to_owned()
                    } else {
                        let mut streamed = body.clone();
                        streamed["stream"] = json!(true);
                        let stream = EventStream::open(&server.addr, "/v1/completions", &streamed);
                        assert_eq!(stream.status, 200);
                        let (chunks, done) = stream.collect();
                        assert!(done);
                        server_common::stream_text(&chunks)
                    };
                    if let Some(expected) = expected {
                        assert_eq!(&text, expected, "request {i}");
                    }
                })
            })
            .collect();
        for run in runs {
            run.join().unwrap();
        }
    });
}

#[test]
fn n_best_of_logprobs_echo_and_logit_bias_shape_the_reply() {
    let server = Server::start("batching-parameters", &config(32768));
    let (prompt, _, greedy_text) = reference(PRENORM).remove(0);

    // n sampled choices with a seed: n distinct indices, each its own sample.
    let mut body = greedy(&prompt, 12);
    body["temperature"] = json!(1.0);
    body["n"] = json!(3);
    body["seed"] = json!(5);
    let reply = server.post("/v1/completions", &body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let json = reply.json();
    let choices = json["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
    }
    assert_eq!(json["usage"]["completion_tokens"], 36);

    // best_of 4, n 2: the two with the highest cumulative logprob, best first.
    body["n"] = json!(2);
    body["best_of"] = json!(4);
    body["logprobs"] = json!(0);
    let json = server.post("/v1/completions", &body).json();
    let sums: Vec<f64> = json["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["logprobs"]["token_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .sum()
        })
        .collect();
    assert_eq!(sums.len(), 2);
    assert!(sums[0] >= sums[1], "{sums:?}");
    // The four seeds, run one by one, rank the same way: the best two come back.
    let mut all: Vec<f64> = (0..4)
        .map(|i| {
            let mut one = greedy(&prompt, 12);
            one["temperature"] = json!(1.0);
            one["seed"] = json!(5 + i);
            one["logprobs"] = json!(0);
            let c = &server.post("/v1/completions", &one).json()["choices"][0];
            c["logprobs"]["token_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .sum()
        })
        .collect();
    all.sort_by(|a, b| b.total_cmp(a));
    assert!((all[0] - sums[0]).abs() < 1e-3 && (all[1] - sums[1]).abs() < 1e-3);

    // logprobs 3: the completions shape, offsets counted after the echoed prompt.
    let mut body = greedy(&prompt, 5);
    body["logprobs"] = json!(3);
    let json = server.post("/v1/completions", &body).json();
    let logprobs = &json["choices"][0]["logprobs"];
    assert_eq!(logprobs["tokens"].as_array().unwrap().len(), 5);
    assert_eq!(logprobs["text_offset"][0], 0);
    let top = logprobs["top_logprobs"][0].as_object().unwrap();
    assert!((3..=4).contains(&top.len()), "{top:?}");
    let first = logprobs["tokens"][0].as_str().unwrap();
    assert_eq!(top[first], logprobs["token_logprobs"][0]);

    // echo: the prompt's text, then the completion.
    let mut body = greedy(&prompt, 24);
    body["echo"] = json!(true);
    let json = server.post("/v1/completions", &body).json();
    assert_eq!(json["choices"][0]["text"], format!("{prompt}{greedy_text}"));
    body["logprobs"] = json!(1);
    let refused = server.post("/v1/completions", &body);
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("echo"), "{}", refused.body);

    // logit_bias: +100 on one token makes every token that one.
    let mut body = greedy(&prompt, 4);
    body["logit_bias"] = json!({"77": 100});
    body["logprobs"] = json!(0);
    let json = server.post("/v1/completions", &body).json();
    let tokens = json["choices"][0]["logprobs"]["tokens"].as_array().unwrap();
    assert!(tokens.windows(2).all(|w| w[0] == w[1]), "{tokens:?}");

    // Chat: logprobs true with top_logprobs, in the chat shape, streamed and not.
    let chat = json!({"model": LLAMA, "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 3, "temperature": 0, "logprobs": true, "top_logprobs": 2,
                      "ignore_eos": true});
    let json = server.post("/v1/chat/completions", &chat).json();
    let content = json["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(content.len(), 3);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert!(content[0]["logprob"].as_f64().unwrap() <= 0.0);
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let (chunks, done) =
        EventStream::open(&server.addr, "/v1/chat/completions", &streamed).collect();
    assert!(done);
    let streamed_logprobs: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].get(0))
        .collect();
    assert_eq!(streamed_logprobs.len(), 3);
    assert_eq!(streamed_logprobs[0]["token"], content[0]["token"]);
}

#[test]
fn a_stream_of_n_choices_names_each_and_a_request_over_the_budget_is_400() {
    let server = Server::start("batching-budget", &config(64));
    let (prompt, ids, greedy_text) = reference(PRENORM).remove(0);
    let mut body = greedy(&prompt, 24);
    body["n"] = json!(2);
    body["stream"] = json!(true);
    let (chunks, done) = EventStream::open(&server.addr, "/v1/completions", &body).collect();
    assert!(done);
    for index in 0..2 {
        let text: String = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == index)
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(text, greedy_text, "choice {index}");
    }
    // Prompt plus max_tokens over the 64-token budget: refused, not queued for ever.
    let too_big = greedy(&prompt, 65 - ids.len());
    let reply = server.post("/v1/completions", &too_big);
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("KV-cache"), "{}", reply.body);
    let mut streamed = too_big.clone();
    streamed["stream"] = json!(true);
    let stream = EventStream::open(&server.addr, "/v1/completions", &streamed);
    assert_eq!(stream.status, 400);
}

/// Lists engines until the first satisfies `ready` (two minutes at most); returns it.
fn engine_when(server: &Server, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let engine = server.get("/engines").json()["engines"][0].clone();
        if ready(&engine) {
            return engine;
        }
        assert!(Instant::now() < deadline, "never reached; last: {engine}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of the sample written exactly `series`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no `{series}` in\n{text}"))
}

#[test]
fn engines_and_metrics_show_the_batch_the_queue_and_the_kv_cache_reservation() {
    let slow = slow_model(&scratch("batching-load-model"));
    // Each request reserves 4 + 600 tokens: the budget holds two of the three at a time.
    let config = format!(
        "[prewarm]\nkv_cache_tokens = 1500\n\n[[workers]]\ndevice = \"cpu\"\ncount = 1\n\n\
         [[models]]\nname = \"slow\"\npath = {:?}\nattach_on_start = true\n",
        slow.display().to_string()
    );
    let server = Server::start("batching-load", &config);
    let reserved = |e: &Value| e["kv_cache_tokens_reserved"].as_u64().unwrap();
    let idle = engine_when(&server, |_| true);
    assert_eq!(
        (reserved(&idle), idle["kv_cache_tokens_budget"].clone()),
        (0, json!(1500))
    );
    let body = |i: u32| {
        json!({"model": "slow", "prompt": [2, 10 + i, 7, 9], "max_tokens": 600,
               "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}})
    };
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..3)
            .map(|i| {
                let (server, body) = (&server, body(i));
                scope.spawn(move || {
                    let stream = EventStream::open(&server.addr, "/v1/completions", &body);
                    assert_eq!(stream.status, 200);
                    let (chunks, done) = stream.collect();
                    assert!(done);
                    let usage = chunks.iter().rev().find_map(|c| c.get("usage").cloned());
                    usage.unwrap_or_default()["completion_tokens"].clone()
                })
            })
            .collect();
        let busy = engine_when(&server, |e| {
            e["requests_running"] == 2 && e["requests_waiting"] == 1
        });
        assert_eq!(reserved(&busy), 2 * 604, "{busy}");
        assert_eq!(busy["kv_cache_usage"].as_f64().unwrap(), 1208.0 / 1500.0);
        let metrics = server.get("/metrics").body;
        let usage = sample(&metrics, "vllm:kv_cache_usage_perc{model_name=\"slow\"}");
        assert_eq!(usage, 1208.0 / 1500.0, "{metrics}");
        // One engine: the pod's usage is its usage.
        assert_eq!(sample(&metrics, "wc_pod_kv_cache_usage_perc"), usage);
        for client in clients {
            assert_eq!(client.join().unwrap(), 600);
        }
    });
    // The controller counts a request until its answer reaches it, just after the engine wrote
    // its batch empty: wait for both, then nothing may stay reserved.
    let settled = |e: &Value| e["requests_running"] == 0 && e["requests_waiting"] == 0;
    let done = engine_when(&server, settled);
    assert_eq!(reserved(&done), 0, "{done}");
    let metrics = server.get("/metrics").body;
    assert_eq!(sample(&metrics, "wc_pod_kv_cache_usage_perc"), 0.0);
    assert_eq!(
        sample(&metrics, "vllm:kv_cache_usage_perc{model_name=\"slow\"}"),
        0.0
    );

    // A client that leaves frees its reservation, though no step follows to report it, and its
    // generation stops: it adds none of its 600 tokens (only finished requests count them).
    let tokens_before = done["total_tokens"].as_u64().unwrap();
    let mut stream = EventStream::open(&server.addr, "/v1/completions", &body(5));
    assert!(stream.next_data().is_some(), "a first token");
    assert_eq!(reserved(&server.get("/engines").json()["engines"][0]), 604);
    drop(stream);
    let left = engine_when(&server, settled);
    assert_eq!(reserved(&left), 0, "{left}");
    assert_eq!(left["total_tokens"], tokens_before, "{left}");
    // The controller's ledger takes a cancelled reservation off at once; the worker process's
    // batch must have let the sequence go too: a request reserving 4 + 1000 tokens fits the
    // 1500 only beside nothing, and is refused at once if the left one still holds its 604.
    let big = json!({"model": "slow", "prompt": [2, 10, 7, 9], "max_tokens": 1000,
                     "ignore_eos": true, "stream": true});
    let mut stream = EventStream::open(&server.addr, "/v1/completions", &big);
    assert_eq!(stream.status, 200, "admitted");
    let first = stream.next_data().expect("a first event");
    let first: Value = serde_json::from_str(&first).expect("a chunk, not an error");
    assert!(first["choices"][0]["text"].is_string(), "{first}");
    assert_eq!(reserved(&server.get("/engines").json()["engines"][0]), 1004);
    drop(stream);
    engine_when(&server, |e| settled(e) && reserved(e) == 0);
}

/// The slow model with a chat template (each message's content, in order), so that both
/// completion endpoints can run long generations on it.
fn slow_chat_model(test: &str) -> std::path::PathBuf {
    let slow = slow_model(&scratch(test));
    let template = "{% for m in messages %}{{ m['content'] }}{% endfor %}";
    std::fs::write(slow.join("chat_template.jinja"), template).expect("write the template");
    slow
}

#[test]
fn a_non_streaming_completion_or_chat_stops_when_its_client_leaves() {
    let slow = slow_chat_model("batching-disconnect-model");
    let config = format!(
        "[prewarm]\nkv_cache_tokens = 8192\n\n[[workers]]\ndevice = \"cpu\"\ncount = 1\n\n\
         [[models]]\nname = \"slow\"\npath = {:?}\nattach_on_start = true\n",
        slow.display().to_string()
    );
    let server = Server::start("batching-disconnect", &config);
    // Far more tokens than the test waits for: only cancellation ends them early.
    let completion = json!({"model": "slow", "prompt": "Hello", "max_tokens": 2000,
                            "ignore_eos": true, "n": 2});
    let chat = json!({"model": "slow", "messages": [{"role": "user", "content": "Hello"}],
                      "max_tokens": 2000, "ignore_eos": true});
    let clients = [
        send_only(&server.addr, "/v1/completions", &completion),
        send_only(&server.addr, "/v1/chat/completions", &chat),
    ];
    // Both requests are generating (the completion's two choices and the chat) ...
    engine_when(&server, |e| e["requests_running"] == 3);
    drop(clients);
    // ... then their clients close the connections: the batch empties, and none of the 6000
    // tokens asked for was counted as generated (a finished request's tokens are).
    let settled = engine_when(&server, |e| {
        e["requests_running"] == 0 && e["requests_waiting"] == 0
    });
    assert_eq!(settled["total_tokens"], 0, "{settled}");
    let metrics = server.get("/metrics").body;
    assert_eq!(sample(&metrics, "wc_tokens_total"), 0.0, "{metrics}");
    // The engine is free for the next client at once.
    let reply = server.post(
        "/v1/completions",
        &json!({"model": "slow", "prompt": "Hi", "max_tokens": 3, "ignore_eos": true}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["usage"]["completion_tokens"], 3);
}
