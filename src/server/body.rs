//! JSON request bodies read within a size limit and a deadline: a client that stops sending
//! half-way through its body gets 408 instead of holding a connection (and a handler) for ever.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::state::AppState;

/// A request body parsed as JSON into `T`.
pub struct JsonBody<T>(pub T);

impl<T> JsonBody<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (limit, deadline) = match req.app_data::<web::Data<AppState>>() {
            Some(state) => (
                usize::try_from(state.config.server.max_body_bytes.0).unwrap_or(usize::MAX),
                state.config.server.client_request_timeout.0,
            ),
            None => (1 << 20, Duration::from_secs(10)),
        };
        let declared = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            if let Some(length) = declared.filter(|&l| l > limit as u64) {
                return Err(too_large(format!(
                    "the request body has {length} bytes; the limit is {limit}"
                )));
            }
            let read = async {
                let mut body = web::BytesMut::new();
                while let Some(chunk) = payload.next().await {
                    let chunk = chunk.map_err(|e| {
                        ApiError::bad_request(format!("could not read the request body: {e}"))
                    })?;
                    if body.len() + chunk.len() > limit {
                        return Err(too_large(format!(
                            "the request body is larger than the limit of {limit} bytes"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            };
            let body = tokio::time::timeout(deadline, read).await.map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the request body did not arrive within {} ms",
                        deadline.as_millis()
                    ),
                )
            })??;
            serde_json::from_slice(&body)
                .map(JsonBody)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
        })
    }
}

fn too_large(message: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
}
