//! Tests of reading Llama-family configs: every family, RoPE scaling, windows, and refusals.

use super::*;
use serde_json::json;

fn base() -> Value {
    json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 100, "eos_token_id": [1, 3], "bos_token_id": 0
    })
}

fn parse(v: &Value) -> Result<LlamaConfig, LoadError> {
    LlamaConfig::from_json(&v.to_string())
}

fn reason(e: LoadError) -> String {
    match e {
        LoadError::InvalidConfig { reason, .. } => reason,
        other => panic!("expected InvalidConfig, got {other}"),
    }
}

#[test]
fn defaults_and_derived_head_dim() {
    let c = parse(&base()).unwrap();
    assert_eq!(c.head_dim, 16);
    assert_eq!(c.eos_token_ids, vec![1, 3]);
    assert_eq!(c.bos_token_id, Some(0));
    assert_eq!(c.rope_theta, 10000.0);
    assert_eq!(c.rope_scaling, RopeScaling::Default);
    assert_eq!(c.layer_windows, vec![None, None]);
}

#[test]
fn hub_style_llama3_rope_scaling_is_read() {
    let mut v = base();
    v["rope_theta"] = json!(500000.0);
    v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let c = parse(&v).unwrap();
    assert_eq!(c.rope_theta, 500000.0);
    assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    // The highest frequencies are kept, the lowest divided by the factor.
    let (plain, scaled) = (
        LlamaConfig {
            rope_scaling: RopeScaling::Default,
            ..c.clone()
        }
        .inv_freq(),
        c.inv_freq(),
    );
    assert_eq!(plain[0], scaled[0]);
    let last = plain.len() - 1;
    assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-12);
}

#[test]
fn transformers5_rope_parameters_are_read() {
    let mut v = base();
    v["rope_parameters"] = json!({"rope_theta": 1e6, "rope_type": "default"});
    assert_eq!(parse(&v).unwrap().rope_theta, 1e6);
}

#[test]
fn unsupported_rope_type_names_the_supported_ones() {
    let mut v = base();
    v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
    let r = reason(parse(&v).unwrap_err());
    assert!(
        r.contains("yarn") && r.contains("llama3") && r.contains("default"),
        "{r}"
    );
}

#[test]
fn heads_must_divide() {
    let mut v = base();
    v["num_key_value_heads"] = json!(3);
    assert!(reason(parse(&v).unwrap_err()).contains("multiple"));
    let mut v = base();
    v["num_attention_heads"] = json!(5);
    v["num_key_value_heads"] = json!(5);
    assert!(reason(parse(&v).unwrap_err()).contains("divisible"));
}

#[test]
fn dimensions_are_bounded_before_anything_is_allocated() {
    for (field, value) in [
        ("hidden_size", json!(1u64 << 40)),
        ("num_hidden_layers", json!(100_000)),
        ("vocab_size", json!(0)),
        ("intermediate_size", json!(1u64 << 30)),
    ] {
        let mut v = base();
        v[field] = value;
        assert!(reason(parse(&v).unwrap_err()).contains(field), "{field}");
    }
}

#[test]
fn qwen2_window_only_with_use_sliding_window_and_past_max_window_layers() {
    let mut v = base();
    v["model_type"] = json!("qwen2");
    v["sliding_window"] = json!(8);
    v["use_sliding_window"] = json!(false);
    assert_eq!(parse(&v).unwrap().layer_windows, vec![None, None]);
    v["use_sliding_window"] = json!(true);
    v["max_window_layers"] = json!(1);
    assert_eq!(parse(&v).unwrap().layer_windows, vec![None, Some(8)]);
    let mut v = base();
    v["model_type"] = json!("mistral");
    v["sliding_window"] = json!(20);
    assert_eq!(parse(&v).unwrap().layer_windows, vec![Some(20), Some(20)]);
}

#[test]
fn family_switches() {
    let mut v = base();
    v["model_type"] = json!("qwen2");
    let c = parse(&v).unwrap();
    assert!(c.qkv_bias && !c.o_bias && !c.qk_norm);
    v["model_type"] = json!("qwen3");
    v["head_dim"] = json!(48);
    let c = parse(&v).unwrap();
    assert!(c.qk_norm && !c.qkv_bias && c.head_dim == 48);
    assert!(c
        .expected_tensors()
        .iter()
        .any(|(n, s)| n == "layers.1.self_attn.q_norm.weight" && s == &vec![48]));
}
