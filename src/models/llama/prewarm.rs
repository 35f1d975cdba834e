//! Runs a tiny random Llama-family model on a device, so that every kernel a Llama-family forward
//! uses (embedding gather, RMSNorm, per-head q/k norm, RoPE with its sin/cos, biases, the GQA
//! attention matmuls, mask, softmax, SiLU, cache writes) is loaded before any model is known.

use candle_core::{DType, Device};

use super::config::LlamaConfig;
use super::model::LlamaModel;
use super::presets::random_weights;
use crate::load::weights::DeviceWeights;
use crate::load::LoadError;
use crate::models::CausalLm;

/// The prewarm model: qwen3-style q/k norm with biases on, GQA 4:2, a 3-token window on one
/// layer so the windowed path runs too.
pub fn tiny_config() -> LlamaConfig {
    LlamaConfig::from_json(
        r#"{"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "vocab_size": 64, "max_position_embeddings": 64,
            "attention_bias": true, "sliding_window": 3, "use_sliding_window": true,
            "max_window_layers": 1, "rope_theta": 10000.0, "eos_token_id": 1}"#,
    )
    .expect("the prewarm config is valid")
}

/// Builds the tiny model in `dtype` on `device` and runs a prefill of five tokens and one decode
/// step, reading the logits back.
pub fn prewarm(device: &Device, dtype: DType) -> Result<(), LoadError> {
    let config = tiny_config();
    let weights = random_weights(&config, device, dtype, 0)?;
    let mut weights = DeviceWeights::from_tensors(weights);
    // Fused as an attach fuses them, so that the fused kernels load here.
    if crate::models::layers::fused::fused_on(device) {
        weights.fuse(&super::fused::fused_groups(&config))?;
    }
    let model = LlamaModel::new(config, &weights)?;
    let mut cache = model.new_cache();
    model.forward(&[2, 5, 7, 9, 11], &mut cache, false)?;
    model.forward(&[13], &mut cache, false)?.to_vec1::<f32>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn prewarm_runs_on_cpu_in_every_dtype() {
        for dtype in [
            candle_core::DType::F32,
            candle_core::DType::F16,
            candle_core::DType::BF16,
        ] {
            super::prewarm(&candle_core::Device::Cpu, dtype).unwrap();
        }
    }
}
