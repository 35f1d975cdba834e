//! Stopping ids as a checkpoint gives them: `eos_token_id` in `config.json` and
//! `generation_config.json`, each an int, a list of ints or null.

use std::path::Path;

use serde_json::Value;

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
    let path = dir.join("generation_config.json");
    let Some(text) = read_side_file(&path)? else {
        return Ok(Vec::new());
    };
    let invalid = |reason: String| LoadError::InvalidConfig {
        path: path.clone(),
        reason,
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    token_ids(value.get("eos_token_id"), "eos_token_id").map_err(invalid)
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
    fn union_keeps_order_and_drops_repeats() {
        let mut ids = vec![3, 1];
        union(&mut ids, [1, 7, 3]);
        assert_eq!(ids, vec![3, 1, 7]);
    }
}
