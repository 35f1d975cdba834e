//! The small endpoints vLLM's and OpenAI's clients call, over real HTTP: `GET /v1/models/{id}`,
//! `GET /version`, `POST /tokenize` and `POST /detokenize` (their shapes, the ids transformers
//! makes, a model attached on demand, the errors), and who may call them.

mod server_common;

use serde_json::{json, Value};
use server_common::{fixture, model_entry, reference, Server};

const OPT: &str = "tiny-opt-prenorm";
const LLAMA: &str = "tiny-llama";
const KEY: &str = "endpoints-key";

/// Two workers; OPT attached at start, Llama configured and attached on first use.
fn config(server: &str) -> String {
    format!(
        "{server}[[workers]]\ndevice = \"cpu\"\ncount = 2\n\n{}{}",
        model_entry(OPT, OPT, true, "5m"),
        model_entry(LLAMA, LLAMA, false, "5m")
    )
}

/// `max_position_embeddings` of a fixture's config.json.
fn max_positions(name: &str) -> u64 {
    let text = std::fs::read_to_string(fixture(name).join("config.json")).unwrap();
    let config: Value = serde_json::from_str(&text).unwrap();
    config["max_position_embeddings"].as_u64().unwrap()
}

fn tokenize(server: &Server, body: Value) -> Value {
    let reply = server.post("/tokenize", &body);
    assert_eq!(reply.status, 200, "{body}: {}", reply.body);
    reply.json()
}

#[test]
fn models_by_id_and_version() {
    let server = Server::start("endpoints-models", &config(""));
    let attached = server.get(&format!("/v1/models/{OPT}"));
    assert_eq!(attached.status, 200, "{}", attached.body);
    let attached = attached.json();
    assert_eq!(attached["id"], OPT);
    assert_eq!(attached["object"], "model");
    assert_eq!(attached["owned_by"], "worker-controller");
    assert!(attached["created"].as_u64().unwrap() > 0, "{attached}");
    assert_eq!(attached["state"], "attached");
    // The same entry the list has.
    let list = server.get("/v1/models").json();
    let listed = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == OPT)
        .unwrap();
    assert_eq!(listed, &attached);
    let configured = server.get(&format!("/v1/models/{LLAMA}")).json();
    assert_eq!(configured["state"], "not_attached", "{configured}");

    // Unknown ids, with and without a slash (hub ids have one): 404 in the error shape.
    for id in ["no-such-model", "org/no-such-model", "tiny-opt"] {
        let reply = server.get(&format!("/v1/models/{id}"));
        reply.assert_error(404, "model_not_found");
        let error = &reply.json()["error"];
        assert_eq!(error["code"], 404);
        assert!(error["message"].as_str().unwrap().contains(id), "{error}");
    }

    let version = server.get("/version");
    assert_eq!(version.status, 200);
    let version = version.json();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    let commit = version["commit"].as_str().unwrap();
    assert!(!commit.is_empty(), "{version}");
}

#[test]
fn tokenize_gives_the_ids_transformers_makes_and_detokenize_gives_the_text_back() {
    let server = Server::start("endpoints-tokenize", &config(""));
    for (prompt, ids, _) in reference(OPT) {
        let reply = tokenize(&server, json!({"model": OPT, "prompt": prompt}));
        assert_eq!(reply["tokens"], json!(ids), "{prompt}");
        assert_eq!(reply["count"], ids.len());
        assert_eq!(reply["max_model_len"], max_positions(OPT));
        assert_eq!(reply["token_strs"], Value::Null);

        let text = server.post("/detokenize", &json!({"model": OPT, "tokens": ids}));
        assert_eq!(text.status, 200, "{}", text.body);
        // Special tokens are decoded too (OPT's BOS is `</s>`), as vLLM does.
        let text = text.json()["prompt"].as_str().unwrap().to_owned();
        assert!(text.ends_with(&prompt), "{text:?} for {prompt:?}");
    }

    // Without special tokens, and with each token's string.
    let (prompt, ids, _) = &reference(OPT)[0];
    let plain = tokenize(
        &server,
        json!({"model": OPT, "prompt": prompt, "add_special_tokens": false, "return_token_strs": true}),
    );
    assert_eq!(plain["tokens"], json!(ids[1..]), "{plain}");
    assert_eq!(plain["token_strs"].as_array().unwrap().len(), ids.len() - 1);
    let detok = server.post("/detokenize", &json!({"model": OPT, "tokens": &ids[1..]}));
    assert_eq!(detok.json()["prompt"], prompt.as_str());

    // The count is the one a completion of that prompt reports.
    let completion = server.post(
        "/v1/completions",
        &json!({"model": OPT, "prompt": prompt, "max_tokens": 1}),
    );
    assert_eq!(
        completion.json()["usage"]["prompt_tokens"],
        json!(ids.len())
    );
    // A prompt longer than the context is counted, not refused.
    let long = tokenize(&server, json!({"model": OPT, "prompt": "a b ".repeat(200)}));
    assert!(
        long["count"].as_u64().unwrap() > long["max_model_len"].as_u64().unwrap(),
        "{long}"
    );
}

