//! Streamed completions: OpenAI chunks as server-sent events, then `[DONE]`. The chunks' shape
//! is the endpoint's ([`Chunks`]: `text_completion` or `chat.completion.chunk`); the rest is shared.
//!
//! The reply's status is decided before the first byte: the handler waits for the first token
//! (or the end), so an unknown model or a refused request is a plain JSON error, not a stream.
//! A client that goes away drops the token receiver, which stops generation.

use std::convert::Infallible;

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use futures_util::stream::unfold;
use tokio::sync::mpsc;
use wc_actors::{GenerateOutput, GenerateRequest};

use serde_json::Value;

use super::error::ApiError;
use super::generation::{self, Start};
use super::metrics::Trace;
use super::openai::{finish_reason, CompletionMeta};
use super::sse;
use super::state::AppState;

/// How one endpoint writes its stream's chunks.
pub trait Chunks: Send + 'static {
    /// The model name.
    fn model(&self) -> &str;
    /// Chunks sent before the first text (a chat's announces the role).
    fn opening(&self) -> Vec<Value> {
        Vec::new()
    }
    /// A chunk adding `text`.
    fn text(&self, text: &str) -> Value;
    /// The chunk saying why generation ended.
    fn finish(&self, reason: &str) -> Value;
    /// The last chunk when usage was asked for: no choices, only counts.
    fn usage(&self, output: &GenerateOutput) -> Value;
}

impl Chunks for CompletionMeta {
    fn model(&self) -> &str {
        &self.model
    }
    fn text(&self, text: &str) -> Value {
        self.chunk(text, None)
    }
    fn finish(&self, reason: &str) -> Value {
        self.chunk("", Some(reason))
    }
    fn usage(&self, output: &GenerateOutput) -> Value {
        self.usage_chunk(output)
    }
}

/// Starts generation on the trace's model and answers with an event stream of `chunks`' shape
/// (or an error before any event).
pub async fn respond(
    state: web::Data<AppState>,
    mut trace: Trace,
    include_usage: bool,
    request: GenerateRequest,
    chunks: impl Chunks,
) -> Result<HttpResponse, ApiError> {
    let start = generation::start(&state, &mut trace, request).await?;
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    actix_web::rt::spawn(forward(state, start, chunks, include_usage, trace, tx));
    let body = unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), rx))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// Sends every event of one completion into `tx`; stops (cancelling generation) when the
/// client is gone.
async fn forward(
    state: web::Data<AppState>,
    start: Start,
    chunks: impl Chunks,
    include_usage: bool,
    mut trace: Trace,
    tx: mpsc::UnboundedSender<Bytes>,
) {
    for chunk in chunks.opening() {
        if tx.send(sse::event(&chunk)).is_err() {
            return;
        }
    }
    let send_text = |text: &str| {
        if text.is_empty() {
            return true;
        }
        tx.send(sse::event(&chunks.text(text))).is_ok()
    };
    let (finished, mut stream) = match start {
        Start::Finished(output, stream) => (Some(output), stream),
        Start::Token(first, stream) => {
            if !send_text(&first.text) {
                return;
            }
            (None, stream)
        }
    };
    // Every token up to the end of generation (when it finished already, those still buffered:
    // the sender is dropped with the request, which closes the channel).
    while let Some(token) = stream.tokens.recv().await {
        trace.token();
        if !send_text(&token.text) {
            return;
        }
    }
    let output = match finished {
        Some(output) => Ok(output),
        None => (&mut stream.output).await,
    };
    match output {
        Ok(output) => {
            let finish = finish_reason(output.finish_reason);
            let _ = tx.send(sse::event(&chunks.finish(finish)));
            if include_usage {
                let _ = tx.send(sse::event(&chunks.usage(&output)));
            }
            trace.finish(&output);
        }
        Err(error) => {
            let error = ApiError::from(error);
            tracing::warn!(
                request_id = %trace.access().id(),
                model = %trace.model(),
                error = %error,
                "streamed completion failed"
            );
            state.metrics.error(error.kind);
            trace.access().note(|f| f.error = Some(error.kind));
            let _ = tx.send(sse::event(&error.body()));
        }
    }
    let _ = tx.send(sse::done());
}
