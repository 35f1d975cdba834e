//! The dtype maps of the load floor in one place: safetensors' stored dtypes, the runtime's
//! [`DType`] and candle's.

use wc_actors::DType;

use super::LoadError;

/// candle's dtype for the runtime's.
pub fn candle_dtype(dtype: DType) -> candle_core::DType {
    match dtype {
        DType::F32 => candle_core::DType::F32,
        DType::F16 => candle_core::DType::F16,
        DType::BF16 => candle_core::DType::BF16,
    }
}

/// The runtime's dtype for a stored one, when it is a float type the engines run.
pub fn runtime_dtype(stored: safetensors::Dtype) -> Option<DType> {
    match stored {
        safetensors::Dtype::F32 => Some(DType::F32),
        safetensors::Dtype::F16 => Some(DType::F16),
        safetensors::Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// candle's dtype for the stored dtype of tensor `name`; a type the engines do not run is a
/// typed error naming the tensor.
pub fn stored_candle_dtype(
    name: &str,
    stored: safetensors::Dtype,
) -> Result<candle_core::DType, LoadError> {
    runtime_dtype(stored)
        .map(candle_dtype)
        .ok_or_else(|| LoadError::UnsupportedTensorDtype {
            name: name.to_string(),
            dtype: format!("{stored:?}"),
        })
}
