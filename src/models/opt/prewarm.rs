//! Runs a tiny random OPT on a device, so that every kernel module and BLAS path an OPT forward
//! uses is loaded before any model is known.

use candle_core::{DType, Device, Tensor};

use super::model::{KvCache, OptModel};
use super::presets::{preset, random_weights};
use crate::load::{DeviceWeights, LoadError};

/// Builds a tiny random OPT in `dtype` on `device` and runs a prefill and a decode step.
pub fn prewarm(device: &Device, dtype: DType) -> Result<(), LoadError> {
    let mut config = preset("tiny").expect("tiny preset exists");
    config.hidden_size = 64;
    config.ffn_dim = 128;
    config.vocab_size = 64;
    config.word_embed_proj_dim = Some(64);
    let host = random_weights(&config, &Device::Cpu, DType::F32, 0)?;
    let on_device = host
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_device(device)?.to_dtype(dtype)?)))
        .collect::<Result<_, candle_core::Error>>()?;
    let model = OptModel::new(config, &DeviceWeights::from_tensors(on_device))?;
    let mut cache = KvCache::default();
    let prompt = Tensor::new(&[[2u32, 5, 7, 9]], device)?;
    model.forward(&prompt, &mut cache, false)?;
    let next = Tensor::new(&[[11u32]], device)?;
    model.forward(&next, &mut cache, false)?.to_vec2::<f32>()?;
    Ok(())
}
