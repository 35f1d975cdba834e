//! `GET /version`: the server's version and the commit it was built from (`build.rs` records
//! `git describe --always --dirty`; `unknown` outside a git checkout), as vLLM's `/version`
//! answers `{"version": ...}`.

use actix_web::HttpResponse;
use serde_json::{json, Value};

/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `git describe --always --dirty` of the build, or `unknown`.
pub const COMMIT: &str = env!("WC_GIT_DESCRIBE");

/// The `/version` body.
pub fn body() -> Value {
    json!({"version": VERSION, "commit": COMMIT})
}

/// `GET /version` (open, like `/health`).
pub async fn version() -> HttpResponse {
    HttpResponse::Ok().json(body())
}