#[test]
fn chats_are_tokenized_with_the_models_template_after_an_attach_on_demand() {
    let server = Server::start("endpoints-chat", &config(""));
    let messages = json!([{"role": "system", "content": "Zen"},
                          {"role": "user", "content": "Beautiful is better than"}]);
    // tiny-llama is configured, not attached: tokenizing attaches it.
    let chat = tokenize(&server, json!({"model": LLAMA, "messages": messages}));
    let engines = server.get("/engines").json();
    assert!(
        engines["engines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == LLAMA),
        "{engines}"
    );
    assert_eq!(chat["max_model_len"], max_positions(LLAMA));
    let count = chat["count"].as_u64().unwrap();
    assert_eq!(chat["tokens"].as_array().unwrap().len() as u64, count);
    // The prompt a chat completion of those messages sends is the same length.
    let reply = server.post(
        "/v1/chat/completions",
        &json!({"model": LLAMA, "messages": messages, "max_tokens": 1}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["usage"]["prompt_tokens"], count);
    // Without the generation prompt the rendered chat is shorter or the same.
    let bare = tokenize(
        &server,
        json!({"model": LLAMA, "messages": messages, "add_generation_prompt": false}),
    );
    assert!(bare["count"].as_u64().unwrap() <= count, "{bare} {chat}");
    // Detokenized, the chat's text is there.
    let text = server.post(
        "/detokenize",
        &json!({"model": LLAMA, "tokens": chat["tokens"]}),
    );
    let text = text.json()["prompt"].as_str().unwrap().to_owned();
    assert!(text.contains("Beautiful is better than"), "{text:?}");

    // OPT has no chat template: said so.
    let reply = server.post("/tokenize", &json!({"model": OPT, "messages": messages}));
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("template"), "{}", reply.body);
}

#[test]
fn bad_tokenize_and_detokenize_requests_are_refused_with_the_reason() {
    let server = Server::start("endpoints-refusals", &config(""));
    let refused = |path: &str, body: Value, status: u16, kind: &str, says: &str| {
        let reply = server.post(path, &body);
        reply.assert_error(status, kind);
        assert!(reply.body.contains(says), "{body}: {}", reply.body);
    };
    let messages = json!([{"role": "user", "content": "hi"}]);
    refused(
        "/tokenize",
        json!({"model": OPT, "prompt": "x", "messages": messages}),
        400,
        "invalid_request",
        "not both",
    );
    refused(
        "/tokenize",
        json!({"model": OPT}),
        400,
        "invalid_request",
        "`prompt`",
    );
    refused(
        "/tokenize",
        json!({"model": OPT, "prompt": 5}),
        400,
        "invalid_request",
        "invalid request",
    );
    refused(
        "/tokenize",
        json!({"model": OPT, "prompt": "x", "wizardry": 1}),
        400,
        "invalid_request",
        "wizardry",
    );
    refused(
        "/tokenize",
        json!({"model": OPT, "messages": [{"role": "wizard", "content": "x"}]}),
        400,
        "invalid_request",
        "messages",
    );
    refused(
        "/tokenize",
        json!({"model": "no-such-model", "prompt": "x"}),
        404,
        "model_not_found",
        "no-such-model",
    );
    // Two models configured: which one must be said.
    refused(
        "/tokenize",
        json!({"prompt": "x"}),
        400,
        "invalid_request",
        "`model` is required",
    );
    refused(
        "/detokenize",
        json!({"model": OPT, "tokens": [2, 1_000_000]}),
        400,
        "invalid_request",
        "1000000",
    );
    refused(
        "/detokenize",
        json!({"model": OPT, "tokens": [-1]}),
        400,
        "invalid_request",
        "invalid request",
    );
    refused(
        "/detokenize",
        json!({"model": OPT}),
        400,
        "invalid_request",
        "tokens",
    );
    refused(
        "/detokenize",
        json!({"model": "no-such-model", "tokens": [1]}),
        404,
        "model_not_found",
        "no-such-model",
    );
    // A GET is not a tokenize.
    assert_eq!(server.get("/tokenize").status, 405);
}

#[test]
fn the_key_guards_tokenize_and_models_but_not_version() {
    let server = Server::start(
        "endpoints-key",
        &config(&format!("[server]\napi_key = \"{KEY}\"\n\n")),
    );
    assert_eq!(server.get("/version").status, 200);
    let body = json!({"model": OPT, "prompt": "x"}).to_string();
    for (method, path, body) in [
        ("POST", "/tokenize", Some(body.as_str())),
        (
            "POST",
            "/detokenize",
            Some(r#"{"model": "tiny-opt-prenorm", "tokens": [2]}"#),
        ),
        ("GET", "/v1/models/tiny-opt-prenorm", None),
    ] {
        let json = [("Content-Type", "application/json")];
        let refused = server.raw(method, path, &json, body);
        assert_eq!(refused.status, 401, "{path}: {}", refused.body);
        let bearer = format!("Bearer {KEY}");
        let keyed = [
            ("Content-Type", "application/json"),
            ("Authorization", &bearer),
        ];
        let served = server.raw(method, path, &keyed, body);
        assert_eq!(served.status, 200, "{path}: {}", served.body);
    }
}

#[test]
fn an_engine_attached_by_path_is_tokenized_from_its_admitted_directory() {
    let roots = format!(
        "[server]\nmodel_roots = [{:?}]\n\n",
        fixture("tiny-opt-postnorm-proj").display().to_string()
    );
    let server = Server::start("endpoints-by-path", &config(&roots));
    let attach = json!({"model": fixture("tiny-opt-postnorm-proj"), "name": "post"});
    let reply = server.post("/engines", &attach);
    assert_eq!(reply.status, 201, "{}", reply.body);
    for (prompt, ids, _) in reference("tiny-opt-postnorm-proj") {
        let reply = tokenize(&server, json!({"model": "post", "prompt": prompt}));
        assert_eq!(reply["tokens"], json!(ids), "{prompt}");
        assert_eq!(
            reply["max_model_len"],
            max_positions("tiny-opt-postnorm-proj")
        );
    }
}
