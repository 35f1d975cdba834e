//! Probes and scraping: `/health` (alive), `/ready` and `/v2/health/ready`, `/metrics`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::metrics::Live;
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

/// `GET /ready`: workers are prewarmed and the server is not draining; 503 otherwise.
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
    Ok(HttpResponse::Ok().json(json!({ "status": "ready" })))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let unavailable = |_| ApiError::shutting_down();
    let stats = state.handle.stats().await.map_err(unavailable)?;
    let workers = state.handle.list_workers().await.map_err(unavailable)?;
    let engines = state.handle.list_engines().await.map_err(unavailable)?;
    let text = state.metrics.render(&Live {
        stats: &stats,
        workers: &workers,
        engines: &engines,
        ready: state.is_ready(),
        draining: state.is_draining(),
    });
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}
