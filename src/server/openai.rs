//! OpenAI-compatible shapes: the completion request, its checks, replies, stream chunks, model list.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};
use wc_actors::{EngineInfo, FinishReason, GenerateOutput, GenerateRequest, Prompt};

use super::error::ApiError;
use super::logprobs::completion_logprobs;

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
    /// How many choices.
    pub n: Option<usize>,
    /// Sequences generated, of which the `n` with the highest cumulative logprob are returned.
    pub best_of: Option<usize>,
    /// Return the prompt's text before the completion.
    #[serde(default, deserialize_with = "null_as_default")]
    pub echo: bool,
    /// The logprob of each token and of this many most likely alternatives.
    pub logprobs: Option<usize>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string) to a bias in [-100, 100] added to its logit.
    pub logit_bias: Option<BTreeMap<String, f32>>,
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
        if self.echo && self.logprobs.is_some() {
            return Err(bad(
                "`echo` with `logprobs` is not supported (no logprobs for prompt tokens): leave one out",
            ));
        }
        if self.echo && !matches!(prompt, Prompt::Text(_)) {
            return Err(bad("`echo` needs a text prompt, not token ids"));
        }
        self.sampling().to_generate(prompt, limits)
    }

    /// The sampling parameters, as every endpoint takes them.
    pub fn sampling(&self) -> Sampling {
        Sampling {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop: self.stop.clone(),
            n: self.n,
            best_of: self.best_of,
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: self.logit_bias.clone(),
        }
    }

    /// The text `echo` puts before the completion.
    pub fn echoed(&self) -> &str {
        match (&self.prompt, self.echo) {
            (PromptInput::Text(t), true) => t,
            (PromptInput::Texts(t), true) if t.len() == 1 => &t[0],
            _ => "",
        }
    }

    /// Whether a streamed reply ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// The most choices (`n`, `best_of`) one request may ask for.
pub const MAX_CHOICES: usize = 16;

/// The most alternatives per token `logprobs` / `top_logprobs` may ask for (vLLM's default).
pub const MAX_LOGPROBS: usize = 20;

/// The sampling parameters every completion endpoint takes.
#[derive(Clone, Debug, Default)]
pub struct Sampling {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<StopInput>,
    pub n: Option<usize>,
    pub best_of: Option<usize>,
    pub ignore_eos: bool,
    /// Alternatives per token, when logprobs are asked for.
    pub logprobs: Option<usize>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<BTreeMap<String, f32>>,
}

/// How many sequences a request runs and how many it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChoiceCounts {
    /// Returned.
    pub n: usize,
    /// Generated; the `n` with the highest cumulative logprob are returned.
    pub best_of: usize,
}

impl Sampling {
    /// Checks `n` and `best_of`; a stream cannot rank sequences it has already sent.
    pub fn choices(&self, stream: bool) -> Result<ChoiceCounts, ApiError> {
        let n = self.n.unwrap_or(1);
        let best_of = self.best_of.unwrap_or(n);
        if n == 0 || n > MAX_CHOICES {
            return Err(ApiError::bad_request(format!(
                "`n` must be between 1 and {MAX_CHOICES}, got {n}"
            )));
        }
        if best_of < n || best_of > MAX_CHOICES {
            return Err(ApiError::bad_request(format!(
                "`best_of` must be between `n` ({n}) and {MAX_CHOICES}, got {best_of}"
            )));
        }
        if stream && best_of != n {
            return Err(ApiError::bad_request(
                "`best_of` other than `n` cannot be streamed: set `stream` to false",
            ));
        }
        Ok(ChoiceCounts { n, best_of })
    }

    /// Checks the parameters against `limits` and builds the runtime's request for `prompt`.
    pub fn to_generate(&self, prompt: Prompt, limits: Limits) -> Result<GenerateRequest, ApiError> {
        let bad = |m: &str| ApiError::bad_request(m);
        self.choices(false)?;
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
        if self.logprobs.is_some_and(|k| k > MAX_LOGPROBS) {
            return Err(bad(&format!(
                "`logprobs` must be between 0 and {MAX_LOGPROBS}"
            )));
        }
        let penalty = |name: &str, value: Option<f32>| match value.unwrap_or(0.0) {
            v if (-2.0..=2.0).contains(&v) => Ok(v),
            v => Err(bad(&format!("`{name}` must be between -2 and 2, got {v}"))),
        };
        let presence_penalty = penalty("presence_penalty", self.presence_penalty)?;
        let frequency_penalty = penalty("frequency_penalty", self.frequency_penalty)?;
        let logit_bias = self
            .logit_bias
            .iter()
            .flatten()
            .map(|(token, bias)| {
                let id = token.parse::<u32>().map_err(|_| {
                    bad(&format!(
                        "`logit_bias` keys must be token ids, got `{token}`"
                    ))
                })?;
                match (-100.0..=100.0).contains(bias) {
                    true => Ok((id, *bias)),
                    false => Err(bad(&format!(
                        "`logit_bias` values must be between -100 and 100, got {bias}"
                    ))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GenerateRequest {
            prompt,
            max_new_tokens: max_tokens,
            temperature,
            top_p,
            seed: self.seed,
            stop,
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs,
            presence_penalty,
            frequency_penalty,
            logit_bias,
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

/// The `usage` object of the choices of one request: the prompt once, every choice's tokens.
pub fn usage_of(outputs: &[GenerateOutput]) -> Value {
    let prompt = outputs.first().map_or(0, |o| o.prompt_ids.len());
    let completion: usize = outputs.iter().map(|o| o.new_tokens.len()).sum();
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

    /// The non-streamed reply: one choice per output, each after `echo` (the prompt's text
    /// when asked for), with logprobs when the request asked for them.
    pub fn reply(&self, outputs: &[GenerateOutput], echo: &str, logprobs: bool) -> Value {
        let choices: Vec<Value> = outputs
            .iter()
            .enumerate()
            .map(|(index, output)| {
                json!({
                    "index": index,
                    "text": format!("{echo}{}", output.text),
                    "logprobs": logprobs.then(|| completion_logprobs(&output.logprobs, echo.len())),
                    "finish_reason": finish_reason(output.finish_reason),
                })
            })
            .collect();
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage_of(outputs),
        })
    }

    /// One streamed chunk of choice `index`.
    pub fn chunk(&self, index: usize, text: &str, logprobs: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish,
            }],
        })
    }

    /// The last streamed chunk when usage was asked for: no choices, only counts.
    pub fn usage_chunk(&self, outputs: &[GenerateOutput]) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_of(outputs),
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
            json!({"model": "m", "prompt": "x", "n": 17}),
            json!({"model": "m", "prompt": "x", "n": 3, "best_of": 2}),
            json!({"model": "m", "prompt": "x", "logprobs": 21}),
            json!({"model": "m", "prompt": "x", "presence_penalty": 2.5}),
            json!({"model": "m", "prompt": "x", "logit_bias": {"a": 1}}),
            json!({"model": "m", "prompt": "x", "logit_bias": {"3": 101}}),
            json!({"model": "m", "prompt": "x", "echo": true, "logprobs": 1}),
            json!({"model": "m", "prompt": [1, 2], "echo": true}),
            json!({"model": "m", "prompt": []}),
        ] {
            let e = request(body.clone()).to_generate(LIMITS).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{body}");
        }
    }
}
