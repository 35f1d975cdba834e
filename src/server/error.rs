//! API errors: one JSON shape (`{"error": {"message", "type", "code"}}`) with the right status.

use std::fmt;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use wc_actors::{AttachError, DetachError, GenerateError};

/// The most characters of an error message a reply carries.
pub const MAX_MESSAGE_CHARS: usize = 2048;

/// A failed request: the status, a stable snake_case type, and a message for people.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable name of the failure (`engine_not_found`, `no_free_worker`, ...), also a metric label.
    pub kind: &'static str,
    pub message: String,
    /// Seconds a client should wait before retrying (sent as `Retry-After`).
    pub retry_after: Option<u64>,
    /// Sent as `WWW-Authenticate` (on 401).
    pub challenge: Option<&'static str>,
}

/// Put on error responses so the metrics middleware can count errors by type.
#[derive(Clone, Copy, Debug)]
pub struct ErrorKindTag(pub &'static str);

impl ApiError {
    /// The message is cut to [`MAX_MESSAGE_CHARS`]: whatever it quotes, a reply stays small.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        let message: String = message.into();
        Self {
            status,
            kind,
            message: crate::load::shorten_to(&message, MAX_MESSAGE_CHARS).into_owned(),
            retry_after: None,
            challenge: None,
        }
    }

    /// 400: a parameter is missing or out of range.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401: the bearer token is missing or wrong.
    pub fn unauthorized() -> Self {
        Self {
            challenge: Some("Bearer realm=\"worker-controller\""),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid API key: send `Authorization: Bearer <key>`",
            )
        }
    }

    /// 404: no such model (neither attached nor configured).
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "the model `{}` is neither attached nor configured",
                crate::load::shorten(model)
            ),
        )
    }

    /// 404: an unknown route.
    pub fn route_not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for `{}`", crate::load::shorten(path)),
        )
    }

    /// 503: the server is draining for shutdown.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
    }

    /// The same error with absolute server paths written relative to the model roots.
    pub fn redacted(mut self, roots: &super::model_access::ModelRoots) -> Self {
        self.message = roots.redact(&self.message);
        self
    }

    /// Adds a `Retry-After` header.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "code": self.status.as_u16(),
            }
        })
    }

    fn from_status(status: u16, kind: &'static str, message: String) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error = Self::new(status, kind, message);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            error.retry_after(1)
        } else {
            error
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        if let Some(challenge) = self.challenge {
            response.insert_header((header::WWW_AUTHENTICATE, challenge));
        }
        let mut response = response.json(self.body());
        response.extensions_mut().insert(ErrorKindTag(self.kind));
        response
    }
}

impl From<AttachError> for ApiError {
    fn from(e: AttachError) -> Self {
        Self::from_status(e.status_code(), e.error_type(), e.to_string())
    }
}

impl From<DetachError> for ApiError {
    fn from(e: DetachError) -> Self {
        Self::from_status(e.status_code(), e.error_type(), e.to_string())
    }
}

impl From<GenerateError> for ApiError {
    fn from(e: GenerateError) -> Self {
        Self::from_status(e.status_code(), e.error_type(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_free_worker_is_503_with_retry_after() {
        let e = ApiError::from(AttachError::NoFreeWorker { waited_ms: 10 });
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(1));
        let body = e.body();
        assert_eq!(body["error"]["type"], "no_free_worker");
        assert_eq!(body["error"]["code"], 503);
    }
}
