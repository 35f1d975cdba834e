//! The model layer's matmuls against weights, `x Wᵀ (+ b)` for a few rows `x` `[rows, in]` and
//! a weight `W` `[out, in]`. On the CPU they are computed as `(W xᵀ)ᵀ`: candle's CPU matmul
//! then packs the few rows of `x` rather than the whole weight on every call, which halves the
//! cost of a batched step's layers and leaves a single row's as it was. On CUDA a few rows may
//! take our GEMV kernel (`gemv.rs`); other devices (and other ranks) take candle's own path.

use candle_core::{Module, Tensor};
use candle_nn::Linear;

/// `x Wᵀ` for `x` `[rows, in]`, `weight` `[out, in]`.
pub fn times_transposed(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    if super::gemv::applies(x, weight) {
        return super::gemv::times_transposed(x, weight);
    }
    if x.device().is_cpu() && x.rank() == 2 && x.dim(0)? > 1 {
        weight.matmul(&x.t()?)?.t()?.contiguous()
    } else {
        x.matmul(&weight.t()?)
    }
}

/// What `layer.forward(x)` computes, through [`times_transposed`].
pub fn linear(layer: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    if x.rank() != 2 {
        return layer.forward(x);
    }
    let y = times_transposed(x, layer.weight())?;
    match layer.bias() {
        Some(bias) => y.broadcast_add(bias),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn computes_what_candles_linear_does() {
        let w = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let b = Tensor::new(&[1f32, -1.0, 0.5], &Device::Cpu).unwrap();
        let layer = Linear::new(w, Some(b));
        for rows in [1usize, 3] {
            let x = Tensor::arange(0f32, (rows * 4) as f32, &Device::Cpu)
                .unwrap()
                .reshape((rows, 4))
                .unwrap();
            let want: Vec<Vec<f32>> = layer.forward(&x).unwrap().to_vec2().unwrap();
            let got: Vec<Vec<f32>> = linear(&layer, &x).unwrap().to_vec2().unwrap();
            assert_eq!(got, want);
        }
    }
}
