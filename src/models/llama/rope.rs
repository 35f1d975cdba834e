//! Rotary position embeddings of the Llama family's `config.json`: `rope_theta` and the scaling
//! (`default`, `llama3`), read from transformers 5's `rope_parameters` or the Hub's top-level
//! fields.

use serde_json::Value;

use crate::load::LoadError;

fn invalid(reason: impl Into<String>) -> LoadError {
    LoadError::InvalidConfig {
        path: "config.json".into(),
        reason: reason.into(),
    }
}

/// The `rope_type`s supported.
pub const ROPE_TYPES: [&str; 2] = ["default", "llama3"];

/// How rotary position embeddings turn positions into angles.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `inv_freq[i] = theta^(-2i/d)`.
    Default,
    /// Llama 3.1 / 3.2: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// `rope_theta` and the scaling, from transformers 5's `rope_parameters` or the Hub's top-level
/// `rope_theta` + `rope_scaling`.
pub fn rope(
    rope_parameters: &Option<Value>,
    rope_scaling: &Option<Value>,
    rope_theta: Option<f64>,
) -> Result<(f64, RopeScaling), LoadError> {
    let params = match (rope_parameters, rope_scaling) {
        (Some(p), _) if !p.is_null() => Some(p),
        (_, Some(s)) if !s.is_null() => Some(s),
        _ => None,
    };
    let field = |name: &str| params.and_then(|p| p.get(name)).filter(|v| !v.is_null());
    if let Some(p) = params {
        if !p.is_object() {
            return Err(invalid(format!(
                "rope_parameters / rope_scaling must be an object, got {p}"
            )));
        }
    }
    let theta = match field("rope_theta") {
        Some(v) => v
            .as_f64()
            .ok_or_else(|| invalid(format!("rope_theta must be a number, got {v}")))?,
        None => rope_theta.unwrap_or(10000.0),
    };
    if !(theta.is_finite() && theta > 0.0) {
        return Err(invalid(format!("rope_theta must be positive, got {theta}")));
    }
    let rope_type = match field("rope_type").or_else(|| field("type")) {
        None => "default".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(invalid(format!("rope_type must be a string, got {v}"))),
    };
    let number = |name: &str| -> Result<f64, LoadError> {
        let v = field(name).ok_or_else(|| {
            invalid(format!(
                "rope_type `{rope_type}` needs `{name}` in rope_scaling"
            ))
        })?;
        v.as_f64()
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| invalid(format!("rope_scaling `{name}` must be positive, got {v}")))
    };
    let scaling = match rope_type.as_str() {
        "default" => RopeScaling::Default,
        "llama3" => {
            let (low, high) = (number("low_freq_factor")?, number("high_freq_factor")?);
            if high <= low {
                return Err(invalid(format!(
                    "rope_scaling high_freq_factor {high} must exceed low_freq_factor {low}"
                )));
            }
            RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: number("original_max_position_embeddings")?
                    as usize,
            }
        }
        other => {
            return Err(invalid(format!(
                "rope_type `{other}` is not supported; supported: {}",
                ROPE_TYPES.map(|t| format!("`{t}`")).join(", ")
            )))
        }
    };
    Ok((theta, scaling))
}
