//! A checkpoint whose headers pass but whose attach would fail later (tokenizer, chat template,
//! ids outside the vocabulary, a context of one position) is refused before a live idle engine is
//! evicted for it: the engine stays attached and keeps serving.

mod server_common;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use server_common::{fixture, model_entry, scratch, Server};

const PRENORM: &str = "tiny-opt-prenorm";

/// A copy of the fixture in `root/name`, with `change` applied to it.
fn broken(root: &Path, name: &str, change: impl Fn(&Path)) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture(PRENORM).join(file), dir.join(file)).unwrap();
    }
    change(&dir);
    dir
}

fn edit_json(path: &Path, edit: impl Fn(&mut Value)) {
    let mut value: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, serde_json::to_vec(&value).unwrap()).unwrap();
}

fn attached_names(server: &Server) -> Vec<String> {
    server.get("/engines").json()["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn an_attach_that_would_fail_after_its_headers_evicts_no_engine() {
    let root = scratch("evict-late-models");
    let cases = [
        broken(&root, "bad-tokenizer", |dir| {
            std::fs::write(dir.join("tokenizer.json"), b"{\"version\": ").unwrap()
        }),
        broken(&root, "bad-template", |dir| {
            let config = json!({"chat_template": "{% for m in messages %}{{ m.content "});
            std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap()
        }),
        broken(&root, "bos-outside-vocab", |dir| {
            edit_json(&dir.join("tokenizer.json"), |t| {
                t["post_processor"]["special_tokens"]["</s>"]["ids"] = json!([600]);
            })
        }),
        broken(&root, "one-position", |dir| {
            edit_json(&dir.join("config.json"), |c| {
                c["max_position_embeddings"] = json!(1);
            })
        }),
        broken(&root, "bad-generation-config", |dir| {
            std::fs::write(dir.join("generation_config.json"), b"[1, 2").unwrap()
        }),
    ];
    let config = format!(
        "[server]\nmodel_roots = [{:?}, {:?}]\n\n[[workers]]\ndevice = \"cpu\"\n\n{}",
        root.display().to_string(),
        fixture("").display().to_string(),
        model_entry("idle", PRENORM, true, "0s"),
    );
    let server = Server::start("evict-late", &config);
    assert_eq!(attached_names(&server), ["idle"]);
    for dir in &cases {
        let reply = server.post("/engines", &json!({"model": dir.display().to_string()}));
        assert_eq!(reply.status, 422, "{}: {}", dir.display(), reply.body);
        assert_eq!(
            attached_names(&server),
            ["idle"],
            "{}: the idle engine is still attached",
            dir.display()
        );
    }
    let served = server.post(
        "/v1/completions",
        &json!({"model": "idle", "prompt": "Hello", "max_tokens": 4}),
    );
    assert_eq!(served.status, 200, "{}", served.body);
}

/// `MemAvailable` of the host, in bytes.
fn host_available() -> u64 {
    worker_controller::load::device::host_memory().1
}

#[test]
fn a_model_whose_kv_budget_would_not_fit_after_the_eviction_evicts_no_engine() {
    let root = scratch("evict-fit-models");
    let big = server_common::slow_model(&root.join("big-kv"));
    let kv_per_token = |dir: &Path| {
        let spec = wc_actors::ModelSpec {
            model: dir.display().to_string(),
            dtype: None,
            canonical: false,
            park: None,
        };
        worker_controller::backend::inspect(&spec)
            .unwrap()
            .footprint
            .kv_bytes_per_token
    };
    let (big_kv, idle_kv) = (kv_per_token(&big), kv_per_token(&fixture(PRENORM)));
    assert!(big_kv >= 8 * idle_kv, "{big_kv} vs {idle_kv}");
    // A budget the idle model's KV cache fits in four times over, and the big one's does not
    // fit in twice what the host has.
    let tokens = 2 * host_available() / big_kv;
    assert!(tokens * idle_kv < host_available() / 4);
    let config = format!(
        "[prewarm]\nkv_cache_tokens = {tokens}\n\n[server]\nmodel_roots = [{:?}, {:?}]\n\n\
         [[workers]]\ndevice = \"cpu\"\n\n{}",
        root.display().to_string(),
        fixture("").display().to_string(),
        model_entry("idle", PRENORM, true, "0s"),
    );
    let server = Server::start("evict-fit", &config);
    assert_eq!(attached_names(&server), ["idle"]);
    let reply = server.post("/engines", &json!({"model": big.display().to_string()}));
    reply.assert_error(507, "does_not_fit");
    assert_eq!(
        attached_names(&server),
        ["idle"],
        "the idle engine is still attached"
    );
}
