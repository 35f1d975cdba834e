//! The control API of the Worker Controller RFC: `/workers`, `/engines`, `/engines/{id}`.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use wc_actors::{check_engine_name, Attach, DType, DeviceSpec, EngineInfo, EngineRef, ModelSpec};

use super::body::JsonBody;
use super::error::ApiError;
use super::state::AppState;
use crate::config::KeepAlive;
use crate::load::shared_cache::SharedCacheReport;

/// `POST /engines`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachBody {
    /// A configured model's name, a checkpoint directory, or a hub id.
    pub model: String,
    /// The dtype on the device; default: the configured one, else the checkpoint's own.
    pub dtype: Option<DType>,
    /// Attach to this worker only.
    pub worker: Option<usize>,
    /// Attach to a worker on this device only.
    pub device: Option<DeviceSpec>,
    /// The engine's name; default: the configured model's name, else `engine-<id>`.
    pub name: Option<String>,
    /// How long it stays while idle before another model may evict it; default: the
    /// configured model's, else for ever.
    pub keep_alive: Option<KeepAlive>,
}

/// `GET /workers`: every worker with its state, prewarm report and memory (with the models
/// parked on its device and those in its host cache).
pub async fn list_workers(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let workers = state
        .handle
        .list_workers()
        .await
        .map_err(|_| ApiError::shutting_down())?;
    let mut reply = json!({ "workers": workers });
    if let Some(cache) = &state.host_cache {
        reply["host_cache"] = shared_host_cache(&state, &cache.report());
    }
    tiers_relative(&state, &mut reply);
    Ok(HttpResponse::Ok().json(reply))
}

/// The machine's host weight cache, shared by every worker and so reported once: capacity and
/// use, attaches that found every file in it (hits) or not (misses), the models whose weight
/// files it holds (bytes per checkpoint directory, most recently used first). How much of it is
/// pinned is each worker process's own (`memory.host_cache_pinned_bytes`).
fn shared_host_cache(state: &AppState, report: &SharedCacheReport) -> Value {
    let mut models: Vec<(String, u64)> = Vec::new();
    for (path, bytes) in &report.contents.files {
        let dir = path.parent().unwrap_or(path);
        let model = state.model_roots.relative(dir);
        match models.iter_mut().find(|(m, _)| *m == model) {
            Some((_, total)) => *total += bytes,
            None => models.push((model, *bytes)),
        }
    }
    json!({
        "shared": true,
        "capacity_bytes": report.contents.capacity_bytes,
        "used_bytes": report.contents.used_bytes,
        "hits": report.counts.hits,
        "misses": report.counts.misses,
        "models": models
            .into_iter()
            .map(|(model, bytes)| json!({"model": model, "bytes": bytes}))
            .collect::<Vec<_>>(),
    })
}

