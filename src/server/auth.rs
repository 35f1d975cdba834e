//! Bearer-token checks for the control endpoints (and, when configured, the inference ones).

use actix_web::http::header;
use actix_web::HttpRequest;

use super::error::ApiError;

/// Which endpoints a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `/workers`, `/engines`: always behind the key when one is configured.
    Control,
    /// `/v1/...`: behind the key only when `api_key_for_inference` is set.
    Inference,
}

/// The configured key and where it applies.
#[derive(Clone, Debug, Default)]
pub struct ApiKey {
    pub key: Option<String>,
    pub for_inference: bool,
}

impl ApiKey {
    /// `Ok` when the request may go on; 401 when the key is required and missing or wrong.
    pub fn check(&self, req: &HttpRequest, scope: Scope) -> Result<(), ApiError> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        if scope == Scope::Inference && !self.for_inference {
            return Ok(());
        }
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(token) if constant_time_eq(token.as_bytes(), key.as_bytes()) => Ok(()),
            _ => Err(ApiError::unauthorized()),
        }
    }
}

/// Compares without stopping at the first difference, so timing does not leak the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn control_needs_the_key_inference_only_when_asked() {
        let key = ApiKey {
            key: Some("s3cret".into()),
            for_inference: false,
        };
        let none = TestRequest::default().to_http_request();
        let wrong = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Bearer nope"))
            .to_http_request();
        let right = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Bearer s3cret"))
            .to_http_request();
        assert!(key.check(&none, Scope::Control).is_err());
        assert!(key.check(&wrong, Scope::Control).is_err());
        assert!(key.check(&right, Scope::Control).is_ok());
        assert!(key.check(&none, Scope::Inference).is_ok());
        assert!(ApiKey::default().check(&none, Scope::Control).is_ok());
    }
}
