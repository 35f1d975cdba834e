//! Which of a Llama-family layer's weights are read as one: q/k/v projections (weights, and
//! biases where the config has them) and gate/up projections, each a [`FusedGroup`] of
//! [`DeviceWeights::fuse`](crate::load::DeviceWeights::fuse), named as vLLM names them.

use super::config::LlamaConfig;
use crate::load::weights::FusedGroup;

/// The fused q/k/v projection of layer `layer` (`.weight` / `.bias` appended).
pub fn qkv_name(layer: usize) -> String {
    format!("layers.{layer}.self_attn.qkv_proj")
}

/// The fused gate/up projection of layer `layer` (`.weight` / `.bias` appended).
pub fn gate_up_name(layer: usize) -> String {
    format!("layers.{layer}.mlp.gate_up_proj")
}

/// Every group of `config`'s layers.
pub fn fused_groups(config: &LlamaConfig) -> Vec<FusedGroup> {
    let group = |name: String, prefix: String, members: &[&str], suffix: &str| FusedGroup {
        name: format!("{name}.{suffix}"),
        members: members
            .iter()
            .map(|m| format!("{prefix}.{m}.{suffix}"))
            .collect(),
    };
    let mut groups = Vec::new();
    for layer in 0..config.num_hidden_layers {
        let (attn, mlp) = (
            format!("layers.{layer}.self_attn"),
            format!("layers.{layer}.mlp"),
        );
        let qkv = ["q_proj", "k_proj", "v_proj"];
        groups.push(group(qkv_name(layer), attn.clone(), &qkv, "weight"));
        if config.qkv_bias {
            groups.push(group(qkv_name(layer), attn, &qkv, "bias"));
        }
        let gate_up = ["gate_proj", "up_proj"];
        groups.push(group(gate_up_name(layer), mlp.clone(), &gate_up, "weight"));
        if config.mlp_bias {
            groups.push(group(gate_up_name(layer), mlp, &gate_up, "bias"));
        }
    }
    groups
}
