//! OpenAI-compatible shapes: the completion request, its checks, replies, stream chunks, model list.

use serde::Deserialize;
use serde_json::{json, Value};
use wc_actors::{EngineInfo, FinishReason, GenerateOutput, GenerateRequest, Prompt};

use super::error::ApiError;

/// `POST /v1/completions`, after [`super::params::used`] refused what it cannot honour.
#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    /// An attached engine's name, or a configured model's name (attached on demand).
    pub model: String,
    pub prompt: PromptInput,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<StopInput>,
    /// `null` reads as absent, as OpenAI's API does.
    #[serde(default, deserialize_with = "null_as_default")]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// How many choices; only 1 is supported.
    pub n: Option<usize>,
    /// vLLM's extension: keep generating past the end-of-sequence token.
    #[serde(default, deserialize_with = "null_as_default")]
    pub ignore_eos: bool,
}

/// A value where JSON `null` means the type's default, as for an absent field.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A prompt: text, token ids, or a batch of one of either.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

/// `stop`: one string or several.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum StopInput {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the token counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// Limits a completion is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_tokens: usize,
    pub default_max_tokens: usize,
}

impl CompletionRequest {
    /// Checks the parameters and builds the runtime's request.
    pub fn to_generate(&self, limits: Limits) -> Result<GenerateRequest, ApiError> {
        let bad = |m: &str| ApiError::bad_request(m);
        if self.model.is_empty() {
            return Err(bad("`model` must not be empty"));
        }
        let prompt = match &self.prompt {
            PromptInput::Text(t) => Prompt::Text(t.clone()),
            PromptInput::Ids(ids) => Prompt::Ids(ids.clone()),
            PromptInput::Texts(t) if t.len() == 1 => Prompt::Text(t[0].clone()),
            PromptInput::IdLists(l) if l.len() == 1 => Prompt::Ids(l[0].clone()),
            _ => return Err(bad("`prompt` must be one string or one list of token ids")),
        };
        if matches!(&prompt, Prompt::Ids(ids) if ids.is_empty()) {
            return Err(bad("`prompt` must not be an empty list of token ids"));
        }
        Sampling {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop: self.stop.clone(),
            n: self.n,
            ignore_eos: self.ignore_eos,
        }
        .to_generate(prompt, limits)
    }

    /// Whether a streamed reply ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// The sampling parameters every completion endpoint takes.
#[derive(Clone, Debug, Default)]
pub struct Sampling {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<StopInput>,
    pub n: Option<usize>,
    pub ignore_eos: bool,
}

impl Sampling {
    /// Checks the parameters against `limits` and builds the runtime's request for `prompt`.
    pub fn to_generate(&self, prompt: Prompt, limits: Limits) -> Result<GenerateRequest, ApiError> {
        let bad = |m: &str| ApiError::bad_request(m);
        if self.n.is_some_and(|n| n != 1) {
            return Err(bad("only `n` = 1 is supported"));
        }
        let max_tokens = self.max_tokens.unwrap_or(limits.default_max_tokens);
        if max_tokens == 0 || max_tokens > limits.max_tokens {
            return Err(bad(&format!(
                "`max_tokens` must be between 1 and {}, got {max_tokens}",
                limits.max_tokens
            )));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(bad(&format!(
                "`temperature` must be between 0 and 2, got {temperature}"
            )));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(bad(&format!("`top_p` must be in (0, 1], got {top_p}")));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopInput::One(s)) => vec![s.clone()],
            Some(StopInput::Many(v)) => v.clone(),
        };
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(bad("`stop` takes at most 4 non-empty strings"));
        }
        Ok(GenerateRequest {
            prompt,
            max_new_tokens: max_tokens,
            temperature,
            top_p,
            seed: self.seed,
            stop,
            ignore_eos: self.ignore_eos,
        })
    }
}

/// OpenAI's name for why generation ended.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop => "stop",
        FinishReason::Cancelled => "abort",
    }
}

/// The `usage` object.
pub fn usage(output: &GenerateOutput) -> Value {
    let (prompt, completion) = (output.prompt_ids.len(), output.new_tokens.len());
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// Identifies one completion in its reply and every chunk.
#[derive(Clone, Debug)]
pub struct CompletionMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl CompletionMeta {
    /// The completion answering request `request_id` (its `x-request-id`), as vLLM names it.
    pub fn new(model: &str, request_id: &str) -> Self {
        Self {
            id: format!("cmpl-{request_id}"),
            created: unix_now(),
            model: model.to_owned(),
        }
    }

    /// The non-streamed reply.
    pub fn reply(&self, output: &GenerateOutput) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "text": output.text,
                "logprobs": null,
                "finish_reason": finish_reason(output.finish_reason),
            }],
            "usage": usage(output),
        })
    }

    /// One streamed chunk.
    pub fn chunk(&self, text: &str, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish,
            }],
        })
    }

    /// The last streamed chunk when usage was asked for: no choices, only counts.
    pub fn usage_chunk(&self, output: &GenerateOutput) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(output),
        })
    }
}

/// `GET /v1/models`: the OpenAI list of attached engines (`"state": "attached"`), then the
/// configured models that are not attached (`"state": "not_attached"`: attached on first use).
/// Each comes with its attach time (for the others, when the server first listed them) and its
/// checkpoint written relative to its model root.
pub fn model_list(
    engines: &[(EngineInfo, u64, String)],
    not_attached: &[(String, u64, String)],
) -> Value {
    let entry = |id: &str, created: u64, root: &str, state: &str| {
        json!({
            "id": id,
            "object": "model",
            "created": created,
            "owned_by": "worker-controller",
            "root": root,
            "parent": null,
            "state": state,
        })
    };
    let data: Vec<Value> = engines
        .iter()
        .map(|(e, created, root)| entry(&e.name, *created, root, "attached"))
        .chain(
            not_attached
                .iter()
                .map(|(name, created, root)| entry(name, *created, root, "not_attached")),
        )
        .collect();
    json!({ "object": "list", "data": data })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_tokens: 100,
        default_max_tokens: 16,
    };

    fn request(body: Value) -> CompletionRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn prompts_may_be_text_ids_or_a_batch_of_one() {
        let r = request(json!({"model": "m", "prompt": [2, 5, 7], "stop": "x"}));
        let g = r.to_generate(LIMITS).unwrap();
        assert_eq!(g.prompt, Prompt::Ids(vec![2, 5, 7]));
        assert_eq!(g.stop, vec!["x".to_string()]);
        assert_eq!(g.max_new_tokens, 16);
        let r = request(json!({"model": "m", "prompt": ["hi"]}));
        assert_eq!(
            r.to_generate(LIMITS).unwrap().prompt,
            Prompt::Text("hi".into())
        );
        let r = request(json!({"model": "m", "prompt": ["a", "b"]}));
        assert!(r.to_generate(LIMITS).is_err());
    }

    #[test]
    fn out_of_range_parameters_are_400() {
        for body in [
            json!({"model": "m", "prompt": "x", "max_tokens": 101}),
            json!({"model": "m", "prompt": "x", "max_tokens": 0}),
            json!({"model": "m", "prompt": "x", "temperature": -1}),
            json!({"model": "m", "prompt": "x", "top_p": 0}),
            json!({"model": "m", "prompt": "x", "n": 2}),
            json!({"model": "m", "prompt": []}),
        ] {
            let e = request(body.clone()).to_generate(LIMITS).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{body}");
        }
    }
}
