//! Request ids and the access log: each request's id (the client's `x-request-id` when sane, else
//! a fresh one) and the one structured line written when its last part is done.
//!
//! A [`RequestContext`] is made by [`super::middleware::identify`] for every request and shared by
//! the handler and, for a stream, the task that forwards its tokens. The line is written when the
//! last holder lets go, so a streamed completion's line carries its token counts and whole time.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix_web::http::header::HeaderMap;

use crate::load::shorten;

/// The header a request id travels in, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest client-sent request id honoured; a longer one is replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The `tracing` target of access lines (`RUST_LOG=access=off` silences them).
pub const ACCESS_TARGET: &str = "access";

/// The client's request id when it is 1 to [`MAX_REQUEST_ID_LEN`] visible ASCII characters
/// (no spaces, no control characters); `None` otherwise, and a fresh id is made instead.
pub fn client_request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(REQUEST_ID_HEADER)?.as_bytes();
    let sane = !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LEN
        && value.iter().all(|b| b.is_ascii_graphic());
    sane.then(|| String::from_utf8_lossy(value).into_owned())
}

/// A fresh request id: 32 random hex digits.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// One request: its id, and what its access line will say.
#[derive(Clone, Debug)]
pub struct RequestContext {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    id: String,
    method: String,
    path: String,
    started: Instant,
    /// Filled in by whoever learns it; read once, when the line is written.
    facts: Mutex<Facts>,
}

/// What the access line says beyond the request line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    pub status: Option<u16>,
    /// The error type answered (in the reply or inside a stream).
    pub error: Option<&'static str>,
    pub model: Option<String>,
    pub prompt_tokens: Option<usize>,
    pub completion_tokens: Option<usize>,
    /// Milliseconds before the engine started on it (waiting for an attach or a turn).
    pub queue_ms: Option<f64>,
    /// Milliseconds to the first generated token.
    pub ttft_ms: Option<f64>,
    /// Whether the line is written at `debug` (probes and scrapes that succeeded) not `info`.
    pub quiet: bool,
}

impl RequestContext {
    pub fn new(id: String, method: &str, path: &str) -> Self {
        Self {
            shared: Arc::new(Shared {
                id,
                method: method.to_owned(),
                path: path.to_owned(),
                started: Instant::now(),
                facts: Mutex::default(),
            }),
        }
    }

    /// The request id, as echoed in `x-request-id`.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Records something for the access line.
    pub fn note(&self, f: impl FnOnce(&mut Facts)) {
        let mut facts = self.shared.facts.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut facts);
    }

    /// What is known so far.
    pub fn facts(&self) -> Facts {
        let mut facts = Facts::default();
        self.note(|f| facts = f.clone());
        facts
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let f = self.facts.get_mut().unwrap_or_else(|p| p.into_inner());
        let total_ms = self.started.elapsed().as_secs_f64() * 1e3;
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: ACCESS_TARGET,
                    request_id = %self.id,
                    method = %shorten(&self.method),
                    path = %shorten(&self.path),
                    status = f.status,
                    error = f.error,
                    model = f.model.as_deref().map(shorten).as_deref(),
                    prompt_tokens = f.prompt_tokens,
                    completion_tokens = f.completion_tokens,
                    queue_ms = f.queue_ms.map(round_ms),
                    ttft_ms = f.ttft_ms.map(round_ms),
                    total_ms = round_ms(total_ms),
                    "request"
                )
            };
        }
        if f.quiet {
            line!(debug);
        } else {
            line!(info);
        }
    }
}

/// Milliseconds to two decimals, for a readable line.
fn round_ms(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(value: &[u8]) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            HeaderName::from_static(REQUEST_ID_HEADER),
            HeaderValue::from_bytes(value).unwrap(),
        );
        map
    }

    #[test]
    fn sane_client_ids_are_honoured_and_others_replaced() {
        assert_eq!(
            client_request_id(&headers(b"abc-123_X.y:z")).as_deref(),
            Some("abc-123_X.y:z")
        );
        let longest = "a".repeat(MAX_REQUEST_ID_LEN);
        assert_eq!(
            client_request_id(&headers(longest.as_bytes())),
            Some(longest.clone())
        );
        for bad in [
            format!("{longest}a").into_bytes(),
            b"has space".to_vec(),
            b"tab\there".to_vec(),
            "caf\u{e9}".as_bytes().to_vec(),
            Vec::new(),
        ] {
            assert_eq!(client_request_id(&headers(&bad)), None, "{bad:?}");
        }
        assert_eq!(client_request_id(&HeaderMap::new()), None);
    }

    #[test]
    fn fresh_ids_are_distinct_hex() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn every_holder_sees_the_facts_noted_by_another() {
        let ctx = RequestContext::new("r1".into(), "POST", "/v1/completions");
        let handler = ctx.clone();
        handler.note(|f| {
            f.model = Some("m".into());
            f.completion_tokens = Some(3);
        });
        ctx.note(|f| f.status = Some(200));
        let facts = ctx.facts();
        assert_eq!(
            (
                facts.model.as_deref(),
                facts.completion_tokens,
                facts.status
            ),
            (Some("m"), Some(3), Some(200))
        );
        assert_eq!(handler.id(), "r1");
    }
}
