//! Decoding several sequences together through a Llama-family model (one pass a step), for the
//! tests of decode passes on the CPU and on the GPU.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use worker_controller::load::weights::DeviceWeights;
use worker_controller::load::WeightFile;
use worker_controller::models::layers::decode_graph::GraphMode;
use worker_controller::models::llama::LlamaModel;
use worker_controller::models::opt::OptModel;
use worker_controller::models::text::sampler::argmax;
use worker_controller::models::{CausalLm, FamilyConfig, LlamaConfig, OptConfig};

/// A fixture's config of type `C` and its weights on `device` in `dtype`.
fn fixture_parts<C: worker_controller::models::family::Config + Clone>(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> (C, DeviceWeights) {
    let config = FamilyConfig::from_file(&dir.join("config.json")).unwrap();
    let config = config.get::<C>().cloned().expect("a config of this family");
    let file = WeightFile::read(&dir.join("model.safetensors")).unwrap();
    (
        config,
        DeviceWeights::upload(&[Arc::new(file)], device, dtype).unwrap(),
    )
}

/// A Llama-family fixture's model on `device` in `dtype`, its decode passes run as `mode` says,
/// its weights fused as an attach fuses them (on CUDA with `WC_FUSED=1`).
pub fn llama_model(dir: &Path, device: &Device, dtype: DType, mode: GraphMode) -> LlamaModel {
    let fused = worker_controller::models::layers::fused::fused_on(device);
    llama_model_fused(dir, device, dtype, mode, fused)
}

/// [`llama_model`], its q/k/v and gate/up weights fused (`DeviceWeights::fuse`) or not.
pub fn llama_model_fused(
    dir: &Path,
    device: &Device,
    dtype: DType,
    mode: GraphMode,
    fused: bool,
) -> LlamaModel {
    let (config, mut weights) = fixture_parts::<LlamaConfig>(dir, device, dtype);
    if fused {
        use worker_controller::models::family::Config;
        weights.fuse(&config.fused_groups()).unwrap();
    }
    LlamaModel::new(config, &weights)
        .unwrap()
        .with_decode_graphs(mode)
}

/// An OPT fixture's model on `device` in `dtype`, its decode passes run as `mode` says.
pub fn opt_model(dir: &Path, device: &Device, dtype: DType, mode: GraphMode) -> OptModel {
    let (config, weights) = fixture_parts::<OptConfig>(dir, device, dtype);
    OptModel::new(config, &weights)
        .unwrap()
        .with_decode_graphs(mode)
}

/// Greedy streams of `prompts` decoded together (each prefilled alone, then one pass per step
/// for all), and every decode pass's logits.
pub fn decode_together<M: CausalLm>(
    model: &M,
    prompts: &[Vec<u32>],
    steps: usize,
) -> (Vec<Vec<u32>>, Vec<Vec<Vec<f32>>>) {
    let mut caches: Vec<M::Cache> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut streams: Vec<Vec<u32>> = Vec::new();
    for (prompt, cache) in prompts.iter().zip(&mut caches) {
        let logits = model.forward_tokens(prompt, cache, false).unwrap();
        let logits: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        streams.push(vec![argmax(&logits)]);
    }
    let mut passes = Vec::new();
    for _ in 1..steps {
        let last: Vec<[u32; 1]> = streams.iter().map(|s| [*s.last().unwrap()]).collect();
        let mut inputs: Vec<(&[u32], &mut M::Cache)> = last
            .iter()
            .zip(&mut caches)
            .map(|(ids, cache)| (&ids[..], cache))
            .collect();
        let logits: Vec<Vec<f32>> = model.forward_batch(&mut inputs).unwrap().to_vec2().unwrap();
        for (stream, row) in streams.iter_mut().zip(&logits) {
            stream.push(argmax(row));
        }
        passes.push(logits);
    }
    (streams, passes)
}

/// The largest absolute difference between two runs of numbers; a NaN on either side counts as
/// infinite (`f32::max` would skip it).
pub fn largest_difference<'a>(
    a: impl IntoIterator<Item = &'a f32>,
    b: impl IntoIterator<Item = &'a f32>,
) -> f32 {
    a.into_iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, |worst, d| {
            if d.is_nan() {
                f32::INFINITY
            } else {
                worst.max(d)
            }
        })
}

/// Three prompts of fixture `name` (its reference cases, cycled) decoded together by `plain`
/// and by `other`, as many steps as the shortest reference stream.
pub struct Compared {
    pub streams: Vec<Vec<u32>>,
    pub plain_streams: Vec<Vec<u32>>,
    /// Transformers' greedy streams, cut to the steps run.
    pub expected: Vec<Vec<u32>>,
    /// Largest difference of any decode pass's logits.
    pub logit_diff: f32,
}

pub fn decode_both<M: CausalLm>(name: &str, plain: &M, other: &M) -> Compared {
    let reference = super::reference(name);
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
    let (streams, passes) = decode_together(other, &prompts, steps);
    let flat = |p: &Vec<Vec<Vec<f32>>>| p.iter().flatten().flatten().copied().collect::<Vec<f32>>();
    Compared {
        streams,
        plain_streams,
        expected: cases
            .iter()
            .map(|c| c.greedy_new_tokens[..steps].to_vec())
            .collect(),
        logit_diff: largest_difference(&flat(&passes), &flat(&plain_passes)),
    }
}
