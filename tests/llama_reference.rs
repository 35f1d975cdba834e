//! The Llama-family decoder (llama, mistral, qwen2, qwen3) against transformers' own logits,
//! greedy streams and chat replies for the bundled fixtures, and the model layer's typed errors.

mod common;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;
use wc_actors::{FinishReason, GenerateRequest, Prompt};
use worker_controller::load::weights::DeviceWeights;
use worker_controller::load::LoadError;
use worker_controller::load::WeightFile;
use worker_controller::models::llama::{KvCache, LlamaEngine, LlamaModel, SequenceInput};
use worker_controller::models::text::chat_template::{ChatMessage, MessageExt};
use worker_controller::models::{FamilyConfig, LlamaConfig, TokenCache};

use common::{fixture, reference};

const FIXTURES: [&str; 4] = ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3"];

/// Weights of a fixture on the CPU in `dtype`.
fn weights(dir: &Path, dtype: DType) -> DeviceWeights {
    let file = WeightFile::read(&dir.join("model.safetensors")).unwrap();
    DeviceWeights::upload(&[Arc::new(file)], &Device::Cpu, dtype).unwrap()
}

fn load(name: &str) -> LlamaEngine {
    let dir = fixture(name);
    let Some(config) = FamilyConfig::from_file(&dir.join("config.json"))
        .unwrap()
        .get::<LlamaConfig>()
        .cloned()
    else {
        panic!("{name} is not a Llama-family config");
    };
    let weights = weights(&dir, DType::F32);
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let model = LlamaModel::new(config, &weights).unwrap();
    LlamaEngine::new(model, Some(Arc::new(tokenizer)), weights.device_bytes)
        .with_checkpoint_files(&dir)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &[Vec<f32>]) -> f32 {
    let a: Vec<Vec<f32>> = a.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
    assert_eq!(a.len(), b.len(), "sequence length");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "vocab size");
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// The index of the largest logit (the first of equals).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn greedy(prompt: Prompt, max_new_tokens: usize, ignore_eos: bool) -> GenerateRequest {
    GenerateRequest {
        prompt,
        max_new_tokens,
        ignore_eos,
        ..Default::default()
    }
}

#[test]
fn f32_logits_match_transformers_within_1e4() {
    for name in FIXTURES {
        let engine = load(name);
        let mut worst = 0f32;
        for case in reference(name).cases {
            let ids = engine.encode(&Prompt::Text(case.prompt.clone())).unwrap();
            assert_eq!(
                ids, case.input_ids,
                "{name}: tokenization of {:?}",
                case.prompt
            );
            let diff = max_abs_diff(&engine.logits(&ids).unwrap(), &case.logits);
            assert!(diff < 1e-4, "{name} {:?}: max abs diff {diff}", case.prompt);
            worst = worst.max(diff);
        }
        println!("{name}: max abs logit diff {worst:e}");
    }
}

#[test]
fn greedy_streams_match_transformers_exactly() {
    for name in FIXTURES {
        let mut engine = load(name);
        for case in reference(name).cases {
            let request = greedy(Prompt::Text(case.prompt.clone()), 24, true);
            let out = engine.run(&request, &mut |_| true).unwrap();
            assert_eq!(
                out.new_tokens, case.greedy_new_tokens,
                "{name} {:?}",
                case.prompt
            );
            // Special tokens never reach the text.
            let expected = engine.decode(&case.greedy_new_tokens);
            assert_eq!(out.text, expected, "{name} {:?}", case.prompt);
            assert!(!out.text.contains("<|"), "{name}: {:?}", out.text);
        }
    }
}

#[test]
fn mistral_window_is_crossed_and_honoured() {
    let name = "tiny-mistral";
    let engine = load(name);
    assert_eq!(engine.model.config.layer_windows, vec![Some(20), Some(20)]);
    let case = &reference(name).cases[0];
    assert!(
        case.input_ids.len() + case.greedy_new_tokens.len() > 20,
        "the reference stream must run past the 20-token window"
    );
    // The same weights without the window see further back, so they differ past 20 tokens:
    // the stream above matching transformers is the window at work.
    let ids: Vec<u32> = [case.input_ids.clone(), case.greedy_new_tokens.clone()].concat();
    let windowed: Vec<Vec<f32>> = engine.logits(&ids).unwrap().to_vec2().unwrap();
    let mut config = engine.model.config.clone();
    config.layer_windows = vec![None, None];
    let full = LlamaModel::new(config, &weights(&fixture(name), DType::F32)).unwrap();
    let unwindowed: Vec<Vec<f32>> = full
        .forward(&ids, &mut KvCache::new(), true)
        .unwrap()
        .to_vec2()
        .unwrap();
    let diff = |p: usize| {
        windowed[p]
            .iter()
            .zip(&unwindowed[p])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    };
    assert_eq!(diff(19), 0.0, "within the window nothing changes");
    assert!(
        diff(ids.len() - 1) > 1e-3,
        "past the window the mask matters"
    );
}

