//! Middleware around every route: request ids and the access log, the request guard (Host, API
//! key, content type) and counting.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage, ResponseError};

use super::access::{client_request_id, new_request_id, RequestContext, REQUEST_ID_HEADER};
use super::error::{ApiError, ErrorKindTag};
use super::routes::{access_of, Access};
use super::state::AppState;

/// Outermost: gives every request an id (the client's `x-request-id` when sane, else a fresh
/// one), makes its [`RequestContext`] available to handlers, echoes the id in `x-request-id` on
/// every reply (error replies too: handlers, extractors and the guard answer errors as replies),
/// and notes the status and error type for the access line. Successful probes and scrapes (the
/// public endpoints) log at `debug`, everything else at `info`.
pub async fn identify(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = client_request_id(req.headers()).unwrap_or_else(new_request_id);
    let access = RequestContext::new(id, req.method().as_str(), req.path());
    req.extensions_mut().insert(access.clone());
    let mut res = next.call(req).await?;
    let status = res.status();
    let error = res
        .response()
        .extensions()
        .get::<ErrorKindTag>()
        .map(|tag| tag.0);
    let public = access_of(res.request().match_info().as_str()) == Access::Public;
    access.note(|f| {
        f.status = Some(status.as_u16());
        if error.is_some() {
            f.error = error;
        }
        f.quiet = public && status.is_success();
    });
    if let Ok(value) = HeaderValue::from_str(access.id()) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    Ok(res)
}

/// Refuses, before any handler runs or any body is read: a `Host` the server does not answer
/// to (403), a missing or wrong key for the endpoint's access class (401), and a request body
/// that is not JSON or is compressed (415). The path checked is the one the router matches, after its
/// percent-decoding and our slash normalisation, so `/%65ngines` is `/engines` here too.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let refused = match req.app_data::<web::Data<AppState>>() {
        Some(state) => check(&req, state).err(),
        None => Some(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server state is missing",
        )),
    };
    match refused {
        Some(error) => Ok(req
            .into_response(error.error_response())
            .map_into_right_body()),
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
    }
}

fn check(req: &ServiceRequest, state: &AppState) -> Result<(), ApiError> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !state.hosts.allows(host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            "this server does not answer to that Host (see [server] allowed_hosts)",
        ));
    }
    let access = access_of(req.match_info().as_str());
    state.api_key.check(req.headers(), access)?;
    if [Method::POST, Method::PUT, Method::PATCH].contains(req.method()) && !is_json(req) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request bodies must be JSON: send `Content-Type: application/json`",
        ));
    }
    if is_encoded(req) {
        // The server decodes no body encoding: a gzip body would be read as its raw bytes.
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request bodies must not be compressed: send them without `Content-Encoding`",
        ));
    }
    Ok(())
}

/// Whether the body comes with a `Content-Encoding` other than `identity`.
fn is_encoded(req: &ServiceRequest) -> bool {
    req.headers()
        .get_all(header::CONTENT_ENCODING)
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

fn is_json(req: &ServiceRequest) -> bool {
    matches!(req.mime_type(), Ok(Some(mime)) if mime.essence_str() == "application/json")
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
