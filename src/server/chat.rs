//! `POST /v1/chat/completions`: OpenAI chat completions, plain or streamed, on the completions
//! machinery (on-demand attach, limits, metrics, the event stream). The prompt is the model's
//! own chat template rendered by the engine (with vLLM's `chat_template_kwargs` and
//! `add_generation_prompt` when given; role `developer` read as `system`); a model without one
//! answers 400.
//!
//! Every parameter is either used, accepted as harmless (`user`, `metadata`, ...), or refused
//! with a 400 naming it: a parameter the engine cannot honour (`tools`, `response_format`, ...)
//! is never silently ignored. Given at its no-op value (`"tools": []`, null, ...) it is accepted.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

use wc_actors::request::ChatPrompt;
use wc_actors::{GenerateOutput, Prompt, TokenLogprobs};

use super::access::RequestContext;
use super::body::JsonBody;
use super::completions::{choice_requests, generate_choices};
use super::error::ApiError;
use super::logprobs::chat_logprobs;
use super::openai::{
    finish_reason, usage_of, ChoiceCounts, CompletionMeta, Sampling, SamplingExtras, StopInput,
    StreamOptions, EXTRA_PARAMETERS,
};
use super::params;
use super::state::AppState;
use super::stream::{self, Chunks};
use crate::models::text::chat_template::{ChatMessage, MessageExt};

/// The parameters used, besides vLLM's sampling extras.
const SUPPORTED: [&str; 19] = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "n",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "stream",
    "stream_options",
    "ignore_eos",
    "chat_template_kwargs",
    "add_generation_prompt",
];

/// The parameters used, typed (only those [`params::used`] let through reach it).
#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Value,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    stop: Option<StopInput>,
    n: Option<usize>,
    /// Return each token's logprob.
    logprobs: Option<bool>,
    /// With `logprobs`: this many most likely alternatives per token.
    top_logprobs: Option<usize>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<BTreeMap<String, f32>>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    ignore_eos: bool,
    /// Extra variables for the chat template (an object), e.g. `{"enable_thinking": false}`.
    chat_template_kwargs: Option<Value>,
    /// End the prompt where the assistant's reply begins (true unless given).
    add_generation_prompt: Option<bool>,
    #[serde(flatten)]
    extras: SamplingExtras,
}

/// A checked chat request: the model, the runtime's request, and how to reply.
struct Checked {
    model: String,
    request: wc_actors::GenerateRequest,
    choices: ChoiceCounts,
    logprobs: bool,
    stream: bool,
    include_usage: bool,
}

/// Checks the body: every field known, every message well formed, the sampling in range.
/// OpenAI's `messages` as chat messages: at least one, each checked ([`ChatMessage::from_openai`]).
pub fn parse_messages(messages: &[Value]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "`messages` is empty: give at least one message",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| ChatMessage::from_openai(i, m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request(format!("`messages`: {e}")))
}

fn check(body: Value, limits: super::openai::Limits) -> Result<Checked, ApiError> {
    let supported: Vec<&str> = SUPPORTED.iter().chain(&EXTRA_PARAMETERS).copied().collect();
    let used = params::used(body, &supported)?;
    let request: ChatRequest = serde_json::from_value(used)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
    if request.model.is_empty() {
        return Err(ApiError::bad_request("`model` must not be empty"));
    }
    let Value::Array(messages) = &request.messages else {
        return Err(ApiError::bad_request(
            "`messages` must be a list of {\"role\", \"content\"} objects",
        ));
    };
    let messages = parse_messages(messages)?;
    let max_tokens = match (request.max_tokens, request.max_completion_tokens) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(format!(
                "`max_tokens` ({a}) and `max_completion_tokens` ({b}) differ: give one"
            )))
        }
        (a, b) => b.or(a),
    };
    if request.stream_options.is_some() && !request.stream {
        return Err(ApiError::bad_request(
            "`stream_options` is only allowed when `stream` is true",
        ));
    }
    let logprobs = request.logprobs.unwrap_or(false);
    if request.top_logprobs.is_some() && !logprobs {
        return Err(ApiError::bad_request(
            "`top_logprobs` needs `logprobs` set to true",
        ));
    }
    let sampling = Sampling {
        max_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        seed: request.seed,
        stop: request.stop,
        n: request.n,
        best_of: None,
        ignore_eos: request.ignore_eos,
        logprobs: logprobs.then_some(request.top_logprobs.unwrap_or(0)),
        presence_penalty: request.presence_penalty,
        frequency_penalty: request.frequency_penalty,
        logit_bias: request.logit_bias,
        extras: request.extras,
    };
    let kwargs = match request.chat_template_kwargs {
        None => String::new(),
        Some(Value::Object(map)) if map.is_empty() => String::new(),
        Some(kwargs @ Value::Object(_)) => kwargs.to_string(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`chat_template_kwargs` must be an object of template variables",
            ))
        }
    };
    let add_generation_prompt = request.add_generation_prompt.unwrap_or(true);
    let prompt = match (add_generation_prompt, kwargs.is_empty()) {
        (true, true) => Prompt::Chat(messages),
        _ => Prompt::ChatWith(ChatPrompt {
            messages,
            add_generation_prompt,
            template_kwargs: kwargs,
        }),
    };
    let generate = sampling.to_generate(prompt, limits)?;
    Ok(Checked {
        model: request.model,
        request: generate,
        choices: sampling.choices(request.stream)?,
        logprobs,
        stream: request.stream,
        include_usage: request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    })
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    state: web::Data<AppState>,
    access: web::ReqData<RequestContext>,
    body: JsonBody<Value>,
) -> Result<HttpResponse, ApiError> {
    let checked = check(body.into_inner(), state.limits())?;
    let meta = ChatMeta::new(&checked.model, access.id());
    let trace = state.metrics.trace(&access, &checked.model);
    let requests = choice_requests(&checked.request, checked.choices);
    if checked.stream {
        let requests = (requests, checked.choices.best_of);
        return stream::respond(state, trace, checked.include_usage, requests, meta).await;
    }
    let outputs = generate_choices(&state, trace, requests, checked.choices).await?;
    Ok(HttpResponse::Ok().json(meta.reply(&outputs, checked.logprobs)))
}

