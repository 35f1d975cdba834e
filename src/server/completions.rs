//! The OpenAI inference API: `GET /v1/models` and `POST /v1/completions` (plain or streamed).

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
use super::openai::{model_list, ChoiceCounts, CompletionMeta, CompletionRequest};
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

/// The parameters `/v1/completions` uses.
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
    let used = params::used(body.into_inner(), &COMPLETION_PARAMETERS)?;
    let body: CompletionRequest = serde_json::from_value(used)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
    let request = body.to_generate(state.limits())?;
    let choices = body.sampling().choices(body.stream)?;
    let requests = choice_requests(&request, choices);
    let meta = CompletionMeta::new(&body.model, access.id());
    let trace = state.metrics.trace(&access, &body.model);
    let (echo, logprobs) = (body.echoed().to_owned(), body.logprobs.is_some());
    if body.stream {
        let include_usage = body.include_usage();
        let chunks = CompletionChunks { meta, echo };
        return stream::respond(state, trace, include_usage, requests, chunks).await;
    }
    let outputs = generate_choices(&state, trace, requests, choices.n).await?;
    Ok(HttpResponse::Ok().json(meta.reply(&outputs, &echo, logprobs)))
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

/// Runs every request on the trace's model at once (they join the engine's batch) and keeps the
/// `n` with the highest cumulative logprob, in that order (all of them, in order, when there are
/// `n`).
pub async fn generate_choices(
    state: &AppState,
    trace: Trace,
    requests: Vec<GenerateRequest>,
    n: usize,
) -> Result<Vec<GenerateOutput>, ApiError> {
    let mut outputs = generation::complete(state, trace, requests).await?;
    if outputs.len() > n {
        outputs.sort_by(|a, b| b.cumulative_logprob.total_cmp(&a.cumulative_logprob));
        outputs.truncate(n);
    }
    Ok(outputs)
}

/// A streamed completion's chunks: the prompt's text first when echoed.
struct CompletionChunks {
    meta: CompletionMeta,
    echo: String,
}

impl Chunks for CompletionChunks {
    fn model(&self) -> &str {
        &self.meta.model
    }

    fn opening(&self, index: usize) -> Vec<Value> {
        match self.echo.is_empty() {
            true => Vec::new(),
            false => vec![self.meta.chunk(index, &self.echo, Value::Null, None)],
        }
    }

    fn text(&self, index: usize, text: &str, logprobs: Option<(&TokenLogprobs, usize)>) -> Value {
        let logprobs = logprobs.map_or(Value::Null, |(l, offset)| {
            completion_logprobs(std::slice::from_ref(l), self.echo.len() + offset)
        });
        self.meta.chunk(index, text, logprobs, None)
    }

    fn finish(&self, index: usize, reason: &str) -> Value {
        self.meta.chunk(index, "", Value::Null, Some(reason))
    }

    fn usage(&self, outputs: &[GenerateOutput]) -> Value {
        self.meta.usage_chunk(outputs)
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
