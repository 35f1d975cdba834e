//! The sampling parameters that run through an engine's batch, against hand computations on
//! the model's own logits: logprobs (log-softmax of the raw logits), presence and frequency
//! penalties, logit bias; and sequences of one batch not touching each other's parameters.

mod common;

use wc_actors::{
    Admission, BatchEngine, GenerateOutput, GenerateRequest, ModelSpec, Prompt, SeqEvent, Timeline,
};
use worker_controller::models::opt::OptEngine;
use worker_controller::CandleDevice;

use common::{fixture, reference};

const FIXTURE: &str = "tiny-opt-prenorm";

fn load() -> OptEngine {
    let (mut device, _) = CandleDevice::open(&wc_actors::DeviceSpec::Cpu, None).unwrap();
    let spec = ModelSpec {
        model: fixture(FIXTURE).display().to_string(),
        dtype: None,
        canonical: false,
        park: None,
    };
    device
        .load_as::<worker_controller::models::OptEngine>(&spec, &mut Timeline::default())
        .unwrap()
        .0
}

/// A random-weight OPT (no trained margins, so a penalty shows in its greedy output).
fn load_random() -> OptEngine {
    use worker_controller::models::opt::presets::{preset, write_checkpoint};
    let dir = common::scratch("batch-parameters-random").join("opt");
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
        .load_as::<worker_controller::models::OptEngine>(&spec, &mut Timeline::default())
        .unwrap()
        .0
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let norm = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&l| l as f64 - norm).collect()
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
fn logprobs_are_the_log_softmax_of_the_reference_logits_with_the_top_alternatives() {
    let mut engine = load();
    for case in reference(FIXTURE).cases {
        let mut asked = request(&case.input_ids, 8);
        asked.logprobs = Some(5);
        let output = engine.run(&asked, &mut |_| true).unwrap();
        assert_eq!(output.logprobs.len(), 8);
        // The first token against transformers' own logits of the prompt.
        let expected = log_softmax(case.logits.last().unwrap());
        let first = &output.logprobs[0];
        let chosen = output.new_tokens[0] as usize;
        assert!((first.logprob as f64 - expected[chosen]).abs() < 1e-4);
        let mut order: Vec<usize> = (0..expected.len()).collect();
        order.sort_by(|a, b| expected[*b].total_cmp(&expected[*a]));
        let top: Vec<usize> = first.top.iter().map(|t| t.0 as usize).collect();
        assert_eq!(top, order[..5], "the five most likely, most likely first");
        for (id, _, logprob) in &first.top {
            assert!((*logprob as f64 - expected[*id as usize]).abs() < 1e-4);
        }
        // Every later token against a full pass over what came before it.
        let mut ids = case.input_ids.clone();
        let mut sum = 0.0;
        for (token, logprobs) in output.new_tokens.iter().zip(&output.logprobs) {
            let expected = log_softmax(&next_logits(&engine, &ids));
            assert!((logprobs.logprob as f64 - expected[*token as usize]).abs() < 1e-4);
            sum += logprobs.logprob as f64;
            ids.push(*token);
        }
        assert!((output.cumulative_logprob - sum).abs() < 1e-3);
    }
}

#[test]
fn presence_and_frequency_penalties_follow_openai_on_the_logits() {
    let mut engine = load_random();
    let mut changed = 0;
    for case in reference(FIXTURE).cases {
        let (presence, frequency, tokens) = (0.5f32, 0.25f32, 24);
        let mut asked = request(&case.input_ids, tokens);
        asked.presence_penalty = presence;
        asked.frequency_penalty = frequency;
        let output = engine.run(&asked, &mut |_| true).unwrap();
        // By hand: each generated token's logit drops by presence + frequency * its count.
        let mut ids = case.input_ids.clone();
        let mut generated: Vec<u32> = Vec::new();
        for _ in 0..tokens {
            let mut logits = next_logits(&engine, &ids);
            for (i, logit) in logits.iter_mut().enumerate() {
                let count = generated.iter().filter(|&&t| t as usize == i).count() as f32;
                if count > 0.0 {
                    *logit -= presence + frequency * count;
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
        "the penalties change some output, so ignoring them would fail above"
    );
}

#[test]
fn logit_bias_forces_and_bans_tokens() {
    let mut engine = load();
    let case = &reference(FIXTURE).cases[0];
    let greedy = &case.greedy_new_tokens;
    let forced = (0..512u32).find(|t| !greedy.contains(t) && *t > 3).unwrap();
    let mut asked = request(&case.input_ids, 6);
    asked.logit_bias = vec![(forced, 100.0)];
    let output = engine.run(&asked, &mut |_| true).unwrap();
    assert_eq!(output.new_tokens, vec![forced; 6]);
    // Banning the first greedy token changes the first token and keeps it away.
    let mut asked = request(&case.input_ids, 6);
    asked.logit_bias = vec![(greedy[0], -100.0)];
    let output = engine.run(&asked, &mut |_| true).unwrap();
    assert!(!output.new_tokens.contains(&greedy[0]));
}

/// Runs `requests` in one batch through the step interface until every one has finished.
fn run_batch(engine: &mut OptEngine, requests: &[GenerateRequest]) -> Vec<GenerateOutput> {
    for (id, request) in requests.iter().enumerate() {
        let admitted = BatchEngine::admit(engine, id as u64, request).unwrap();
        assert_eq!(admitted, Admission::Admitted);
    }
    let mut outputs: Vec<Option<GenerateOutput>> = vec![None; requests.len()];
    while outputs.iter().any(Option::is_none) {
        for event in BatchEngine::step(engine).unwrap() {
            if let SeqEvent::Finished(id, output) = event {
                outputs[id as usize] = Some(output.unwrap());
            }
        }
    }
    outputs.into_iter().flatten().collect()
}

#[test]
fn sequences_of_one_batch_keep_their_own_parameters() {
    let mut engine = load();
    let cases = reference(FIXTURE).cases;
    let forced = 77u32;
    let mut biased = request(&cases[1].input_ids, 5);
    biased.logit_bias = vec![(forced, 100.0)];
    let mut seeded = request(&cases[2].input_ids, 12);
    seeded.temperature = 1.0;
    seeded.seed = Some(42);
    let alone_seeded = engine.run(&seeded, &mut |_| true).unwrap();
    let outputs = run_batch(
        &mut engine,
        &[
            request(&cases[0].input_ids, cases[0].greedy_new_tokens.len()),
            biased,
            seeded,
        ],
    );
    assert_eq!(outputs[0].new_tokens, cases[0].greedy_new_tokens);
    assert_eq!(outputs[1].new_tokens, vec![forced; 5]);
    assert_eq!(
        outputs[2].new_tokens, alone_seeded.new_tokens,
        "a seeded sample is the same alone and in a batch"
    );
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_beside_running_decodes() {
    let mut engine = load();
    let case = &reference(FIXTURE).cases[0];
    // 100 prompt tokens: more than one step's prefill chunk only with several such prompts.
    let long: Vec<u32> = (0..100).map(|i| 4 + (i * 11) % 500).collect();
    let alone = engine.run(&request(&long, 20), &mut |_| true).unwrap();
    let mut requests = vec![request(&case.input_ids, case.greedy_new_tokens.len())];
    requests.extend((0..6).map(|_| request(&long, 20)));
    let outputs = run_batch(&mut engine, &requests);
    assert_eq!(outputs[0].new_tokens, case.greedy_new_tokens);
    for output in &outputs[1..] {
        assert_eq!(output.new_tokens, alone.new_tokens);
    }
}
