//! The `worker-controller` binary as a user runs it: generate (text, ids, JSON), hub-cache lookup, make-model.

mod common;

use std::process::Command;

use common::{fixture, scratch};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_worker-controller"))
}

fn reference_case(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    reference["cases"][1].clone()
}

#[test]
fn generate_json_reports_tokens_text_and_every_anchor() {
    let case = reference_case("tiny-opt-postnorm-proj");
    let out = bin()
        .args([
            "generate",
            "--json",
            "--ignore-eos",
            "--max-new-tokens",
            "24",
            "--model",
        ])
        .arg(fixture("tiny-opt-postnorm-proj"))
        .args(["--prompt", case["prompt"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["prompt_ids"], case["input_ids"]);
    assert_eq!(report["new_tokens"], case["greedy_new_tokens"]);
    assert_eq!(report["text"], case["greedy_text"]);
    let phases = report["timings"]["phases_ms"].as_object().unwrap();
    let mut anchors: Vec<&str> = phases.keys().map(String::as_str).collect();
    anchors.sort_unstable();
    assert_eq!(
        anchors,
        [
            "device_ready",
            "engine_ready",
            "first_token",
            "process_started",
            "weights_on_device",
            "weights_read",
        ],
        "every anchor, and only those"
    );
    // The phases that do work took time (the first anchor is the start itself), and the
    // phases add up to the total: each is the time between its anchor and the one before.
    for anchor in [
        "device_ready",
        "weights_read",
        "engine_ready",
        "first_token",
    ] {
        let ms = phases[anchor].as_f64().unwrap();
        assert!(ms > 0.0 && ms.is_finite(), "{anchor}: {ms}");
    }
    let sum: f64 = phases.values().map(|v| v.as_f64().unwrap()).sum();
    let total = report["timings"]["total_ms"].as_f64().unwrap();
    assert!(
        total > 0.0 && (sum - total).abs() <= 1e-6 * total + 1e-3,
        "phases add up to {sum} ms, the total is {total} ms"
    );
}

#[test]
fn generate_from_prompt_ids_streams_text() {
    let case = reference_case("tiny-opt-prenorm");
    let ids: Vec<String> = case["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let out = bin()
        .args(["generate", "--ignore-eos", "--model"])
        .arg(fixture("tiny-opt-prenorm"))
        .args(["--prompt-ids", &ids.join(",")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim_end_matches('\n'),
        case["greedy_text"].as_str().unwrap()
    );
}

#[test]
fn hub_ids_resolve_from_the_local_cache_and_misses_show_no_paths() {
    let cache = scratch("hub-cache");
    let missing = bin()
        .args(["generate", "--model", "facebook/opt-125m"])
        .env("HF_HUB_CACHE", &cache)
        .env("HF_HOME", cache.join("home"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("not in the local Hugging Face cache"), "{err}");
    assert!(
        !err.contains(&cache.display().to_string()),
        "the message shows no server paths (issue 15 item 8): {err}"
    );

    let snapshot = cache.join("models--acme--tiny-opt/snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(cache.join("models--acme--tiny-opt/refs")).unwrap();
    std::fs::write(cache.join("models--acme--tiny-opt/refs/main"), "0123abcd").unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-opt-prenorm").join(file), snapshot.join(file)).unwrap();
    }
    let tokens = |model: &std::ffi::OsStr| {
        let out = bin()
            .args([
                "generate",
                "--json",
                "--ignore-eos",
                "--max-new-tokens",
                "8",
            ])
            .args(["--prompt", "Beautiful is better than", "--model"])
            .arg(model)
            .env("HF_HUB_CACHE", &cache)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (report["new_tokens"].clone(), report["text"].clone())
    };
    let from_hub = tokens("acme/tiny-opt".as_ref());
    assert_eq!(from_hub.0.as_array().map(Vec::len), Some(8), "{from_hub:?}");
    assert_eq!(
        from_hub,
        tokens(fixture("tiny-opt-prenorm").as_os_str()),
        "the hub id loads the snapshot's checkpoint"
    );
}

#[test]
fn bad_dtype_and_device_flags_are_rejected_with_their_names() {
    let out = bin().args(["generate", "--dtype", "f8"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown dtype `f8`"));
    let out = bin()
        .args(["generate", "--device", "npu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device `npu`"));
}

/// `generate --json` of 3 tokens from the checkpoint in `dir`, the prompt given as `flag value`.
fn generate_three(dir: &std::path::Path, flag: &str, value: &str) -> serde_json::Value {
    let run = bin()
        .args(["generate", "--json", flag, value])
        .args(["--max-new-tokens", "3", "--ignore-eos", "--model"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&run.stdout).unwrap()
}

#[test]
fn make_model_writes_a_checkpoint_that_loads_and_generates() {
    let dir = scratch("make-model");
    let out = bin()
        .args(["make-model", "--preset", "tiny", "--dtype", "f16", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "OPTForCausalLM");
    assert_eq!(config["dtype"], "float16");
    let report = generate_three(&dir, "--prompt-ids", "2,5,6");
    assert_eq!(report["dtype"], "f16");
    assert_eq!(report["new_tokens"].as_array().unwrap().len(), 3);
    // Its placeholder tokenizer takes text prompts of its words and gives every token text.
    let report = generate_three(&dir, "--prompt", "t2 t5 t6");
    assert_eq!(
        report["prompt_ids"],
        serde_json::json!([2, 5, 6]),
        "{report}"
    );
    let words = report["text"].as_str().unwrap().split_whitespace().count();
    assert_eq!(words, 3, "one word per token: {report}");
}
