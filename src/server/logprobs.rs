//! Token logprobs in OpenAI's two shapes: completions (`tokens`, `token_logprobs`,
//! `top_logprobs`, `text_offset`) and chat (`content`: one entry per token with its
//! `top_logprobs`).

use serde_json::{json, Map, Value};
use wc_actors::TokenLogprobs;

/// The completions shape for `tokens`, whose text starts at byte `offset` of the choice's text.
/// Each `top_logprobs` entry holds the top alternatives and the chosen token, as vLLM's does.
pub fn completion_logprobs(tokens: &[TokenLogprobs], offset: usize) -> Value {
    let mut text_offset = Vec::with_capacity(tokens.len());
    let mut at = offset;
    for t in tokens {
        text_offset.push(at);
        at += t.token.len();
    }
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut entries = Map::new();
            for (_, text, logprob) in &t.top {
                entries.entry(text.clone()).or_insert(json!(logprob));
            }
            entries.entry(t.token.clone()).or_insert(json!(t.logprob));
            Value::Object(entries)
        })
        .collect();
    json!({
        "tokens": tokens.iter().map(|t| t.token.as_str()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

/// The chat shape: `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`.
pub fn chat_logprobs(tokens: &[TokenLogprobs]) -> Value {
    let entry = |text: &str, logprob: f32| json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()});
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut value = entry(&t.token, t.logprob);
            value["top_logprobs"] = t.top.iter().map(|(_, text, lp)| entry(text, *lp)).collect();
            value
        })
        .collect();
    json!({ "content": content })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str, logprob: f32, top: &[(&str, f32)]) -> TokenLogprobs {
        TokenLogprobs {
            token: text.into(),
            logprob,
            top: top
                .iter()
                .enumerate()
                .map(|(i, (t, l))| (i as u32, t.to_string(), *l))
                .collect(),
        }
    }

    #[test]
    fn completion_shape_counts_offsets_from_the_echo_and_keeps_the_chosen_token() {
        let tokens = [
            token(" a", -0.5, &[(" a", -0.5), (" b", -1.0)]),
            token("c", -2.0, &[("d", -0.125)]),
        ];
        let v = completion_logprobs(&tokens, 3);
        assert_eq!(v["tokens"], json!([" a", "c"]));
        assert_eq!(v["token_logprobs"], json!([-0.5, -2.0]));
        assert_eq!(v["text_offset"], json!([3, 5]));
        assert_eq!(v["top_logprobs"][0], json!({" a": -0.5, " b": -1.0}));
        assert_eq!(v["top_logprobs"][1], json!({"d": -0.125, "c": -2.0}));
    }

    #[test]
    fn chat_shape_has_bytes_and_top_alternatives() {
        let v = chat_logprobs(&[token("hi", -0.25, &[("hi", -0.25), ("yo", -2.0)])]);
        let first = &v["content"][0];
        assert_eq!(first["token"], "hi");
        assert_eq!(first["bytes"], json!([104, 105]));
        assert_eq!(first["top_logprobs"][1]["token"], "yo");
    }
}
