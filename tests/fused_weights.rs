//! A Llama-family model over fused weights (a layer's q/k/v and gate/up projections stored as
//! one tensor each, as an attach stores them on CUDA) computes what it computes over the
//! separate ones: transformers' greedy streams and the same logits, with q/k/v biases
//! (tiny-qwen2), per-head q/k norms (tiny-qwen3) and a sliding window (tiny-mistral). On the CPU
//! the fused kernels' stand-ins (candle's ops) run; `tests/cuda_reference.rs` runs the kernels.

mod common;

use candle_core::{DType, Device};
use worker_controller::load::weights::DeviceWeights;
use worker_controller::models::family::Config;
use worker_controller::models::layers::decode_graph::GraphMode;
use worker_controller::models::llama::fused::{gate_up_name, qkv_name};
use worker_controller::models::LlamaConfig;

use common::decoding::{decode_both, llama_model_fused};
use common::fixture;

#[test]
fn fused_projections_decode_transformers_streams_with_the_separate_ones_logits() {
    let cpu = &Device::Cpu;
    for name in ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3"] {
        let dir = fixture(name);
        let plain = llama_model_fused(&dir, cpu, DType::F32, GraphMode::Off, false);
        let fused = llama_model_fused(&dir, cpu, DType::F32, GraphMode::Off, true);
        let compared = decode_both(name, &plain, &fused);
        assert_eq!(
            compared.streams, compared.expected,
            "{name}: transformers' streams"
        );
        assert_eq!(compared.streams, compared.plain_streams, "{name}");
        let diff = compared.logit_diff;
        assert!(diff < 1e-4, "{name}: fused logits differ by {diff}");
    }
}

#[test]
fn fusing_stores_each_group_once_and_its_members_as_views_of_it() {
    let dir = fixture("tiny-qwen2");
    let config = worker_controller::models::FamilyConfig::from_file(&dir.join("config.json"))
        .unwrap()
        .get::<LlamaConfig>()
        .cloned()
        .unwrap();
    let file = worker_controller::load::WeightFile::read(&dir.join("model.safetensors")).unwrap();
    let file = std::sync::Arc::new(file);
    let plain =
        DeviceWeights::upload(std::slice::from_ref(&file), &Device::Cpu, DType::F32).unwrap();
    let mut fused = plain.clone();
    fused.fuse(&config.fused_groups()).unwrap();
    assert_eq!(
        fused.device_bytes, plain.device_bytes,
        "no byte counted twice"
    );
    let (h, d) = (config.hidden_size, config.head_dim);
    let (q, kv) = (
        config.num_attention_heads * d,
        config.num_key_value_heads * d,
    );
    for layer in 0..config.num_hidden_layers {
        let qkv = fused
            .get(&format!("{}.weight", qkv_name(layer)), &[q + 2 * kv, h])
            .unwrap();
        let bias = fused
            .get(&format!("{}.bias", qkv_name(layer)), &[q + 2 * kv])
            .unwrap();
        let rows = |t: &candle_core::Tensor, start: usize, len: usize| -> Vec<f32> {
            t.narrow(0, start, len)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let member = |name: &str, shape: &[usize]| -> Vec<f32> {
            let p = format!("layers.{layer}.self_attn.{name}");
            let t = plain.get(&p, shape).unwrap();
            let f = fused.get(&p, shape).unwrap();
            let (a, b): (Vec<f32>, Vec<f32>) = (
                t.flatten_all().unwrap().to_vec1().unwrap(),
                f.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(a, b, "{p}: the member reads as before");
            a
        };
        assert_eq!(rows(&qkv, 0, q), member("q_proj.weight", &[q, h]));
        assert_eq!(rows(&qkv, q, kv), member("k_proj.weight", &[kv, h]));
        assert_eq!(rows(&qkv, q + kv, kv), member("v_proj.weight", &[kv, h]));
        assert_eq!(rows(&bias, q + kv, kv), member("v_proj.bias", &[kv]));
        let i = config.intermediate_size;
        assert!(fused
            .get(&format!("{}.weight", gate_up_name(layer)), &[2 * i, h])
            .is_ok());
    }
    // Fusing again changes nothing; a group whose members are missing is left alone.
    let mut again = fused.clone();
    again.fuse(&config.fused_groups()).unwrap();
    let mut odd = config.fused_groups();
    odd.push(worker_controller::load::weights::FusedGroup {
        name: "layers.0.nothing".into(),
        members: vec!["layers.0.absent".into()],
    });
    again.fuse(&odd).unwrap();
    assert!(!again.contains("layers.0.nothing"));
}