#[test]
fn kv_cache_decoding_equals_the_full_pass() {
    for name in FIXTURES {
        let engine = load(name);
        let case = &reference(name).cases[0];
        let ids: Vec<u32> = [case.input_ids.clone(), case.greedy_new_tokens.clone()].concat();
        let full: Vec<Vec<f32>> = engine.logits(&ids).unwrap().to_vec2().unwrap();
        // Prefill the prompt, then chunks of 1, 3 and 1... tokens through one growing cache.
        let mut cache = KvCache::new();
        let mut at = case.input_ids.len();
        let mut last = engine.model.forward(&ids[..at], &mut cache, false).unwrap();
        let mut chunk = 1;
        while at < ids.len() {
            let row: Vec<f32> = last.to_vec1().unwrap();
            let diff = row
                .iter()
                .zip(&full[at - 1])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-4, "{name} position {}: {diff}", at - 1);
            let end = (at + chunk).min(ids.len());
            last = engine
                .model
                .forward(&ids[at..end], &mut cache, false)
                .unwrap();
            at = end;
            chunk = if chunk == 1 { 3 } else { 1 };
        }
        assert_eq!(cache.len(), ids.len());
        assert!(cache.capacity() >= ids.len());
    }
}

#[test]
fn sequences_of_different_lengths_share_one_pass() {
    for name in FIXTURES {
        let engine = load(name);
        let cases = reference(name).cases;
        let (a, b) = (&cases[0].input_ids, &cases[1].input_ids);
        // `b` already has a cached prefix, `a` starts empty: different lengths and positions.
        let (mut ca, mut cb) = (KvCache::new(), KvCache::new());
        engine.model.forward(&b[..2], &mut cb, false).unwrap();
        let both: Vec<Vec<f32>> = engine
            .model
            .forward_sequences(
                &mut [
                    SequenceInput {
                        ids: a,
                        cache: &mut ca,
                    },
                    SequenceInput {
                        ids: &b[2..],
                        cache: &mut cb,
                    },
                ],
                false,
            )
            .unwrap()
            .to_vec2()
            .unwrap();
        for (row, case) in both.iter().zip(&cases) {
            let alone = case.logits.last().unwrap();
            let diff = row
                .iter()
                .zip(alone)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-4, "{name} {:?}: {diff}", case.prompt);
        }
        assert_eq!((ca.len(), cb.len()), (a.len(), b.len()));
    }
}

#[test]
fn chat_prompts_and_replies_match_transformers() {
    for name in FIXTURES {
        let mut engine = load(name);
        let reference = reference(name);
        assert!(!reference.chat_cases.is_empty());
        for case in &reference.chat_cases {
            let messages: Vec<ChatMessage> = case
                .messages
                .iter()
                .enumerate()
                .map(|(i, m)| ChatMessage::from_openai(i, m).unwrap())
                .collect();
            let ids = engine.encode_chat(&messages).unwrap();
            assert_eq!(ids, case.input_ids, "{name}: rendered chat {messages:?}");
            let out = engine
                .run(&greedy(Prompt::Ids(ids), 24, false), &mut |_| true)
                .unwrap();
            assert_eq!(out.new_tokens, case.reply_tokens, "{name} {messages:?}");
            assert_eq!(out.text, case.reply, "{name} {messages:?}");
            let stopped = case.reply_tokens.len() < case.greedy_new_tokens.len();
            assert_eq!(
                out.finish_reason,
                if stopped {
                    FinishReason::Stop
                } else {
                    FinishReason::Length
                }
            );
        }
    }
}

#[test]
fn eos_ids_are_the_union_of_config_and_generation_config() {
    for name in FIXTURES {
        let engine = load(name);
        let mut ours = engine.eos_ids().to_vec();
        let mut theirs = reference(name).eos_token_ids;
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{name}");
    }
    // A generation_config.json that adds an id the config lacks.
    let dir = common::scratch("llama-eos-union");
    for file in std::fs::read_dir(fixture("tiny-mistral")).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, dir.join(file.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [1, 3]}"#,
    )
    .unwrap();
    let Some(config) = FamilyConfig::from_file(&dir.join("config.json"))
        .unwrap()
        .get::<LlamaConfig>()
        .cloned()
    else {
        unreachable!()
    };
    let w = weights(&dir, DType::F32);
    let engine = LlamaEngine::new(LlamaModel::new(config, &w).unwrap(), None, 0)
        .with_checkpoint_files(&dir)
        .unwrap();
    assert_eq!(engine.eos_ids(), &[3, 1]);
}

