//! Probes and scraping: `/health` (alive), `/ready` and `/v2/health/ready`, `/metrics`.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use wc_actors::{WorkerInfo, WorkerState};

use super::error::ApiError;
use super::metrics::{Format, HostCacheSeries, Live};
use super::state::AppState;

/// `GET /health`: the process is up and the runtime answers.
pub async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let stats = state
        .handle
        .stats()
        .await
        .map_err(|_| ApiError::shutting_down())?;
    Ok(HttpResponse::Ok().json(json!({
        "status": "ok",
        "workers": stats.workers,
        "engines": stats.engines,
    })))
}

/// `GET /ready`: workers are prewarmed, at least `[server] min_ready_workers` of them can serve
/// (not failed, restarting or warming) and the server is not draining; 503 otherwise.
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.is_draining() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the server is shutting down",
        ));
    }
    if !state.is_ready() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "workers are still prewarming",
        ));
    }
    let workers = state
        .handle
        .list_workers()
        .await
        .map_err(|_| ApiError::shutting_down())?;
    let (serving, needed) = (serving(&workers), state.config.server.min_ready_workers);
    if serving < needed {
        let failed = workers
            .iter()
            .filter(|w| w.state == WorkerState::Failed)
            .count();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_worker_ready",
            format!(
                "{serving} of {} workers can serve ({failed} failed for good), fewer than the \
                 {needed} needed ([server] min_ready_workers)",
                workers.len()
            ),
        ));
    }
    Ok(HttpResponse::Ok().json(json!({ "status": "ready", "workers_ready": serving })))
}

/// How many of `workers` take attaches or serve requests now.
fn serving(workers: &[WorkerInfo]) -> usize {
    let can_serve = |state| {
        matches!(
            state,
            WorkerState::Idle
                | WorkerState::Attaching
                | WorkerState::Serving
                | WorkerState::Detaching
        )
    };
    workers.iter().filter(|w| can_serve(w.state)).count()
}

/// `GET /metrics`: OpenMetrics when the scraper's `Accept` asks for it, else Prometheus text.
pub async fn metrics(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok());
    let format = Format::from_accept(accept);
    let unavailable = |_| ApiError::shutting_down();
    let stats = state.handle.stats().await.map_err(unavailable)?;
    let workers = state.handle.list_workers().await.map_err(unavailable)?;
    let engines = state.handle.list_engines().await.map_err(unavailable)?;
    let live = Live {
        stats: &stats,
        workers: &workers,
        engines: &engines,
        // As `/ready` says.
        ready: state.is_ready() && serving(&workers) >= state.config.server.min_ready_workers,
        draining: state.is_draining(),
        host_cache: state.host_cache.as_ref().map(|cache| HostCacheSeries {
            report: cache.report(),
            pinned: workers
                .iter()
                .map(|w| {
                    (
                        w.worker,
                        w.memory.as_ref().map_or(0, |m| m.host_cache_pinned_bytes),
                    )
                })
                .collect(),
        }),
    };
    let text = state.metrics.render(&live, format).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the metrics could not be written",
        )
    })?;
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .body(text))
}
