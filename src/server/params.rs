//! The OpenAI parameters a request may carry: the ones an endpoint uses, the ones that change
//! nothing (accepted), and the ones the engine cannot honour (refused with a 400 naming them,
//! unless given at the value that asks for nothing). Nothing is silently ignored.

use serde_json::{json, Map, Value};

use super::error::ApiError;

/// Accepted and not used: they change nothing about the reply.
const HARMLESS: [&str; 6] = [
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
];

/// For a parameter the engine cannot honour, whether `value` asks for nothing; `None` for a
/// parameter this server does not know at all.
fn is_no_op(name: &str, value: &Value) -> Option<bool> {
    let empty = |v: &Value| {
        v.as_array().is_some_and(Vec::is_empty) || v.as_object().is_some_and(Map::is_empty)
    };
    let zero = |v: &Value| v.as_f64() == Some(0.0);
    Some(match name {
        "logprobs" | "echo" => value == &Value::Bool(false),
        "top_logprobs" => zero(value),
        "presence_penalty" | "frequency_penalty" => zero(value),
        "best_of" => value.as_u64() == Some(1),
        // vLLM's, at their defaults.
        "use_beam_search" | "continue_final_message" => value == false,
        "spaces_between_special_tokens" => value == true,
        "length_penalty" => value.as_f64() == Some(1.0),
        "logit_bias" | "tools" | "functions" => empty(value),
        "tool_choice" | "function_call" => value == "none" || value == "auto",
        "parallel_tool_calls" => value.is_boolean(),
        "response_format" => value.get("type").and_then(Value::as_str) == Some("text"),
        "modalities" => value == &json!(["text"]),
        "audio" | "prediction" | "reasoning_effort" | "web_search_options" | "verbosity"
        | "suffix" | "guided_json" | "guided_regex" | "guided_choice" | "guided_grammar" => false,
        _ => return None,
    })
}

/// The fields of `body` the endpoint uses (those in `supported`), after refusing the ones it
/// cannot honour and unknown ones. `null` reads as absent, as in OpenAI's API.
pub fn used(body: Value, supported: &[&str]) -> Result<Value, ApiError> {
    let Value::Object(fields) = body else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let mut used = Map::new();
    for (name, value) in fields {
        if value.is_null() || HARMLESS.contains(&name.as_str()) {
            continue;
        }
        if supported.contains(&name.as_str()) {
            used.insert(name, value);
            continue;
        }
        match is_no_op(&name, &value) {
            Some(true) => {}
            Some(false) => {
                return Err(ApiError::bad_request(format!(
                    "`{}` is not supported by this server (only its no-op value is accepted): leave it out",
                    crate::load::shorten(&name)
                )))
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{}`",
                    crate::load::shorten(&name)
                )))
            }
        }
    }
    Ok(Value::Object(used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_values_are_refused_by_name_and_no_ops_accepted() {
        let supported = ["model", "prompt"];
        let ok = used(
            json!({"model": "m", "prompt": "p", "user": "u", "echo": false, "best_of": 1,
                   "logprobs": null, "presence_penalty": 0, "logit_bias": {},
                   "use_beam_search": false, "spaces_between_special_tokens": true,
                   "length_penalty": 1}),
            &supported,
        )
        .unwrap();
        assert_eq!(ok, json!({"model": "m", "prompt": "p"}));
        for (name, value) in [
            ("echo", json!(true)),
            ("logprobs", json!(5)),
            ("best_of", json!(3)),
            ("presence_penalty", json!(0.5)),
            ("frequency_penalty", json!(-1)),
            ("logit_bias", json!({"50256": -100})),
            ("suffix", json!("x")),
            ("use_beam_search", json!(true)),
            ("spaces_between_special_tokens", json!(false)),
            ("colour", json!("red")),
        ] {
            let mut body = json!({"model": "m", "prompt": "p"});
            body[name] = value;
            let e = used(body, &supported).unwrap_err();
            assert_eq!(e.status.as_u16(), 400);
            assert!(e.message.contains(name), "{}", e.message);
        }
    }
}
