//! What a checkpoint's generation config says: stopping ids (`eos_token_id` in `config.json`
//! and `generation_config.json`, each an int, a list of ints or null) and the sampling defaults
//! of `generation_config.json` that a request leaving them unset takes (as vLLM does).

use std::path::Path;

use serde_json::Value;
use wc_actors::GenerateRequest;

use crate::load::LoadError;

/// Largest side file (`generation_config.json`, `tokenizer_config.json`, a chat template) read.
pub const MAX_SIDE_FILE_BYTES: u64 = 16 << 20;

/// The ids of an `eos_token_id` value: an int, a list of ints, or nothing (null / absent).
pub fn token_ids(value: Option<&Value>, field: &str) -> Result<Vec<u32>, String> {
    let one = |v: &Value| {
        v.as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| format!("`{field}` must be a token id or a list of them, got {v}"))
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

/// Appends the ids of `more` not already in `ids`, keeping the order.
pub fn union(ids: &mut Vec<u32>, more: impl IntoIterator<Item = u32>) {
    for id in more {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
}

/// Reads a small optional side file of a checkpoint: `Ok(None)` when it is absent. It must be a
/// regular file (a FIFO is refused, not waited on) of at most [`MAX_SIDE_FILE_BYTES`], in UTF-8.
pub fn read_side_file(path: &Path) -> Result<Option<String>, LoadError> {
    let bytes = match crate::load::read_bounded(path, MAX_SIDE_FILE_BYTES) {
        Ok(bytes) => bytes,
        Err(LoadError::MissingFile(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| LoadError::InvalidConfig {
            path: path.to_path_buf(),
            reason: format!("not UTF-8: {e}"),
        })
}

/// `eos_token_id` of `generation_config.json` in `dir`; empty when the file is absent.
pub fn generation_eos_ids(dir: &Path) -> Result<Vec<u32>, LoadError> {
    Ok(generation_config(dir)?.0)
}

/// `generation_config.json` in `dir`: its `eos_token_id` and sampling defaults; nothing when
/// the file is absent.
pub fn generation_config(dir: &Path) -> Result<(Vec<u32>, SamplingDefaults), LoadError> {
    let path = dir.join("generation_config.json");
    let Some(text) = read_side_file(&path)? else {
        return Ok((Vec::new(), SamplingDefaults::default()));
    };
    let invalid = |reason: String| LoadError::InvalidConfig {
        path: path.clone(),
        reason,
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let eos = token_ids(value.get("eos_token_id"), "eos_token_id").map_err(invalid)?;
    Ok((eos, SamplingDefaults::of(&value)))
}

/// The sampling parameters a `generation_config.json` sets: `temperature`, `top_p`, `top_k`,
/// `min_p`, `repetition_penalty` (the ones vLLM takes from it). A value out of the range a
/// request may ask for (a negative temperature, a string) is left out, as if not set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
}

impl SamplingDefaults {
    /// The defaults a parsed `generation_config.json` sets.
    pub fn of(config: &Value) -> Self {
        let number = |name: &str, ok: fn(f64) -> bool| {
            config
                .get(name)
                .and_then(Value::as_f64)
                .filter(|v| v.is_finite() && ok(*v))
        };
        Self {
            temperature: number("temperature", |v| (0.0..=2.0).contains(&v)),
            top_p: number("top_p", |v| v > 0.0 && v <= 1.0),
            // transformers' 0 (and vLLM's -1) turns top-k off.
            top_k: config
                .get("top_k")
                .and_then(Value::as_i64)
                .map(|k| match k {
                    k if k <= 0 => 0,
                    k => usize::try_from(k).unwrap_or(usize::MAX),
                }),
            min_p: number("min_p", |v| (0.0..=1.0).contains(&v)),
            repetition_penalty: number("repetition_penalty", |v| v > 0.0 && v <= 100.0),
        }
    }

    /// `request` with each parameter it left unset taken from these defaults, where they set it.
    pub fn apply(&self, request: &GenerateRequest) -> GenerateRequest {
        let mut r = request.clone();
        let unset = request.unset;
        if let (true, Some(v)) = (unset.temperature, self.temperature) {
            r.temperature = v;
        }
        if let (true, Some(v)) = (unset.top_p, self.top_p) {
            r.top_p = v;
        }
        if let (true, Some(v)) = (unset.top_k, self.top_k) {
            r.top_k = v;
        }
        if let (true, Some(v)) = (unset.min_p, self.min_p) {
            r.min_p = v;
        }
        if let (true, Some(v)) = (unset.repetition_penalty, self.repetition_penalty) {
            r.repetition_penalty = v;
        }
        r
    }

    /// Whether these defaults set nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn eos_may_be_an_int_a_list_or_null() {
        assert_eq!(token_ids(Some(&json!(3)), "e"), Ok(vec![3]));
        assert_eq!(token_ids(Some(&json!([1, 3])), "e"), Ok(vec![1, 3]));
        assert_eq!(token_ids(Some(&Value::Null), "e"), Ok(vec![]));
        assert_eq!(token_ids(None, "e"), Ok(vec![]));
        assert!(token_ids(Some(&json!("x")), "e").is_err());
        assert!(token_ids(Some(&json!([-1])), "e").is_err());
    }

    #[test]
    fn sampling_defaults_fill_only_what_the_request_left_unset() {
        let defaults = SamplingDefaults::of(&json!({
            "temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": "x",
            "repetition_penalty": -1.0, "do_sample": true
        }));
        assert_eq!(defaults.temperature, Some(0.6));
        assert_eq!(defaults.top_k, Some(20));
        assert_eq!((defaults.min_p, defaults.repetition_penalty), (None, None));
        assert_eq!(SamplingDefaults::of(&json!({"top_k": -1})).top_k, Some(0));
        let mut request = GenerateRequest {
            temperature: 1.0,
            top_k: 5,
            ..GenerateRequest::default()
        };
        request.unset.temperature = true;
        request.unset.top_p = true;
        let applied = defaults.apply(&request);
        assert_eq!((applied.temperature, applied.top_p), (0.6, 0.95));
        assert_eq!(applied.top_k, 5, "set by the request: it stands");
        assert_eq!(applied.repetition_penalty, 1.0);
    }

    #[test]
    fn union_keeps_order_and_drops_repeats() {
        let mut ids = vec![3, 1];
        union(&mut ids, [1, 7, 3]);
        assert_eq!(ids, vec![3, 1, 7]);
    }
}
