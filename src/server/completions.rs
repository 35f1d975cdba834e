//! The OpenAI inference API: `GET /v1/models` and `POST /v1/completions` (plain or streamed).

use std::future::Future;

use actix_web::{web, HttpResponse};
use serde_json::Value;
use wc_actors::GenerateError;

use super::access::RequestContext;
use super::body::JsonBody;
use super::error::ApiError;
use super::openai::{model_list, CompletionMeta, CompletionRequest};
use super::params;
use super::state::AppState;
use super::{generation, stream};

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
const COMPLETION_PARAMETERS: [&str; 11] = [
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "n",
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
    let meta = CompletionMeta::new(&body.model, access.id());
    let trace = state.metrics.trace(&access, &body.model);
    if body.stream {
        let include_usage = body.include_usage();
        return stream::respond(state, trace, include_usage, request, meta).await;
    }
    let output = generation::complete(&state, trace, request).await?;
    Ok(HttpResponse::Ok().json(meta.reply(&output)))
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
