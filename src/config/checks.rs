//! Checks of single `[server]` values, shared by the file, the flags and the environment: the API
//! key, the body size and the CORS origins.

use serde::{de, Deserialize, Deserializer};

use super::{ByteSize, MIN_BODY_BYTES};

/// Checks an API key from any source (file, flag, environment): blank keys, and keys with
/// characters no `Authorization` header can carry (newlines, other control characters), are
/// refused.
pub fn check_api_key(key: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err(
            "the API key is empty: give a non-empty key, or leave it unset for no auth".into(),
        );
    }
    if key.chars().any(char::is_control) {
        return Err(
            "the API key contains a control character (a newline?): no client can send it in an \
             Authorization header"
                .into(),
        );
    }
    Ok(())
}

/// Checks one CORS origin: `scheme://host[:port]`, nothing more (actix-cors would refuse it only
/// once the server runs).
pub fn check_cors_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Err(
            "cors_allow_origins = [\"*\"] is not supported: list the origins that may call \
             the API (e.g. \"https://app.example.com\")"
                .into(),
        );
    }
    let uri: actix_web::http::Uri = origin.parse().map_err(|e| {
        format!(
            "cors_allow_origins: `{}` is not an origin: {e}",
            crate::load::shorten(origin)
        )
    })?;
    // Browsers send `scheme://host[:port]`: a path (even a trailing `/`) never matches.
    let bare = !origin.ends_with('/')
        && uri
            .path_and_query()
            .is_none_or(|p| matches!(p.as_str(), "" | "/"));
    if uri.scheme().is_none() || uri.host().is_none() || !bare {
        return Err(format!(
            "cors_allow_origins: `{}` is not an origin: write `scheme://host[:port]`, e.g. \
             \"https://app.example.com\"",
            crate::load::shorten(origin)
        ));
    }
    Ok(())
}

pub(super) fn cors_origins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let origins = Vec::<String>::deserialize(d)?;
    for origin in &origins {
        check_cors_origin(origin).map_err(de::Error::custom)?;
    }
    Ok(origins)
}

pub(super) fn api_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let key = String::deserialize(d)?;
    check_api_key(&key).map_err(de::Error::custom)?;
    Ok(Some(key))
}

pub(super) fn body_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
    let size = ByteSize::deserialize(d)?;
    if size.0 < MIN_BODY_BYTES {
        return Err(de::Error::custom(format!(
            "max_body_bytes = {} is too small: at least {MIN_BODY_BYTES} (1KiB)",
            size.0
        )));
    }
    Ok(size)
}
