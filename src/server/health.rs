//! Probes and scraping: `/health` (alive), `/ready` and `/v2/health/ready`, `/metrics`.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::metrics::{Format, Live};
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
        ready: state.is_ready(),
        draining: state.is_draining(),
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
