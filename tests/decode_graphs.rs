//! Decode passes through the buckets CUDA graphs are captured over (padded batch, padded and
//! masked keys, fixed buffers), run eagerly on the CPU: every sequence of a batch decodes
//! transformers' greedy stream, with the logits of the unbucketed pass, including a sliding
//! window (tiny-mistral) and a batch that is not a power of two (padding rows).

mod common;

use candle_core::{DType, Device};
use worker_controller::models::layers::decode_graph::GraphMode;

use common::decoding::{decode_together, llama_model, opt_model};
use common::{fixture, reference};
use worker_controller::models::CausalLm;

/// The bucketed model against the plain one on three prompts of `name` decoded together.
fn check<M: CausalLm>(name: &str, plain: &M, bucketed: &M, counts: impl Fn(&M) -> (usize, usize)) {
    let reference = reference(name);
    // Three sequences (a batch padded to four), of different lengths (keys padded and masked).
    let cases: Vec<_> = reference.cases.iter().cycle().take(3).collect();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| c.input_ids.clone()).collect();
    let steps = cases
        .iter()
        .map(|c| c.greedy_new_tokens.len())
        .min()
        .unwrap();
    assert!(steps >= 4, "{name}: the reference streams are long enough");
    let (plain_streams, plain_passes) = decode_together(plain, &prompts, steps);
    let (streams, passes) = decode_together(bucketed, &prompts, steps);
    assert_eq!(counts(plain), (0, 0), "{name}: off makes no bucket");
    let (buckets, captured) = counts(bucketed);
    assert!(
        buckets >= 1 && captured == 0,
        "{name}: {buckets} buckets, {captured} graphs"
    );
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(
            streams[i][..],
            case.greedy_new_tokens[..steps],
            "{name} sequence {i}: transformers' greedy stream"
        );
        assert_eq!(streams[i], plain_streams[i], "{name} sequence {i}");
    }
    let diff = passes
        .iter()
        .flatten()
        .flatten()
        .zip(plain_passes.iter().flatten().flatten())
        .map(|(a, b)| (a - b).abs())
        // A NaN is the largest difference (f32::max would skip it).
        .fold(0.0f32, |worst, d| {
            if d.is_nan() {
                f32::INFINITY
            } else {
                worst.max(d)
            }
        });
    assert!(diff < 1e-4, "{name}: bucketed logits differ by {diff}");
}

#[test]
fn bucketed_decode_passes_give_each_sequence_its_own_greedy_stream_and_logits() {
    let cpu = &Device::Cpu;
    for name in ["tiny-llama", "tiny-mistral", "tiny-qwen3"] {
        let dir = fixture(name);
        let plain = llama_model(&dir, cpu, DType::F32, GraphMode::Off);
        let bucketed = llama_model(&dir, cpu, DType::F32, GraphMode::Eager);
        check(name, &plain, &bucketed, |m| m.decode_graph_counts());
    }
    for name in ["tiny-opt-prenorm", "tiny-opt-postnorm-proj"] {
        let dir = fixture(name);
        let plain = opt_model(&dir, cpu, DType::F32, GraphMode::Off);
        let bucketed = opt_model(&dir, cpu, DType::F32, GraphMode::Eager);
        check(name, &plain, &bucketed, |m| m.decode_graph_counts());
    }
}