/// Identifies one chat completion in its reply and every chunk.
struct ChatMeta(CompletionMeta);

impl ChatMeta {
    fn new(model: &str, request_id: &str) -> Self {
        Self(CompletionMeta {
            id: format!("chatcmpl-{request_id}"),
            ..CompletionMeta::new(model, request_id)
        })
    }

    /// The fields every reply and chunk of this completion carries, with `object` and `rest`.
    fn envelope(&self, object: &str, rest: Value) -> Value {
        let m = &self.0;
        let mut value = json!({
            "id": m.id,
            "object": object,
            "created": m.created,
            "model": m.model,
            "system_fingerprint": null,
        });
        if let (Some(fields), Value::Object(more)) = (value.as_object_mut(), rest) {
            fields.extend(more);
        }
        value
    }

    /// The non-streamed reply: one choice per output, with logprobs when asked for.
    fn reply(&self, outputs: &[GenerateOutput], logprobs: bool) -> Value {
        let choices: Vec<Value> = outputs
            .iter()
            .enumerate()
            .map(|(index, output)| {
                json!({
                    "index": index,
                    "message": {"role": "assistant", "content": output.text, "refusal": null},
                    "logprobs": logprobs.then(|| chat_logprobs(&output.logprobs)),
                    "finish_reason": finish_reason(output.finish_reason),
                })
            })
            .collect();
        self.envelope(
            "chat.completion",
            json!({ "choices": choices, "usage": usage_of(outputs, outputs.len()) }),
        )
    }

    /// One streamed chunk of choice `index` with `delta`, logprobs and `finish_reason`.
    fn chunk(&self, index: usize, delta: Value, logprobs: Value, finish: Option<&str>) -> Value {
        self.envelope(
            CHUNK,
            json!({
                "choices": [{
                    "index": index,
                    "delta": delta,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }],
            }),
        )
    }
}

/// The `object` of a streamed chunk.
const CHUNK: &str = "chat.completion.chunk";

impl Chunks for ChatMeta {
    fn model(&self) -> &str {
        &self.0.model
    }

    fn opening(&self, index: usize) -> Vec<Value> {
        let role = json!({"role": "assistant", "content": ""});
        vec![self.chunk(index, role, Value::Null, None)]
    }

    fn text(&self, index: usize, text: &str, logprobs: Option<(&TokenLogprobs, usize)>) -> Value {
        let logprobs =
            logprobs.map_or(Value::Null, |(l, _)| chat_logprobs(std::slice::from_ref(l)));
        self.chunk(index, json!({ "content": text }), logprobs, None)
    }

    fn finish(&self, index: usize, reason: &str) -> Value {
        self.chunk(index, json!({}), Value::Null, Some(reason))
    }

