//! The OPT engine against transformers' own logits and greedy outputs for the bundled fixtures.

mod common;

use candle_core::{DType, Device, Tensor};
use wc_actors::{GenerateRequest, ModelSpec, Prompt, Timeline};
use worker_controller::models::opt::{KvCache, OptEngine};
use worker_controller::CandleDevice;

use common::reference;

const FIXTURES: [&str; 2] = ["tiny-opt-prenorm", "tiny-opt-postnorm-proj"];

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn load(name: &str, dtype: Option<wc_actors::DType>) -> OptEngine {
    let (mut device, _) = CandleDevice::open(&wc_actors::DeviceSpec::Cpu, None).unwrap();
    let spec = ModelSpec {
        model: fixture(name),
        dtype,
        canonical: false,
        park: None,
    };
    device
        .load_as::<worker_controller::models::OptEngine>(&spec, &mut Timeline::default())
        .unwrap()
        .0
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

#[test]
fn f32_logits_match_transformers_within_1e4() {
    for name in FIXTURES {
        let engine = load(name, None);
        for case in reference(name).cases {
            let ids = engine.encode(&Prompt::Text(case.prompt.clone())).unwrap();
            assert_eq!(
                ids, case.input_ids,
                "{name}: tokenization of {:?}",
                case.prompt
            );
            let diff = max_abs_diff(&engine.logits(&ids).unwrap(), &case.logits);
            assert!(diff < 1e-4, "{name} {:?}: max abs diff {diff}", case.prompt);
        }
    }
}

#[test]
fn greedy_tokens_and_text_match_transformers_exactly() {
    for name in FIXTURES {
        let mut engine = load(name, None);
        for case in reference(name).cases {
            let request = GenerateRequest {
                prompt: Prompt::Text(case.prompt.clone()),
                max_new_tokens: case.greedy_new_tokens.len(),
                ignore_eos: true,
                ..Default::default()
            };
            let mut streamed = String::new();
            let out = engine
                .run(&request, &mut |t| {
                    streamed.push_str(&t.text);
                    true
                })
                .unwrap();
            assert_eq!(
                out.new_tokens, case.greedy_new_tokens,
                "{name} {:?}",
                case.prompt
            );
            assert_eq!(out.text, case.greedy_text, "{name} {:?}", case.prompt);
            assert_eq!(streamed, case.greedy_text, "{name}: streamed text");
        }
    }
}

#[test]
fn kv_cache_decoding_gives_the_full_pass_logits() {
    for name in FIXTURES {
        let engine = load(name, None);
        let case = &reference(name).cases[0];
        let mut ids = case.input_ids.clone();
        ids.extend(&case.greedy_new_tokens[..6]);
        let full: Vec<Vec<f32>> = engine.logits(&ids).unwrap().to_vec2().unwrap();
        let mut cache = KvCache::default();
        let prefix = 3;
        let device = Device::Cpu;
        let first = Tensor::new(&ids[..prefix], &device)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut rows: Vec<Vec<f32>> = engine
            .model
            .forward(&first, &mut cache, true)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        for &id in &ids[prefix..] {
            let step = Tensor::new(&[[id]], &device).unwrap();
            let logits = engine.model.forward(&step, &mut cache, false).unwrap();
            rows.push(logits.squeeze(0).unwrap().to_vec1().unwrap());
        }
        assert_eq!(
            worker_controller::models::TokenCache::len(&cache),
            ids.len()
        );
        let diff = max_abs_diff(&Tensor::new(rows, &device).unwrap(), &full);
        assert!(diff < 1e-4, "{name}: cached vs full max abs diff {diff}");
    }
}

#[test]
fn half_precision_keeps_the_greedy_stream_on_cpu() {
    for dtype in [wc_actors::DType::F16, wc_actors::DType::BF16] {
        let mut engine = load("tiny-opt-prenorm", Some(dtype));
        let case = &reference("tiny-opt-prenorm").cases[0];
        let request = GenerateRequest {
            prompt: Prompt::Ids(case.input_ids.clone()),
            max_new_tokens: 8,
            ignore_eos: true,
            ..Default::default()
        };
        let out = engine.run(&request, &mut |_| true).unwrap();
        assert_eq!(out.new_tokens, case.greedy_new_tokens[..8], "{dtype}");
    }
}

#[test]
fn seeded_sampling_repeats_and_stop_strings_end_generation() {
    let mut engine = load("tiny-opt-prenorm", None);
    let sample = |engine: &mut OptEngine, seed| {
        let request = GenerateRequest {
            prompt: Prompt::Text("Now is better".into()),
            max_new_tokens: 16,
            temperature: 1.5,
            top_p: 0.95,
            seed: Some(seed),
            ignore_eos: true,
            ..Default::default()
        };
        engine.run(&request, &mut |_| true).unwrap().new_tokens
    };
    assert_eq!(sample(&mut engine, 11), sample(&mut engine, 11));
    let case = &reference("tiny-opt-prenorm").cases[0];
    let stop_word = case
        .greedy_text
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    let request = GenerateRequest {
        prompt: Prompt::Text(case.prompt.clone()),
        max_new_tokens: 24,
        stop: vec![stop_word.clone()],
        ignore_eos: true,
        ..Default::default()
    };
    let out = engine.run(&request, &mut |_| true).unwrap();
    assert_eq!(out.finish_reason, wc_actors::FinishReason::Stop);
    assert!(!out.text.contains(&stop_word), "{:?}", out.text);
    assert!(case.greedy_text.starts_with(&out.text));
}
