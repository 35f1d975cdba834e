//! The API key: which access classes it guards, and the bearer-token check itself.

use actix_web::http::header::{self, HeaderMap};

use super::error::ApiError;
use super::routes::Access;

/// The configured key and where it applies.
#[derive(Clone, Debug, Default)]
pub struct ApiKey {
    /// `None`: no key configured, everything is open.
    pub key: Option<String>,
    /// Leave the inference endpoints open even with a key (an explicit opt-out).
    pub open_inference: bool,
}

impl ApiKey {
    /// Whether a request to an endpoint of this class needs the key.
    pub fn required_for(&self, access: Access) -> bool {
        match access {
            Access::Public => false,
            Access::Inference => self.key.is_some() && !self.open_inference,
            Access::Control => self.key.is_some(),
        }
    }

    /// `Ok` when the request may go on; 401 (with `WWW-Authenticate`) when the key is required
    /// and missing or wrong.
    pub fn check(&self, headers: &HeaderMap, access: Access) -> Result<(), ApiError> {
        let Some(key) = self.key.as_deref().filter(|_| self.required_for(access)) else {
            return Ok(());
        };
        match bearer_token(headers) {
            Some(token) if constant_time_eq(token.as_bytes(), key.as_bytes()) => Ok(()),
            _ => Err(ApiError::unauthorized()),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(char::is_whitespace)?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Compares in time that depends only on the key's length, not on where the bytes differ or
/// on the guess's length.
fn constant_time_eq(given: &[u8], key: &[u8]) -> bool {
    let mut diff = (given.len() != key.len()) as u8;
    for (i, k) in key.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!k);
        diff |= g ^ k;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_key_guards_control_and_inference_unless_inference_is_opened() {
        let key = ApiKey {
            key: Some("s3cret".into()),
            open_inference: false,
        };
        let none = HeaderMap::new();
        for access in [Access::Control, Access::Inference] {
            assert!(key.check(&none, access).is_err());
            assert!(key.check(&with_auth("Bearer nope"), access).is_err());
            assert!(key.check(&with_auth("Bearer s3cret"), access).is_ok());
            assert!(key.check(&with_auth("bearer s3cret"), access).is_ok());
            assert!(key.check(&with_auth("BEARER   s3cret "), access).is_ok());
            assert!(key.check(&with_auth("Basic s3cret"), access).is_err());
            assert!(key.check(&with_auth("Bearer s3cre"), access).is_err());
            assert!(key.check(&with_auth("Bearer s3cretX"), access).is_err());
            assert!(key.check(&with_auth("s3cret"), access).is_err());
        }
        assert!(key.check(&none, Access::Public).is_ok());
        let open = ApiKey {
            open_inference: true,
            ..key
        };
        assert!(open.check(&none, Access::Inference).is_ok());
        assert!(open.check(&none, Access::Control).is_err());
        assert!(ApiKey::default().check(&none, Access::Control).is_ok());
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}