    fn usage(&self, outputs: &[GenerateOutput]) -> Value {
        let usage = usage_of(outputs, outputs.len());
        self.envelope(CHUNK, json!({"choices": [], "usage": usage}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::openai::Limits;

    const LIMITS: Limits = Limits {
        max_tokens: 100,
        default_max_tokens: 16,
    };

    fn err(body: Value) -> String {
        match check(body.clone(), LIMITS) {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => {
                assert_eq!(e.status.as_u16(), 400, "{body}");
                e.message
            }
        }
    }

    fn user() -> Value {
        json!([{"role": "user", "content": "hi"}])
    }

    #[test]
    fn messages_become_a_chat_prompt_with_the_sampling_checked() {
        let c = check(
            json!({"model": "m", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ], "max_completion_tokens": 5, "temperature": 0, "stop": "x", "user": "u1",
               "metadata": {"k": "v"}, "logprobs": false, "tools": [], "presence_penalty": 0,
               "stream": true, "stream_options": {"include_usage": true}, "top_logprobs": null}),
            LIMITS,
        )
        .unwrap();
        assert_eq!(
            c.request.prompt,
            Prompt::Chat(vec![
                ChatMessage::new("system", "be brief"),
                ChatMessage::new("user", "a\nb")
            ])
        );
        assert_eq!(c.request.max_new_tokens, 5);
        assert_eq!(c.request.stop, vec!["x".to_string()]);
        assert!(c.stream && c.include_usage);
    }

    #[test]
    fn template_options_and_vllm_extras_reach_the_request() {
        let c = check(
            json!({"model": "m", "messages": [{"role": "developer", "content": "d"}],
                   "chat_template_kwargs": {"enable_thinking": false}, "top_k": -1, "min_p": 0,
                   "repetition_penalty": 1.1, "add_generation_prompt": true}),
            LIMITS,
        )
        .unwrap();
        assert_eq!(
            c.request.prompt,
            Prompt::ChatWith(ChatPrompt {
                messages: vec![ChatMessage::new("system", "d")],
                add_generation_prompt: true,
                template_kwargs: r#"{"enable_thinking":false}"#.into(),
            })
        );
        assert_eq!((c.request.top_k, c.request.repetition_penalty), (0, 1.1));
        let plain = check(
            json!({"model": "m", "messages": user(), "chat_template_kwargs": {}}),
            LIMITS,
        )
        .unwrap();
        assert!(matches!(plain.request.prompt, Prompt::Chat(_)));
    }

    #[test]
    fn unsupported_parameters_are_400_naming_them() {
        for (name, value) in [
            ("top_logprobs", json!(2)),
            ("echo", json!(true)),
            ("best_of", json!(2)),
            (
                "tools",
                json!([{"type": "function", "function": {"name": "f"}}]),
            ),
            ("response_format", json!({"type": "json_object"})),
            ("presence_penalty", json!(2.5)),
            ("frequency_penalty", json!(-3)),
            ("logit_bias", json!({"50256": -101})),
            ("top_k", json!(-5)),
            ("min_p", json!(2)),
            ("repetition_penalty", json!(0)),
            ("min_tokens", json!(17)),
            ("chat_template_kwargs", json!("enable_thinking")),
            ("guided_json", json!({"type": "object"})),
            ("frobnicate", json!(1)),
        ] {
            let mut body = json!({"model": "m", "messages": user()});
            body[name] = value;
            let message = err(body);
            assert!(message.contains(&format!("`{name}`")), "{name}: {message}");
        }
    }

    #[test]
    fn malformed_messages_and_parameters_are_400() {
        for (body, says) in [
            (json!({"model": "m", "messages": []}), "empty"),
            (json!({"model": "m", "messages": "hi"}), "list"),
            (json!({"model": "m"}), "messages"),
            (
                json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
                "wizard",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": 5}]}),
                "content",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}]}),
                "content",
            ),
            (json!({"model": "m", "messages": ["hi"]}), "object"),
            (json!({"model": "m", "messages": user(), "n": 17}), "`n`"),
            (
                json!({"model": "m", "messages": user(), "max_tokens": 3, "max_completion_tokens": 4}),
                "differ",
            ),
            (
                json!({"model": "m", "messages": user(), "stream_options": {"include_usage": true}}),
                "stream_options",
            ),
            (
                json!({"model": "m", "messages": user(), "max_tokens": 101}),
                "max_tokens",
            ),
            (json!({"model": "", "messages": user()}), "model"),
            (
                json!({"model": "m", "messages": user(), "temperature": "hot"}),
                "invalid",
            ),
            (json!([1, 2]), "object"),
        ] {
            let message = err(body.clone());
            assert!(message.contains(says), "{body}: {message}");
        }
    }
}
