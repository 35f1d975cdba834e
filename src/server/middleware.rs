//! Middleware around every route: the API key check, and counting requests and errors.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, Error, ResponseError};

use super::auth::Scope;
use super::error::ErrorKindTag;
use super::state::AppState;

/// Which key scope a path is in, if any.
fn scope_of(path: &str) -> Option<Scope> {
    let under = |prefix: &str| {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if under("/workers") || under("/engines") {
        Some(Scope::Control)
    } else if under("/v1") {
        Some(Scope::Inference)
    } else {
        None
    }
}

/// Answers 401 before the handler (and before its body is read) when the key is required and
/// missing or wrong.
pub async fn require_key(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let denied = match (req.app_data::<web::Data<AppState>>(), scope_of(req.path())) {
        (Some(state), Some(scope)) => state.api_key.check(req.request(), scope).err(),
        _ => None,
    };
    match denied {
        Some(error) => Ok(req
            .into_response(error.error_response())
            .map_into_right_body()),
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
    }
}

/// Counts every answered request by route and status, and every error by type.
pub async fn count(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let res = next.call(req).await?;
    if let Some(state) = state {
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        state.metrics.http_request(&route, res.status().as_u16());
        if let Some(ErrorKindTag(kind)) = res.response().extensions().get::<ErrorKindTag>() {
            state.metrics.error(kind);
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_inference_paths_are_told_apart() {
        assert_eq!(scope_of("/engines"), Some(Scope::Control));
        assert_eq!(scope_of("/engines/3"), Some(Scope::Control));
        assert_eq!(scope_of("/workers"), Some(Scope::Control));
        assert_eq!(scope_of("/v1/completions"), Some(Scope::Inference));
        assert_eq!(scope_of("/enginesx"), None);
        assert_eq!(scope_of("/health"), None);
        assert_eq!(scope_of("/metrics"), None);
    }
}
