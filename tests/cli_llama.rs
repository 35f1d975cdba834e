//! The `worker-controller` binary with Llama-family checkpoints: `generate` on each bundled
//! fixture against transformers' reference, and `make-model` Llama-family presets.

mod common;

use std::process::Command;

use common::{fixture, reference, scratch};

const FIXTURES: [&str; 4] = ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3"];

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_worker-controller"))
}

/// Runs `cmd`, which must succeed, and returns its stdout.
fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn run_json(cmd: &mut Command) -> serde_json::Value {
    serde_json::from_slice(&run_ok(cmd)).unwrap()
}

#[test]
fn generate_on_each_llama_family_fixture_equals_the_reference() {
    for name in FIXTURES {
        let case = &reference(name).cases[0];
        let report = run_json(
            bin()
                .args(["generate", "--json", "--ignore-eos", "--model"])
                .arg(fixture(name))
                .args(["--prompt", &case.prompt]),
        );
        assert_eq!(
            report["prompt_ids"],
            serde_json::json!(case.input_ids),
            "{name}"
        );
        assert_eq!(
            report["new_tokens"],
            serde_json::json!(case.greedy_new_tokens),
            "{name}"
        );
        assert_eq!(report["dtype"], "f32", "{name}");
        let text = report["text"].as_str().unwrap();
        assert!(!text.is_empty() && !text.contains("<|"), "{name}: {text:?}");
    }
}

#[test]
fn generate_streams_the_text_and_stops_on_eos() {
    let case = &reference("tiny-llama").cases[0];
    let out = run_ok(
        bin()
            .args(["generate", "--model"])
            .arg(fixture("tiny-llama-sharded"))
            .args(["--prompt", &case.prompt]),
    );
    let text = String::from_utf8_lossy(&out);
    // The reference's greedy stream up to its first EOS id (`<|im_end|>` or `<|end_of_text|>`).
    let eos = reference("tiny-llama").eos_token_ids;
    assert!(
        case.greedy_new_tokens.iter().any(|id| eos.contains(id)),
        "the reference meets an EOS"
    );
    let until_eos = case.greedy_text.split("<|").next().unwrap();
    assert_eq!(text.trim_end_matches('\n'), until_eos);
}

#[test]
fn make_model_writes_a_sharded_llama_checkpoint_that_generates() {
    let dir = scratch("make-model-llama");
    run_ok(
        bin()
            .args(["make-model", "--preset", "llama-tiny", "--out"])
            .arg(&dir),
    );
    for file in [
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert!(dir.join(file).is_file(), "{file}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["torch_dtype"], "bfloat16", "bf16 by default");
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let map = index["weight_map"].as_object().unwrap();
    assert!(map.contains_key("model.embed_tokens.weight") && map.contains_key("lm_head.weight"));
    assert!(map
        .keys()
        .all(|k| k.starts_with("model.") || k == "lm_head.weight"));
    let report = run_json(
        bin()
            .args([
                "generate",
                "--json",
                "--prompt-ids",
                "0,5,6",
                "--max-new-tokens",
                "4",
                "--ignore-eos",
                "--model",
            ])
            .arg(&dir),
    );
    assert_eq!(report["dtype"], "bf16");
    assert_eq!(report["new_tokens"].as_array().unwrap().len(), 4);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn make_model_refuses_unknown_presets_and_shards_for_opt() {
    let dir = scratch("make-model-refusals");
    let out = bin()
        .args(["make-model", "--preset", "llama-9000", "--out"])
        .arg(dir.join("a"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("llama-3.1-8b") && err.contains("opt-125m"),
        "{err}"
    );
    let out = bin()
        .args(["make-model", "--preset", "tiny", "--shards", "2", "--out"])
        .arg(dir.join("b"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shards"));
    let _ = std::fs::remove_dir_all(dir);
}
