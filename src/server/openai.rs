//! OpenAI-compatible shapes: the completion request, its checks, replies, stream chunks, model list.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};
use wc_actors::{EngineInfo, FinishReason, GenerateOutput, GenerateRequest, Prompt};

use super::error::ApiError;
use super::logprobs::completion_logprobs;

#[path = "openai_sampling.rs"]
mod sampling;
pub use sampling::{
    ChoiceCounts, Sampling, SamplingExtras, EXTRA_PARAMETERS, MAX_CHOICES, MAX_LOGPROBS,
};

/// The most prompts one completion request may batch (LangChain sends up to 20).
pub const MAX_PROMPTS: usize = 64;

/// The most sequences (prompts times `best_of`, or `n`) one completion request may run.
pub const MAX_SEQUENCES: usize = 128;

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
    /// vLLM's other sampling extensions.
    #[serde(flatten)]
    pub extras: SamplingExtras,
}

/// A value where JSON `null` means the type's default, as for an absent field.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A prompt: text, token ids, or a batch of either (each prompt its own choices).
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
    /// The prompts, one or a batch of at most [`MAX_PROMPTS`], each checked.
    pub fn prompts(&self) -> Result<Vec<Prompt>, ApiError> {
        let bad = |m: String| ApiError::bad_request(m);
        let prompts: Vec<Prompt> = match &self.prompt {
            PromptInput::Text(t) => vec![Prompt::Text(t.clone())],
            PromptInput::Ids(ids) => vec![Prompt::Ids(ids.clone())],
            PromptInput::Texts(t) => t.iter().cloned().map(Prompt::Text).collect(),
            PromptInput::IdLists(l) => l.iter().cloned().map(Prompt::Ids).collect(),
        };
        if prompts.len() > MAX_PROMPTS {
            return Err(bad(format!(
                "`prompt` is a list of {} prompts: at most {MAX_PROMPTS} per request",
                prompts.len()
            )));
        }
        if prompts.is_empty()
            || prompts
                .iter()
                .any(|p| matches!(p, Prompt::Ids(i) if i.is_empty()))
        {
            return Err(bad(
                "`prompt` must not be an empty list, nor hold an empty list of token ids".into(),
            ));
        }
        Ok(prompts)
    }

    /// Checks the parameters and builds the runtime's request for each prompt, in order.
    pub fn to_generate(&self, limits: Limits) -> Result<Vec<GenerateRequest>, ApiError> {
        let bad = |m: &str| ApiError::bad_request(m);
        if self.model.is_empty() {
            return Err(bad("`model` must not be empty"));
        }
        let prompts = self.prompts()?;
        if self.echo && self.logprobs.is_some() {
            return Err(bad(
                "`echo` with `logprobs` is not supported (no logprobs for prompt tokens): leave one out",
            ));
        }
        if self.echo && prompts.iter().any(|p| !matches!(p, Prompt::Text(_))) {
            return Err(bad("`echo` needs a text prompt, not token ids"));
        }
        let sampling = self.sampling();
        let sequences = sampling.choices(false)?.best_of * prompts.len();
        if sequences > MAX_SEQUENCES {
            return Err(bad(&format!(
                "`n` (or `best_of`) times the number of prompts is {sequences}: at most \
                 {MAX_SEQUENCES} per request"
            )));
        }
        prompts
            .into_iter()
            .map(|prompt| sampling.to_generate(prompt, limits))
            .collect()
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
            extras: self.extras.clone(),
        }
    }

    /// Per prompt, the text `echo` puts before its completions (empty without `echo`).
    pub fn echoed(&self) -> Vec<String> {
        match (&self.prompt, self.echo) {
            (PromptInput::Text(t), true) => vec![t.clone()],
            (PromptInput::Texts(t), true) => t.clone(),
            (PromptInput::Text(_) | PromptInput::Ids(_), false) => vec![String::new()],
            (PromptInput::Texts(t), false) => vec![String::new(); t.len()],
            (PromptInput::IdLists(l), _) => vec![String::new(); l.len()],
            (PromptInput::Ids(_), true) => vec![String::new()],
        }
    }

    /// Whether a streamed reply ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
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

/// The `usage` object of the choices of one request, `per_prompt` choices a prompt in order:
/// each prompt once, every choice's tokens.
pub fn usage_of(outputs: &[GenerateOutput], per_prompt: usize) -> Value {
    let prompt: usize = outputs
        .chunks(per_prompt.max(1))
        .map(|choices| choices[0].prompt_ids.len())
        .sum();
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

    /// The non-streamed reply: one choice per output (`n` per prompt, in order: choice
    /// `i * n + j` is prompt `i`'s `j`th), each after its prompt's `echoes` entry (the prompt's
    /// text when asked for), with logprobs when the request asked for them.
    pub fn reply(
        &self,
        outputs: &[GenerateOutput],
        echoes: &[String],
        n: usize,
        logprobs: bool,
    ) -> Value {
        let choices: Vec<Value> = outputs
            .iter()
            .enumerate()
            .map(|(index, output)| {
                let echo = echoes.get(index / n.max(1)).map_or("", String::as_str);
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
            "usage": usage_of(outputs, n),
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

    /// The last streamed chunk when usage was asked for: no choices, only counts (`n` choices
    /// a prompt).
    pub fn usage_chunk(&self, outputs: &[GenerateOutput], n: usize) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_of(outputs, n),
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
    fn prompts_may_be_text_ids_or_a_batch_of_either() {
        let r = request(json!({"model": "m", "prompt": [2, 5, 7], "stop": "x"}));
        let g = r.to_generate(LIMITS).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].prompt, Prompt::Ids(vec![2, 5, 7]));
        assert_eq!(g[0].stop, vec!["x".to_string()]);
        assert_eq!(g[0].max_new_tokens, 16);
        let r = request(json!({"model": "m", "prompt": ["a", "b"], "echo": true}));
        let prompts: Vec<_> = r
            .to_generate(LIMITS)
            .unwrap()
            .into_iter()
            .map(|g| g.prompt)
            .collect();
        assert_eq!(
            prompts,
            [Prompt::Text("a".into()), Prompt::Text("b".into())]
        );
        assert_eq!(r.echoed(), ["a", "b"]);
        let r = request(json!({"model": "m", "prompt": [[1], [2, 3]]}));
        assert_eq!(
            r.to_generate(LIMITS).unwrap()[1].prompt,
            Prompt::Ids(vec![2, 3])
        );
        assert_eq!(r.echoed(), ["", ""]);
    }

    #[test]
    fn too_many_prompts_or_sequences_are_400_naming_the_limit() {
        let many = vec!["p"; MAX_PROMPTS + 1];
        let e = request(json!({"model": "m", "prompt": many}))
            .to_generate(LIMITS)
            .unwrap_err();
        assert!(
            e.message.contains(&MAX_PROMPTS.to_string()),
            "{}",
            e.message
        );
        let prompts = vec!["p"; MAX_SEQUENCES / 16 + 1];
        let e = request(json!({"model": "m", "prompt": prompts, "n": 16}))
            .to_generate(LIMITS)
            .unwrap_err();
        assert!(
            e.message.contains(&MAX_SEQUENCES.to_string()),
            "{}",
            e.message
        );
        for empty in [json!([]), json!([[1], []])] {
            let e = request(json!({"model": "m", "prompt": empty}))
                .to_generate(LIMITS)
                .unwrap_err();
            assert!(e.message.contains("`prompt`"), "{}", e.message);
        }
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
