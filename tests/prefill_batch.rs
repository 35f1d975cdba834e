//! Prefill chunks of several sequences in one pass (one batched attention, padded and masked)
//! give each sequence the logits it gets alone: different lengths, a chunk after cached
//! positions, and a sliding window shorter than the prompts (tiny-mistral's 20).

mod common;

use candle_core::{DType, Device};
use worker_controller::models::layers::decode_graph::GraphMode;
use worker_controller::models::CausalLm;

use common::decoding::{largest_difference, llama_model, opt_model};
use common::fixture;

/// Last-position logits of each prompt, all in one pass after `cached` (each prompt's first
/// `cached[i]` tokens run alone first), against each prompt run alone; the largest difference.
fn batched_against_alone<M: CausalLm>(model: &M, prompts: &[Vec<u32>], cached: &[usize]) -> f32 {
    let mut alone = Vec::new();
    for prompt in prompts {
        let mut cache = model.new_cache();
        let logits = model.forward_tokens(prompt, &mut cache, false).unwrap();
        alone.push(logits.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    let mut caches: Vec<M::Cache> = prompts.iter().map(|_| model.new_cache()).collect();
    for ((prompt, cache), &n) in prompts.iter().zip(&mut caches).zip(cached) {
        if n > 0 {
            model.forward_tokens(&prompt[..n], cache, false).unwrap();
        }
    }
    let mut inputs: Vec<(&[u32], &mut M::Cache)> = prompts
        .iter()
        .zip(&mut caches)
        .zip(cached)
        .map(|((prompt, cache), &n)| (&prompt[n..], cache))
        .collect();
    let together: Vec<Vec<f32>> = model.forward_batch(&mut inputs).unwrap().to_vec2().unwrap();
    largest_difference(together.iter().flatten(), alone.iter().flatten())
}

/// Prompts of 7, 30 and 23 tokens (ids below `vocab`).
fn prompts(vocab: usize) -> Vec<Vec<u32>> {
    [7usize, 30, 23]
        .iter()
        .enumerate()
        .map(|(p, &len)| {
            (0..len)
                .map(|i| ((i * 31 + p * 7 + 3) % vocab) as u32)
                .collect()
        })
        .collect()
}

/// Batched prefills of every prompt set against each prompt alone, for `model`.
fn check<M: CausalLm>(name: &str, model: &M) {
    let prompts = prompts(model.vocab_size());
    for cached in [[0, 0, 0], [3, 0, 12]] {
        let diff = batched_against_alone(model, &prompts, &cached);
        assert!(
            diff < 1e-4,
            "{name} after {cached:?}: logits differ by {diff}"
        );
    }
}

#[test]
fn prefill_chunks_batched_in_one_pass_equal_each_sequence_alone() {
    let cpu = &Device::Cpu;
    for name in ["tiny-llama", "tiny-mistral", "tiny-qwen3"] {
        check(
            name,
            &llama_model(&fixture(name), cpu, DType::F32, GraphMode::Off),
        );
    }
    for name in ["tiny-opt-prenorm", "tiny-opt-postnorm-proj"] {
        check(
            name,
            &opt_model(&fixture(name), cpu, DType::F32, GraphMode::Off),
        );
    }
}
