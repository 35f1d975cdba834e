//! Read once, hand down: with worker processes (the default), each weight file's safetensors
//! header is parsed once per attach, by the controller's inspection; the worker process gets
//! the parsed headers with the attach and reads only data. A re-attach of unchanged files
//! parses none (the backend keeps its inspection while the files are unchanged).

mod server_common;

use std::collections::BTreeMap;

use serde_json::{json, Value};
use server_common::{scratch, Server};

/// Times the log says each weight file's header was parsed, by file name.
fn parses(server: &Server) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in server.log().lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if event["message"] == "safetensors header parsed" {
            let file = event["file"].as_str().expect("the event names its file");
            let name = std::path::Path::new(file).file_name().unwrap();
            *counts
                .entry(name.to_string_lossy().into_owned())
                .or_default() += 1;
        }
    }
    counts
}

#[test]
fn each_weight_file_header_is_parsed_once_per_attach_across_the_process_boundary() {
    // A sharded checkpoint: the Llama-family test preset, two weight files.
    let model = scratch("headers-once-model");
    let written = (worker_controller::models::llama::FAMILY.write_preset)(
        "llama-tiny",
        worker_controller::DType::F32,
        &model,
        0,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    let shards: Vec<String> = written
        .files
        .into_iter()
        .filter(|f| f.ends_with(".safetensors"))
        .collect();
    assert_eq!(shards.len(), 2, "the preset is sharded");
    let config = format!(
        "[[workers]]\ndevice = \"cpu\"\n\n[[models]]\nname = \"tiny\"\npath = {:?}\n",
        model.display().to_string()
    );
    let server = Server::spawn_with_env(
        "headers-once",
        &config,
        &["--log-format", "json"],
        &[("RUST_LOG", "info,wc::headers=debug")],
    );
    assert!(
        server.log().contains("worker prewarmed"),
        "the worker runs in its own process: {}",
        server.log()
    );
    let generate = json!({"model": "tiny", "prompt": [1, 5, 7], "max_tokens": 2});
    let reply = server.post("/v1/completions", &generate);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let once: BTreeMap<String, usize> = shards.iter().map(|s| (s.clone(), 1)).collect();
    assert_eq!(
        parses(&server),
        once,
        "the first attach parsed each shard's header once (the inspection), not again in the \
         worker process"
    );

    let detached = server.request("DELETE", "/engines/tiny", None);
    assert_eq!(detached.status, 200, "{}", detached.body);
    let reply = server.post("/v1/completions", &generate);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        parses(&server),
        once,
        "a re-attach of unchanged files parses no header"
    );
}
