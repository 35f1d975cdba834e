//! `POST /v1/chat/completions` over real HTTP: replies equal transformers' chat replies for every
//! Llama-family fixture (plain and streamed), the OpenAI reply and chunk layout, typed 400s for
//! what the engine cannot do, `/v1/models` with each configured model's state, and the official
//! `openai` Python client when it is installed.

mod server_common;

use std::process::Command;

use serde_json::{json, Value};
use server_common::{fixture, model_entry, python_with, skip_without_python, EventStream, Server};

const FIXTURES: [&str; 4] = ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3"];
const OPT: &str = "tiny-opt-prenorm";

/// Two CPU workers; every Llama-family fixture and an OPT model configured, the OPT one and
/// tiny-llama attached at start, the others attached on demand (evicting idle ones).
fn config() -> String {
    let mut text =
        "[runtime]\nattach_timeout = \"60s\"\n\n[[workers]]\ndevice = \"cpu\"\ncount = 2\n\n"
            .to_string();
    text.push_str(&model_entry(OPT, OPT, true, "0s"));
    for name in FIXTURES {
        text.push_str(&model_entry(name, name, name == "tiny-llama", "0s"));
    }
    text
}

/// A fixture's chat cases: `(messages, reply, prompt tokens, reply tokens)`.
fn chat_cases(name: &str) -> Vec<(Value, String, usize, usize)> {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    reference["chat_cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["messages"].clone(),
                c["reply"].as_str().unwrap().to_owned(),
                c["input_ids"].as_array().unwrap().len(),
                c["reply_tokens"].as_array().unwrap().len(),
            )
        })
        .collect()
}

fn chat(model: &str, messages: &Value, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "messages": messages,
        "max_tokens": 24,
        "temperature": 0,
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// Checks a non-streamed reply's layout, field by field, as the OpenAI clients parse it.
fn check_reply_layout(body: &Value, model: &str) {
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 0);
    assert_eq!(body["model"], model);
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[0]["message"]["role"], "assistant");
    assert!(choices[0]["message"]["content"].is_string());
    assert!(choices[0]["logprobs"].is_null());
    assert!(["stop", "length"].contains(&choices[0]["finish_reason"].as_str().unwrap()));
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
}

/// A streamed chat's chunks, checked for layout: the role first, then content deltas, one
/// finish, then the usage chunk. Returns the text, the finish reason and the usage.
fn read_stream(chunks: &[Value], model: &str) -> (String, String, Value) {
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for chunk in chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id, "one id for every chunk");
        assert_eq!(chunk["model"], model);
        assert!(chunk["created"].as_u64().unwrap() > 0);
    }
    let first = &chunks[0]["choices"][0];
    assert_eq!(first["delta"]["role"], "assistant", "{}", chunks[0]);
    assert!(first["finish_reason"].is_null());
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]), "{usage_chunk}");
    let mut text = String::new();
    let mut finish = None;
    for (i, chunk) in rest.iter().enumerate() {
        let choice = &chunk["choices"][0];
        assert_eq!(choice["index"], 0);
        if i > 0 {
            assert!(choice["delta"].get("role").is_none(), "the role comes once");
        }
        if let Some(content) = choice["delta"]["content"].as_str() {
            assert!(finish.is_none(), "no text after the finish");
            text.push_str(content);
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            assert!(finish.is_none(), "one finish");
            finish = Some(reason.to_owned());
        }
    }
    (
        text,
        finish.expect("a finish reason"),
        usage_chunk["usage"].clone(),
    )
}