#[test]
fn engine_stops_on_stop_strings_and_any_eos_and_streams_the_same_text() {
    let name = "tiny-llama";
    let mut engine = load(name);
    let case = &reference(name).chat_cases[1];
    let messages: Vec<ChatMessage> = case
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| ChatMessage::from_openai(i, m).unwrap())
        .collect();
    let ids = engine.encode_chat(&messages).unwrap();
    assert_eq!(case.reply, "Now is better than never.");
    // A stop string ends the reply before it; what streamed is exactly the returned text.
    let mut streamed = String::new();
    let request = GenerateRequest {
        stop: vec![" than".into()],
        ..greedy(Prompt::Ids(ids.clone()), 24, false)
    };
    let out = engine
        .run(&request, &mut |t| {
            streamed.push_str(&t.text);
            true
        })
        .unwrap();
    assert_eq!(out.text, "Now is better");
    assert_eq!(streamed, out.text);
    assert_eq!(out.finish_reason, FinishReason::Stop);
    // EOS id 3 (`<|im_end|>`, the second of the model's two) ends generation, and is not returned.
    let eos_at = case.greedy_new_tokens.iter().position(|t| *t == 3).unwrap();
    let out = engine
        .run(&greedy(Prompt::Ids(ids.clone()), 24, false), &mut |_| true)
        .unwrap();
    assert_eq!(out.new_tokens, case.greedy_new_tokens[..eos_at]);
    assert_eq!(out.finish_reason, FinishReason::Stop);
    // Without id 3 among the stopping ids, generation runs on through it.
    let mut only_first = engine.model.config.clone();
    only_first.eos_token_ids = vec![1];
    let model = LlamaModel::new(only_first, &weights(&fixture(name), DType::F32)).unwrap();
    let mut engine = LlamaEngine::new(model, engine.tokenizer().cloned().map(Arc::new), 0);
    assert_eq!(engine.eos_ids(), &[1]);
    let out = engine
        .run(&greedy(Prompt::Ids(ids), 24, false), &mut |_| true)
        .unwrap();
    assert!(out.new_tokens.len() > eos_at && out.new_tokens[eos_at] == 3);
}

#[test]
fn every_family_builds_a_runtime_engine_from_its_config() {
    for name in FIXTURES.iter().chain(&["tiny-opt-prenorm"]) {
        let dir = fixture(name);
        let config = FamilyConfig::from_file(&dir.join("config.json")).unwrap();
        let w = weights(&dir, DType::F32);
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .ok()
            .map(Arc::new);
        let mut engine = config.build_engine(&w, tokenizer, &dir, 32768).unwrap();
        let case = &reference(name).cases[0];
        let out = engine
            .generate(
                &greedy(Prompt::Text(case.prompt.clone()), 24, true),
                &mut |_| true,
            )
            .unwrap();
        assert_eq!(out.new_tokens, case.greedy_new_tokens, "{name}");
        engine.warm_up().unwrap();
        // The weights and the KV slab reserved at attach for the 32768-token budget.
        let kv = config.kv_bytes_per_token(DType::F32.size_in_bytes() as u64) * 32768;
        assert_eq!(engine.device_bytes(), w.device_bytes + kv, "{name}");
    }
}

#[test]
fn models_without_a_template_say_so() {
    let dir = fixture("tiny-opt-prenorm");
    let config = FamilyConfig::from_file(&dir.join("config.json")).unwrap();
    let Some(config) = config
        .get::<worker_controller::models::OptConfig>()
        .cloned()
    else {
        panic!("an OPT config")
    };
    let w = weights(&dir, DType::F32);
    let engine = worker_controller::models::opt::OptEngine::new(
        worker_controller::models::opt::OptModel::new(config, &w).unwrap(),
        Tokenizer::from_file(dir.join("tokenizer.json"))
            .ok()
            .map(Arc::new),
        0,
    )
    .with_checkpoint_files(&dir)
    .unwrap();
    let err = engine
        .encode_chat(&[ChatMessage::new("user", "hi")])
        .unwrap_err();
    assert!(err.to_string().contains("no chat template"), "{err}");
}

fn config_with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<FamilyConfig, LoadError> {
    let text = std::fs::read_to_string(fixture("tiny-llama").join("config.json")).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut value);
    FamilyConfig::from_json(&value.to_string())
}

