//! Streamed completions: OpenAI `text_completion` chunks as server-sent events, then `[DONE]`.
//!
//! The reply's status is decided before the first byte: the handler waits for the first token
//! (or the end), so an unknown model or a refused request is a plain JSON error, not a stream.
//! A client that goes away drops the token receiver, which stops generation.

use std::convert::Infallible;
use std::time::Instant;

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use futures_util::stream::unfold;
use tokio::sync::mpsc;
use wc_actors::{GenerateError, GenerateOutput, GenerateRequest, GenerateStream, TokenEvent};

use super::completions::{record, with_engine};
use super::error::ApiError;
use super::openai::{finish_reason, CompletionMeta, CompletionRequest};
use super::sse;
use super::state::AppState;

/// How a stream began: with a first token, or already finished (no token was made).
enum Start {
    Token(TokenEvent, GenerateStream),
    Finished(GenerateOutput, GenerateStream),
}

/// Starts generation and answers with an event stream (or an error before any event).
pub async fn respond(
    state: web::Data<AppState>,
    body: &CompletionRequest,
    request: GenerateRequest,
    meta: CompletionMeta,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let handle = state.handle.clone();
    let start = with_engine(&state, &body.model, |name| {
        let stream = handle.generate_stream(name, request.clone());
        first_event(stream)
    })
    .await?;
    let include_usage = body.include_usage();
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    actix_web::rt::spawn(forward(state, start, meta, include_usage, started, tx));
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

/// Waits for the first token or the end of generation, whichever comes first.
async fn first_event(mut stream: GenerateStream) -> Result<Start, GenerateError> {
    tokio::select! {
        token = stream.tokens.recv() => match token {
            Some(token) => Ok(Start::Token(token, stream)),
            None => {
                let output = (&mut stream.output).await?;
                Ok(Start::Finished(output, stream))
            }
        },
        output = &mut stream.output => Ok(Start::Finished(output?, stream)),
    }
}

/// Sends every event of one completion into `tx`; stops (cancelling generation) when the
/// client is gone.
async fn forward(
    state: web::Data<AppState>,
    start: Start,
    meta: CompletionMeta,
    include_usage: bool,
    started: Instant,
    tx: mpsc::UnboundedSender<Bytes>,
) {
    let send_text = |text: &str| {
        if text.is_empty() {
            return true;
        }
        tx.send(sse::event(&meta.chunk(text, None))).is_ok()
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
            let _ = tx.send(sse::event(&meta.chunk("", Some(finish))));
            if include_usage {
                let _ = tx.send(sse::event(&meta.usage_chunk(&output)));
            }
            record(&state, &meta.model, &output, started);
        }
        Err(error) => {
            let error = ApiError::from(error);
            tracing::warn!(model = %meta.model, error = %error, "streamed completion failed");
            state.metrics.error(error.kind);
            let _ = tx.send(sse::event(&error.body()));
        }
    }
    let _ = tx.send(sse::done());
}
