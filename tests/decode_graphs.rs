//! Decode passes through the buckets CUDA graphs are captured over (padded batch, padded and
//! masked keys, fixed buffers), run eagerly on the CPU: every sequence of a batch decodes
//! transformers' greedy stream, with the logits of the unbucketed pass, including a sliding
//! window (tiny-mistral) and a batch that is not a power of two (padding rows).

mod common;

use candle_core::{DType, Device};
use worker_controller::models::layers::decode_graph::GraphMode;

use common::decoding::{decode_both, llama_model, opt_model};
use common::fixture;
use worker_controller::models::CausalLm;

/// The bucketed model against the plain one on three prompts of `name` decoded together.
fn check<M: CausalLm>(name: &str, plain: &M, bucketed: &M, counts: impl Fn(&M) -> (usize, usize)) {
    let compared = decode_both(name, plain, bucketed);
    assert_eq!(counts(plain), (0, 0), "{name}: off makes no bucket");
    let (buckets, captured) = counts(bucketed);
    assert!(
        buckets >= 1 && captured == 0,
        "{name}: {buckets} buckets, {captured} graphs"
    );
    assert_eq!(
        compared.streams, compared.expected,
        "{name}: transformers' greedy streams"
    );
    assert_eq!(compared.streams, compared.plain_streams, "{name}");
    let diff = compared.logit_diff;
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