#[test]
fn chat_replies_equal_the_reference_for_every_fixture_plain_and_streamed() {
    let server = Server::start("chat-reference", &config());
    for name in FIXTURES {
        for (messages, reply, prompt_tokens, reply_tokens) in chat_cases(name) {
            let response = server.post("/v1/chat/completions", &chat(name, &messages, false));
            assert_eq!(response.status, 200, "{name}: {}", response.body);
            let body = response.json();
            check_reply_layout(&body, name);
            assert_eq!(
                body["choices"][0]["message"]["content"],
                reply.as_str(),
                "{name}"
            );
            assert_eq!(body["choices"][0]["finish_reason"], "stop", "{name}");
            assert_eq!(body["usage"]["prompt_tokens"], prompt_tokens, "{name}");
            assert_eq!(body["usage"]["completion_tokens"], reply_tokens, "{name}");

            let stream = EventStream::open(
                &server.addr,
                "/v1/chat/completions",
                &chat(name, &messages, true),
            );
            assert_eq!(stream.status, 200, "{name}");
            let (chunks, done) = stream.collect();
            assert!(done, "{name}: the stream ends with [DONE]");
            let (text, finish, usage) = read_stream(&chunks, name);
            assert_eq!(text, reply, "{name}: streamed");
            assert_eq!(finish, "stop", "{name}");
            assert_eq!(usage["prompt_tokens"], prompt_tokens, "{name}");
            assert_eq!(usage["completion_tokens"], reply_tokens, "{name}");
        }
    }
    // Content given as text parts is the same message.
    let (messages, reply, _, _) = chat_cases("tiny-qwen3").remove(0);
    let parts: Vec<Value> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json!({"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}))
        .collect();
    let body = server
        .post(
            "/v1/chat/completions",
            &chat("tiny-qwen3", &json!(parts), false),
        )
        .json();
    assert_eq!(body["choices"][0]["message"]["content"], reply.as_str());
}

#[test]
fn stream_without_usage_and_length_limits() {
    let server = Server::start("chat-stream-shape", &config());
    let (messages, reply, _, _) = chat_cases("tiny-llama").remove(0);
    let mut body = chat("tiny-llama", &messages, false);
    body["stream"] = json!(true);
    body["max_completion_tokens"] = json!(3);
    body.as_object_mut().unwrap().remove("max_tokens");
    let (chunks, done) = EventStream::open(&server.addr, "/v1/chat/completions", &body).collect();
    assert!(done);
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage unless asked"
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(
        reply.starts_with(&text) && text.len() < reply.len(),
        "{text:?}"
    );
    // A stop string ends the reply before it.
    let mut body = chat("tiny-llama", &messages, false);
    body["stop"] = json!(["better"]);
    let reply = server.post("/v1/chat/completions", &body).json();
    assert_eq!(reply["choices"][0]["message"]["content"], "Beautiful is ");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
}

#[test]
fn a_model_without_a_chat_template_and_malformed_chats_are_400() {
    let server = Server::start("chat-errors", &config());
    let user = json!([{"role": "user", "content": "hi"}]);
    for stream in [false, true] {
        let reply = server.post("/v1/chat/completions", &chat(OPT, &user, stream));
        reply.assert_error(400, "invalid_request");
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no chat template"),
            "{}",
            reply.body
        );
    }
    for (body, says) in [
        (json!({"model": "tiny-llama", "messages": []}), "empty"),
        (
            json!({"model": "tiny-llama", "messages": [{"role": "wizard", "content": "x"}]}),
            "wizard",
        ),
        (
            json!({"model": "tiny-llama", "messages": [{"role": "user", "content": 7}]}),
            "content",
        ),
        (
            json!({"model": "tiny-llama", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "text",
        ),
        (
            json!({"model": "tiny-llama", "messages": {"role": "user"}}),
            "list",
        ),
        (
            json!({"model": "tiny-llama", "messages": user, "n": 17}),
            "`n`",
        ),
        (
            json!({"model": "tiny-llama", "messages": user, "top_logprobs": 3}),
            "`top_logprobs`",
        ),
        (
            json!({"model": "tiny-llama", "messages": user, "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "`tools`",
        ),
        (
            json!({"model": "tiny-llama", "messages": user, "response_format": {"type": "json_object"}}),
            "`response_format`",
        ),
        (
            json!({"model": "tiny-llama", "messages": user, "frequency_penalty": 2.5}),
            "`frequency_penalty`",
        ),
        (
            json!({"model": "tiny-llama", "messages": user, "max_tokens": 1_000_000}),
            "max_tokens",
        ),
    ] {
        let reply = server.post("/v1/chat/completions", &body);
        reply.assert_error(400, "invalid_request");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(says), "{body}: {message}");
    }
    // Not JSON, or not an object: 400 in the same shape.
    server
        .raw("POST", "/v1/chat/completions", &[], Some("{\"model\": "))
        .assert_error(400, "invalid_request");
    server
        .raw("POST", "/v1/chat/completions", &[], Some("[1]"))
        .assert_error(400, "invalid_request");
    // An unknown model is 404, as for completions.
    server
        .post("/v1/chat/completions", &chat("nope", &user, false))
        .assert_error(404, "model_not_found");
    // Harmless fields are accepted, and the server is still well.
    let mut body = chat("tiny-llama", &user, false);
    body["user"] = json!("someone");
    body["metadata"] = json!({"trace": "1"});
    body["logprobs"] = json!(false);
    body["presence_penalty"] = json!(0);
    let reply = server.post("/v1/chat/completions", &body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(server.get("/ready").status, 200);
    let workers = server.get("/workers").json();
    assert!(workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["failures"] == 0));
}

#[test]
fn models_lists_configured_models_with_their_state() {
    let server = Server::start("chat-models", &config());
    let state = |server: &Server| -> Vec<(String, String)> {
        let list = server.get("/v1/models").json();
        assert_eq!(list["object"], "list");
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m["object"], "model");
                assert!(m["created"].as_u64().unwrap() > 0);
                (
                    m["id"].as_str().unwrap().to_owned(),
                    m["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let mut listed = state(&server);
    listed.sort();
    let mut expected: Vec<(String, String)> = [OPT, "tiny-llama"]
        .iter()
        .map(|n| (n.to_string(), "attached".to_string()))
        .chain(
            ["tiny-mistral", "tiny-qwen2", "tiny-qwen3"]
                .iter()
                .map(|n| (n.to_string(), "not_attached".to_string())),
        )
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
    // A chat for a configured model attaches it (evicting an idle one).
    let user = json!([{"role": "user", "content": "hi"}]);
    let reply = server.post("/v1/chat/completions", &chat("tiny-qwen2", &user, false));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let listed = state(&server);
    assert!(
        listed.contains(&("tiny-qwen2".into(), "attached".into())),
        "{listed:?}"
    );
    assert_eq!(listed.len(), 5, "each configured model once: {listed:?}");
}

#[test]
fn the_official_openai_python_client_chats_plain_and_streamed() {
    let Some(python) = python_with("openai") else {
        return skip_without_python(
            "no Python with the `openai` package (set WC_PYTHON to one, e.g. a venv with \
             `pip install openai`, or run .ci/python-deps.sh); the reply layout it parses is \
             checked by the other tests here",
        );
    };
    let server = Server::start("chat-openai-client", &config());
    let script = fixture("../openai_client.py");
    let cases = json!(FIXTURES
        .iter()
        .map(|name| {
            let (messages, reply, prompt_tokens, reply_tokens) = chat_cases(name).remove(0);
            json!({"model": name, "messages": messages, "reply": reply,
                   "prompt_tokens": prompt_tokens, "reply_tokens": reply_tokens})
        })
        .collect::<Vec<_>>());
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("http://{}/v1", server.addr))
        .arg(cases.to_string())
        .arg(OPT)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    assert!(stdout.contains("all ok"), "{stdout}");
}