#[test]
fn bad_configs_are_typed_errors_naming_what_is_supported() {
    let err = config_with(|c| c["model_type"] = "gpt_neox".into()).unwrap_err();
    assert!(matches!(&err, LoadError::UnknownModelType { found: t, .. } if t == "gpt_neox"));
    let message = err.to_string();
    for family in ["llama", "mistral", "qwen2", "qwen3", "opt"] {
        assert!(message.contains(family), "{message}");
    }

    let err = config_with(|c| {
        c["rope_parameters"] =
            serde_json::json!({"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0})
    })
    .unwrap_err();
    assert!(
        matches!(&err, LoadError::InvalidConfig { reason, .. } if reason.contains("yarn") && reason.contains("llama3")),
        "{err}"
    );

    let err = config_with(|c| c["num_key_value_heads"] = 3.into()).unwrap_err();
    assert!(
        matches!(&err, LoadError::InvalidConfig { reason, .. } if reason.contains("num_key_value_heads")),
        "{err}"
    );

    let err = config_with(|c| c["hidden_size"] = (1u64 << 40).into()).unwrap_err();
    assert!(matches!(err, LoadError::InvalidConfig { .. }), "{err}");

    let err = config_with(|c| c["hidden_act"] = "gelu".into()).unwrap_err();
    assert!(err.to_string().contains("silu"), "{err}");

    // Missing a tensor or a wrong shape is a typed error too, not a panic.
    let Some(mut config) = config_with(|_| {}).unwrap().get::<LlamaConfig>().cloned() else {
        unreachable!()
    };
    config.intermediate_size += 1;
    let err = LlamaModel::new(config, &weights(&fixture("tiny-llama"), DType::F32))
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::WrongShape { .. }), "{err}");
}

#[test]
fn reduced_precision_weights_run_and_mostly_agree() {
    // bf16 / f16 on CPU: the first greedy token of well-separated prompts matches f32.
    for name in FIXTURES {
        let dir = fixture(name);
        let Some(config) = FamilyConfig::from_file(&dir.join("config.json"))
            .unwrap()
            .get::<LlamaConfig>()
            .cloned()
        else {
            unreachable!()
        };
        let reference = reference(name);
        for dtype in [DType::F16, DType::BF16] {
            let model = LlamaModel::new(config.clone(), &weights(&dir, dtype)).unwrap();
            for case in &reference.cases {
                let logits: Vec<f32> = model
                    .forward(&case.input_ids, &mut KvCache::new(), false)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let reference_last = case.logits.last().unwrap();
                assert_eq!(logits.len(), reference_last.len(), "vocab size");
                let diff = logits
                    .iter()
                    .zip(reference_last)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(diff < 0.15, "{name} {dtype:?} {:?}: {diff}", case.prompt);
                assert_eq!(
                    argmax(&logits),
                    case.greedy_new_tokens[0],
                    "{name} {dtype:?} {:?}: the first greedy token",
                    case.prompt
                );
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct RopeReference {
    inv_freq: Vec<f32>,
    input_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

#[test]
fn llama3_rope_scaling_matches_transformers() {
    // A Hub-style config (top-level rope_theta + rope_scaling of rope_type "llama3") with 64
    // positions past original_max_position_embeddings 16.
    let dir = fixture("tiny-llama-rope-llama3");
    let reference: RopeReference =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let Some(config) = FamilyConfig::from_file(&dir.join("config.json"))
        .unwrap()
        .get::<LlamaConfig>()
        .cloned()
    else {
        unreachable!()
    };
    assert_eq!(
        config.inv_freq().len(),
        reference.inv_freq.len(),
        "one inverse frequency per rotary pair"
    );
    for (ours, theirs) in config.inv_freq().iter().zip(&reference.inv_freq) {
        assert!(
            (ours - theirs).abs() <= 1e-6 * theirs.abs(),
            "{ours} vs {theirs}"
        );
    }
    let w = weights(&dir, DType::F32);
    let model = LlamaModel::new(config.clone(), &w).unwrap();
    let logits = model
        .forward(&reference.input_ids, &mut KvCache::new(), true)
        .unwrap();
    let diff = max_abs_diff(&logits, &reference.logits);
    println!("tiny-llama-rope-llama3: max abs logit diff {diff:e}");
    assert!(diff < 1e-4, "max abs diff {diff}");
    // Without the scaling the same weights give other logits: the scaling is what matched.
    let mut plain = config;
    plain.rope_scaling = worker_controller::models::llama::config::RopeScaling::Default;
    let unscaled = LlamaModel::new(plain, &w)
        .unwrap()
        .forward(&reference.input_ids, &mut KvCache::new(), true)
        .unwrap();
    assert!(max_abs_diff(&unscaled, &reference.logits) > 1e-2);
}
