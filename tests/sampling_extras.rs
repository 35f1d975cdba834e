//! vLLM's sampling extras through an engine, against hand computations on the model's own
//! logits: the repetition penalty (prompt and output tokens; positive logits divided, negative
//! ones multiplied), `min_tokens` holding the end-of-sequence token back, and `stop_token_ids`.

mod common;

use wc_actors::{FinishReason, GenerateRequest, ModelSpec, Prompt, Timeline};
use worker_controller::models::opt::OptEngine;
use worker_controller::CandleDevice;

use common::reference;

const FIXTURE: &str = "tiny-opt-prenorm";

/// A random-weight OPT (no trained margins, so a penalty shows in its greedy output).
fn load_random() -> OptEngine {
    use worker_controller::models::opt::presets::{preset, write_checkpoint};
    let dir = common::scratch("sampling-extras-random").join("opt");
    let config = preset("tiny").unwrap();
    write_checkpoint(&config, candle_core::DType::F32, &dir, 3).unwrap();
    let (mut device, _) = CandleDevice::open(&wc_actors::DeviceSpec::Cpu, None).unwrap();
    let spec = ModelSpec {
        model: dir.display().to_string(),
        dtype: None,
        canonical: false,
        park: None,
    };
    device
        .load_as::<OptEngine>(&spec, &mut Timeline::default())
        .unwrap()
        .0
}

fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// The logits of the next token after `ids`, from one full pass without a cache.
fn next_logits(engine: &OptEngine, ids: &[u32]) -> Vec<f32> {
    let rows: Vec<Vec<f32>> = engine.logits(ids).unwrap().to_vec2().unwrap();
    rows.last().unwrap().clone()
}

fn request(ids: &[u32], tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Ids(ids.to_vec()),
        max_new_tokens: tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

#[test]
fn the_repetition_penalty_follows_vllm_on_prompt_and_output_tokens() {
    let mut engine = load_random();
    let mut changed = 0;
    for case in reference(FIXTURE).cases {
        let (penalty, tokens) = (1.8f32, 16);
        let mut asked = request(&case.input_ids, tokens);
        asked.repetition_penalty = penalty as f64;
        let output = engine.run(&asked, &mut |_| true).unwrap();
        let mut ids = case.input_ids.clone();
        let mut generated = Vec::new();
        for _ in 0..tokens {
            let mut logits = next_logits(&engine, &ids);
            for (i, logit) in logits.iter_mut().enumerate() {
                if ids.contains(&(i as u32)) {
                    *logit = if *logit > 0.0 {
                        *logit / penalty
                    } else {
                        *logit * penalty
                    };
                }
            }
            let token = argmax(&logits);
            generated.push(token);
            ids.push(token);
        }
        assert_eq!(output.new_tokens, generated, "{:?}", case.prompt);
        let plain = engine
            .run(&request(&case.input_ids, tokens), &mut |_| true)
            .unwrap();
        changed += usize::from(generated != plain.new_tokens);
    }
    assert!(
        changed > 0,
        "the penalty changes some output, so ignoring it would fail above"
    );
}

#[test]
fn min_tokens_holds_back_the_end_and_stop_token_ids_end_generation() {
    let mut engine = load_random();
    let case = &reference(FIXTURE).cases[0];
    let eos = engine.eos_ids()[0];
    // The end-of-sequence token forced: nothing, or min_tokens tokens and then the end.
    let mut asked = request(&case.input_ids, 8);
    asked.ignore_eos = false;
    asked.logit_bias = vec![(eos, 100.0)];
    let ended = engine.run(&asked, &mut |_| true).unwrap();
    assert_eq!(ended.new_tokens, Vec::<u32>::new());
    asked.min_tokens = 3;
    let held = engine.run(&asked, &mut |_| true).unwrap();
    assert_eq!(held.new_tokens.len(), 3);
    assert!(!held.new_tokens.contains(&eos));
    assert_eq!(held.finish_reason, FinishReason::Stop);
    // The greedy run's third token as a stop token: it ends there, left out, or kept.
    let plain = engine
        .run(&request(&case.input_ids, 8), &mut |_| true)
        .unwrap();
    let stop = plain.new_tokens[2];
    let first = plain.new_tokens.iter().position(|t| *t == stop).unwrap();
    let mut asked = request(&case.input_ids, 8);
    asked.stop_token_ids = vec![stop];
    let stopped = engine.run(&asked, &mut |_| true).unwrap();
    assert_eq!(stopped.new_tokens, plain.new_tokens[..first]);
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    asked.include_stop_str_in_output = true;
    let kept = engine.run(&asked, &mut |_| true).unwrap();
    assert_eq!(kept.new_tokens, plain.new_tokens[..=first]);
    // min_tokens past the stop token's place: it cannot be sampled before.
    asked.include_stop_str_in_output = false;
    asked.min_tokens = first + 1;
    let later = engine.run(&asked, &mut |_| true).unwrap();
    assert!(later.new_tokens.len() > first, "{later:?}");
    assert!(!later.new_tokens.contains(&stop));
}
