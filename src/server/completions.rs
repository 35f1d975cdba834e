//! The OpenAI inference API: `GET /v1/models` and `POST /v1/completions` (plain or streamed; one
//! prompt or a batch of them, each prompt's choices its own requests beside the others').

use std::future::Future;

use actix_web::{web, HttpResponse};
use serde_json::Value;
use wc_actors::{GenerateError, GenerateOutput, GenerateRequest, TokenLogprobs};

use super::access::RequestContext;
use super::body::JsonBody;
use super::error::ApiError;
use super::generation;
use super::logprobs::completion_logprobs;
use super::metrics::Trace;
use super::openai::{
    model_list, ChoiceCounts, CompletionMeta, CompletionRequest, EXTRA_PARAMETERS,
};
use super::params;
use super::state::AppState;
use super::stream::{self, Chunks};

/// `GET /v1/models`: the attached engines, then the configured models not attached, in
/// OpenAI's list shape with each one's state.
pub async fn models(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let engines = state
        .handle
        .list_engines()
        .await
        .map_err(|_| ApiError::shutting_down())?;
    let listed: Vec<_> = engines
        .into_iter()
        .map(|e| {
            let created = state.pool.meta(e.engine_id).created;
            let root = state.model_roots.relative(std::path::Path::new(&e.model));
            (e, created, root)
        })
        .collect();
    static FIRST_LISTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let first_listed = *FIRST_LISTED.get_or_init(super::openai::unix_now);
    let not_attached: Vec<_> = state
        .config
        .models
        .iter()
        .filter(|m| !listed.iter().any(|(e, _, _)| e.name == m.name()))
        .map(|m| {
            let root = state
                .model_roots
                .relative(std::path::Path::new(&m.resolved));
            (m.name().to_owned(), first_listed, root)
        })
        .collect();
    Ok(HttpResponse::Ok().json(model_list(&listed, &not_attached)))
}

/// The parameters `/v1/completions` uses, besides vLLM's sampling extras.
const COMPLETION_PARAMETERS: [&str; 17] = [
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "n",
    "best_of",
    "echo",
    "logprobs",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "stream",
    "stream_options",
    "ignore_eos",
];

/// `POST /v1/completions`.
pub async fn completions(
    state: web::Data<AppState>,
    access: web::ReqData<RequestContext>,
    body: JsonBody<Value>,
) -> Result<HttpResponse, ApiError> {
    let supported: Vec<&str> = COMPLETION_PARAMETERS
        .iter()
        .chain(&EXTRA_PARAMETERS)
        .copied()
        .collect();
    let used = params::used(body.into_inner(), &supported)?;
    let body: CompletionRequest = serde_json::from_value(used)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
    let prompts = body.to_generate(state.limits())?;
    let choices = body.sampling().choices(body.stream)?;
    let requests: Vec<GenerateRequest> = prompts
        .iter()
        .flat_map(|request| choice_requests(request, choices))
        .collect();
    let meta = CompletionMeta::new(&body.model, access.id());
    let trace = state.metrics.trace(&access, &body.model);
    let (echoes, logprobs) = (body.echoed(), body.logprobs.is_some());
    if body.stream {
        let include_usage = body.include_usage();
        let chunks = CompletionChunks {
            meta,
            echoes,
            n: choices.n,
        };
        let requests = (requests, choices.best_of);
        return stream::respond(state, trace, include_usage, requests, chunks).await;
    }
    let outputs = generate_choices(&state, trace, requests, choices).await?;
    Ok(HttpResponse::Ok().json(meta.reply(&outputs, &echoes, choices.n, logprobs)))
}

/// The runtime requests of a request's choices: `best_of` of them, each with its own seed (the
/// given one plus the choice's index), computing logprobs when they rank the choices.
pub fn choice_requests(request: &GenerateRequest, choices: ChoiceCounts) -> Vec<GenerateRequest> {
    (0..choices.best_of)
        .map(|i| {
            let mut r = request.clone();
            r.seed = request.seed.map(|s| s.wrapping_add(i as u64));
            if choices.best_of > choices.n {
                r.logprobs = r.logprobs.or(Some(0));
            }
            r
        })
        .collect()
}

/// Runs every request on the trace's model at once (they join the engine's batch), `best_of`
/// a prompt, prompt by prompt, and keeps each prompt's `n` with the highest cumulative logprob,
/// in that order (all of them, in order, when `best_of` is `n`).
pub async fn generate_choices(
    state: &AppState,
    trace: Trace,
    requests: Vec<GenerateRequest>,
    choices: ChoiceCounts,
) -> Result<Vec<GenerateOutput>, ApiError> {
    let outputs = generation::complete(state, trace, requests, choices.best_of).await?;
    if choices.best_of == choices.n {
        return Ok(outputs);
    }
    let mut kept = Vec::with_capacity(outputs.len() / choices.best_of * choices.n);
    for prompt in outputs.chunks(choices.best_of) {
        let mut ranked = prompt.to_vec();
        ranked.sort_by(|a, b| b.cumulative_logprob.total_cmp(&a.cumulative_logprob));
        kept.extend(ranked.into_iter().take(choices.n));
    }
    Ok(kept)
}

/// A streamed completion's chunks: the prompt's text first when echoed. Choice `index` is
/// prompt `index / n`'s.
struct CompletionChunks {
    meta: CompletionMeta,
    /// Per prompt, its text when echoed (else empty).
    echoes: Vec<String>,
    n: usize,
}

impl CompletionChunks {
    fn echo(&self, index: usize) -> &str {
        self.echoes
            .get(index / self.n.max(1))
            .map_or("", String::as_str)
    }
}

impl Chunks for CompletionChunks {
    fn model(&self) -> &str {
        &self.meta.model
    }

    fn opening(&self, index: usize) -> Vec<Value> {
        match self.echo(index) {
            "" => Vec::new(),
            echo => vec![self.meta.chunk(index, echo, Value::Null, None)],
        }
    }

    fn text(&self, index: usize, text: &str, logprobs: Option<(&TokenLogprobs, usize)>) -> Value {
        let logprobs = logprobs.map_or(Value::Null, |(l, offset)| {
            completion_logprobs(std::slice::from_ref(l), self.echo(index).len() + offset)
        });
        self.meta.chunk(index, text, logprobs, None)
    }

    fn finish(&self, index: usize, reason: &str) -> Value {
        self.meta.chunk(index, "", Value::Null, Some(reason))
    }

    fn usage(&self, outputs: &[GenerateOutput]) -> Value {
        self.meta.usage_chunk(outputs, self.n)
    }
}

/// Runs `call` against the engine named `model`. When there is none (or it was lost) and
/// `model` is a configured model, attaches it on demand and calls once more.
pub async fn with_engine<T, F, Fut>(state: &AppState, model: &str, call: F) -> Result<T, ApiError>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<T, GenerateError>>,
{
    match call(model.to_owned()).await {
        Err(GenerateError::EngineNotFound { .. } | GenerateError::EngineLost { .. }) => {
            let Some(configured) = state.config.model(model) else {
                return Err(ApiError::model_not_found(model));
            };
            state.pool.ensure(configured, &state.metrics).await?;
            call(model.to_owned()).await.map_err(ApiError::from)
        }
        other => other.map_err(ApiError::from),
    }
}