/// Every model a worker's memory lists (`parked`, `host_cache`) anywhere in `value`, written
/// relative to the model roots as an engine's `model` is.
fn tiers_relative(state: &AppState, value: &mut Value) {
    match value {
        Value::Object(map) => {
            let memory = map.contains_key("parked_bytes");
            for (key, value) in map.iter_mut() {
                let Value::Array(entries) = value else {
                    tiers_relative(state, value);
                    continue;
                };
                if !(memory && (key == "parked" || key == "host_cache")) {
                    entries.iter_mut().for_each(|e| tiers_relative(state, e));
                    continue;
                }
                for model in entries.iter_mut().filter_map(|e| e.get_mut("model")) {
                    if let Value::String(path) = model {
                        *path = state.model_roots.relative(std::path::Path::new(path));
                    }
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| tiers_relative(state, v)),
        _ => {}
    }
}

/// `POST /engines`: attaches a model; 201 with the engine id and the full timing report.
///
/// The attach runs to its end even when the client goes away meanwhile, so the engine it
/// makes is recorded with its keep_alive (and can be evicted) rather than left unaccounted.
pub async fn attach(
    state: web::Data<AppState>,
    body: JsonBody<AttachBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if body.model.trim().is_empty() {
        return Err(ApiError::bad_request("`model` must not be empty"));
    }
    if let Some(name) = &body.name {
        check_engine_name(name).map_err(|reason| {
            ApiError::bad_request(format!("invalid engine name `{}`: {reason}", shorten(name)))
        })?;
    }
    let configured = state.config.model(&body.model);
    let spec = match configured {
        Some(m) => ModelSpec {
            dtype: body.dtype.or(m.dtype),
            ..m.spec()
        },
        None => ModelSpec {
            model: state
                .model_roots
                .admit(&body.model)?
                .to_string_lossy()
                .into_owned(),
            dtype: body.dtype,
            canonical: true,
            park: None,
        },
    };
    let name = body
        .name
        .or_else(|| configured.map(|m| m.name().to_owned()));
    if let Some(name) = &name {
        let shadowed = state.config.model(name);
        if shadowed.is_some_and(|m| configured.is_none_or(|c| c.name() != m.name())) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "name_reserved",
                format!("`{name}` is the name of a configured model; choose another engine name"),
            ));
        }
    }
    let keep_alive = body
        .keep_alive
        .or(configured.map(|m| m.keep_alive))
        .unwrap_or(KeepAlive::Forever);
    // Wanted while this request waits: an attach still queued for a busy worker when its
    // client leaves is dropped from the queue.
    let caller = std::sync::Arc::new(());
    let attach = Attach {
        model: spec,
        worker: body.worker,
        device: body.device,
        name,
        caller: wc_actors::CallerAlive::tied_to(&caller),
    };
    let task_state = state.clone();
    let report = actix_web::rt::spawn(async move {
        task_state
            .pool
            .attach(attach, keep_alive, &task_state.metrics, false)
            .await
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| e.redacted(&state.model_roots))?;
    drop(caller);
    let mut reply = serde_json::to_value(&report).unwrap_or_else(|_| json!({}));
    reply["model"] = json!(state
        .model_roots
        .relative(std::path::Path::new(&report.model)));
    reply["keep_alive"] = json!(keep_alive.to_string());
    tiers_relative(&state, &mut reply);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/engines/{}", report.engine_id)))
        .json(reply))
}

/// At most the first 64 characters of a client's engine name, for error messages.
fn shorten(text: &str) -> std::borrow::Cow<'_, str> {
    crate::load::shorten_to(text, 64)
}

/// `GET /engines`: every attached engine with its counters.
pub async fn list_engines(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let engines = engines(&state).await?;
    let list: Vec<Value> = engines.iter().map(|e| describe(&state, e)).collect();
    Ok(HttpResponse::Ok().json(json!({ "engines": list })))
}

/// `GET /engines/{id}`: one engine, by id or name.
pub async fn get_engine(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let wanted = EngineRef::Name(path.into_inner());
    let engines = engines(&state).await?;
    match engines
        .iter()
        .find(|e| wanted.matches(e.engine_id, &e.name))
    {
        Some(e) => Ok(HttpResponse::Ok().json(describe(&state, e))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "engine_not_found",
            format!("no engine {wanted}"),
        )),
    }
}

/// `DELETE /engines/{id}`: detaches an engine after the requests already sent to it.
pub async fn detach(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let report = state
        .pool
        .detach(EngineRef::Name(path.into_inner()), &state.metrics)
        .await?;
    let mut reply = serde_json::to_value(&report).unwrap_or_else(|_| json!({}));
    tiers_relative(&state, &mut reply);
    Ok(HttpResponse::Ok().json(reply))
}

async fn engines(state: &AppState) -> Result<Vec<EngineInfo>, ApiError> {
    state
        .handle
        .list_engines()
        .await
        .map_err(|_| ApiError::shutting_down())
}

/// An engine's listing with what the server adds (keep_alive, created).
fn describe(state: &AppState, engine: &EngineInfo) -> Value {
    let meta = state.pool.meta(engine.engine_id);
    let mut value = serde_json::to_value(engine).unwrap_or_else(|_| json!({}));
    value["model"] = json!(state
        .model_roots
        .relative(std::path::Path::new(&engine.model)));
    value["keep_alive"] = json!(meta.keep_alive.to_string());
    value["created"] = json!(meta.created);
    value
}
