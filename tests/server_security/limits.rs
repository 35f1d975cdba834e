//! What a request, a checkpoint or a config cannot make the server echo or accept: a model name
//! of 100 000 characters and an 8 MiB string in a safetensors header come back cut short (reply
//! and access log); values that would break the server later (a `max_tokens` near the largest
//! number, a zero heartbeat, a KV cache of zero or absurd tokens, a key no header can carry, a
//! wildcard CORS origin) are refused at load; a compressed body is refused (415), not read as
//! its raw bytes.

use std::path::Path;

use serde_json::json;
use worker_controller::config::Config;

use crate::server_common::Server;

#[test]
fn a_model_name_of_100_000_characters_comes_back_short_in_the_reply_and_the_log() {
    let server = Server::spawn(
        "huge-model-name",
        "[[workers]]\ndevice = \"cpu\"\ncount = 1\n",
        &[],
    );
    let name = "m".repeat(100_000);
    let reply = server.post(
        "/v1/completions",
        &json!({"model": name, "prompt": "hi", "max_tokens": 1}),
    );
    reply.assert_error(404, "model_not_found");
    assert!(reply.body.len() < 2048, "{} bytes", reply.body.len());
    assert!(reply.body.contains("more bytes"), "{}", reply.body);
    // The access line of that request is written once the reply is sent.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.log().contains("status=404") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = server.log();
    assert!(log.contains("status=404"), "{log}");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2048, "a log line of {longest} bytes");
}

/// The error `Config::parse` gives for `text`.
fn refusal(text: &str) -> String {
    match Config::parse(text, Path::new("test.toml"), Path::new(".")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn values_that_would_break_the_server_later_are_refused_at_load() {
    let cases = [
        ("[server]\nmax_tokens = 9223372036854775807\n", "max_tokens"),
        ("[server]\nmax_tokens = 1048577\n", "max_tokens"),
        (
            "[runtime]\nheartbeat_timeout = \"0s\"\n",
            "heartbeat_timeout",
        ),
        ("[prewarm]\nkv_cache_tokens = 0\n", "kv_cache_tokens"),
        (
            "[prewarm]\nkv_cache_tokens = 1099511627776\n",
            "kv_cache_tokens",
        ),
        ("[server]\napi_key = \"abc\\ndef\"\n", "control character"),
        ("[server]\ncors_allow_origins = [\"*\"]\n", "\"*\""),
        (
            "[server]\ncors_allow_origins = [\"not an origin\"]\n",
            "not an origin",
        ),
    ];
    for (text, says) in cases {
        let error = refusal(text);
        assert!(error.contains(says), "{text}: {error}");
    }
    let fine = "[server]\nmax_tokens = 1048576\ncors_allow_origins = [\"https://app.example.com\", \"http://localhost:3000\"]\n";
    Config::parse(fine, Path::new("test.toml"), Path::new(".")).expect("accepted");
}

#[test]
fn a_compressed_body_is_refused_as_unsupported_not_read_raw() {
    let server = Server::start("gzip-body", "[[workers]]\ndevice = \"cpu\"\ncount = 1\n");
    let reply = server.raw(
        "POST",
        "/v1/completions",
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ],
        Some("{\"model\": \"m\", \"prompt\": \"hi\"}"),
    );
    reply.assert_error(415, "unsupported_media_type");
    assert!(reply.body.contains("Content-Encoding"), "{}", reply.body);
}

#[test]
fn a_checkpoint_with_a_huge_header_string_gets_a_small_reply() {
    let root = crate::server_common::scratch("huge-header-root");
    let dir = root.join("ckpt");
    std::fs::create_dir_all(&dir).unwrap();
    let good = crate::server_common::fixture("tiny-opt-prenorm");
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(good.join(file), dir.join(file)).unwrap();
    }
    let bytes = std::fs::read(good.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let first = header
        .keys()
        .find(|k| *k != "__metadata__")
        .unwrap()
        .clone();
    header[&first]["dtype"] = json!("F".repeat(8 << 20));
    let text = serde_json::to_string(&header).unwrap();
    let mut weights = (text.len() as u64).to_le_bytes().to_vec();
    weights.extend(text.as_bytes());
    weights.extend(&bytes[8 + n..]);
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();

    let config = format!(
        "[server]\nmodel_roots = [{:?}]\n\n[[workers]]\ndevice = \"cpu\"\ncount = 1\n",
        root.display().to_string()
    );
    let server = Server::start("huge-header", &config);
    let reply = server.post(
        "/engines",
        &json!({"model": dir.display().to_string(), "name": "huge"}),
    );
    assert_eq!(
        reply.status,
        422,
        "{}",
        &reply.body[..reply.body.len().min(500)]
    );
    assert!(reply.body.len() < 4096, "{} bytes", reply.body.len());
    let _ = std::fs::remove_dir_all(root);
}
