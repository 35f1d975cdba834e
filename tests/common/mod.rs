//! Helpers shared by the integration tests: fixture paths and scratch copies of checkpoints.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod decoding;
pub mod meeting;

/// A model spec naming the checkpoint in `dir`, in its own dtype.
pub fn spec(dir: &Path) -> wc_actors::ModelSpec {
    wc_actors::ModelSpec {
        model: dir.display().to_string(),
        dtype: None,
        canonical: false,
        park: None,
    }
}

/// A prewarmed CPU worker device with a 64 MiB host cache, as the runtime opens one.
pub fn cpu_worker() -> worker_controller::CandleDevice {
    let options = wc_actors::PrewarmOptions {
        host_cache_bytes: 64 << 20,
        ..wc_actors::PrewarmOptions::default()
    };
    worker_controller::CandleDevice::open(&wc_actors::DeviceSpec::Cpu, Some(&options))
        .unwrap()
        .0
}

/// A bundled fixture checkpoint directory.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fresh, empty directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wc-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A writable copy of a fixture's config, weights and tokenizer.
pub fn copy_fixture(name: &str, test: &str) -> PathBuf {
    let dir = scratch(test);
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture(name).join(file), dir.join(file)).unwrap();
    }
    dir
}

/// A random-weight OPT (the fixtures' tokenizer, 4096 positions) big enough that a long
/// generation takes seconds on a CPU worker, written into `dir`.
pub fn slow_model(dir: &std::path::Path) -> PathBuf {
    use worker_controller::models::opt::presets::{preset, write_checkpoint};
    let mut config = preset("tiny").expect("tiny preset");
    config.hidden_size = 512;
    config.ffn_dim = 2048;
    config.num_hidden_layers = 6;
    config.num_attention_heads = 8;
    config.word_embed_proj_dim = Some(512);
    config.max_position_embeddings = 4096;
    let out = dir.join("slow-opt");
    write_checkpoint(&config, candle_core::DType::F32, &out, 7).expect("write the slow model");
    // The fixtures' tokenizer (same vocabulary size), so every token streams as text.
    let tokenizer = fixture("tiny-opt-prenorm").join("tokenizer.json");
    std::fs::copy(tokenizer, out.join("tokenizer.json")).expect("copy the tokenizer");
    out
}

/// A fixture's `reference.json`: what transformers computed for each prompt.
#[derive(Deserialize)]
pub struct Reference {
    pub cases: Vec<Case>,
    /// Chat conversations (Llama-family fixtures only).
    #[serde(default)]
    pub chat_cases: Vec<ChatCase>,
    /// The ids generation stops on (Llama-family fixtures only).
    #[serde(default)]
    pub eos_token_ids: Vec<u32>,
}

/// One conversation of a reference: the rendered prompt's ids and the greedy reply.
#[derive(Deserialize)]
pub struct ChatCase {
    pub messages: Vec<serde_json::Value>,
    /// The chat template rendered with `add_generation_prompt` and tokenized.
    pub input_ids: Vec<u32>,
    /// 24 greedy tokens, EOS ignored.
    pub greedy_new_tokens: Vec<u32>,
    /// The greedy tokens up to the first EOS, and their text.
    pub reply_tokens: Vec<u32>,
    pub reply: String,
    /// The smallest gap between the best and second-best logit over the greedy steps.
    #[serde(default)]
    pub min_top2_margin: Option<f32>,
}

/// One prompt of a reference: its ids, full logits, and 24 greedy tokens (EOS ignored).
#[derive(Deserialize)]
pub struct Case {
    pub prompt: String,
    pub input_ids: Vec<u32>,
    pub logits: Vec<Vec<f32>>,
    pub greedy_new_tokens: Vec<u32>,
    pub greedy_text: String,
    /// The smallest gap between the best and second-best logit over the greedy steps.
    #[serde(default)]
    pub min_top2_margin: Option<f32>,
}

/// The reference of a bundled fixture.
pub fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}
