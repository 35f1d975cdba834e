//! Streamed completions: OpenAI chunks as server-sent events, then `[DONE]`. The chunks' shape
//! is the endpoint's ([`Chunks`]: `text_completion` or `chat.completion.chunk`); the rest is shared.
//! With `n` > 1 or several prompts every choice streams beside the others, each chunk naming its
//! choice's index.
//!
//! The reply's status is decided before the first byte: the handler waits for the first token
//! (or the end) of the first choice, so an unknown model or a refused request is a plain JSON
//! error, not a stream. A client that goes away drops the token receivers, which stops
//! generation.

use std::convert::Infallible;

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use futures_util::stream::{unfold, StreamExt};
use tokio::sync::mpsc;
use wc_actors::{GenerateOutput, GenerateRequest, TokenEvent, TokenLogprobs};

use serde_json::Value;

use super::error::ApiError;
use super::generation::{self, ChoiceStreams, Event};
use super::metrics::Trace;
use super::openai::finish_reason;
use super::sse;
use super::state::AppState;

/// How one endpoint writes its stream's chunks.
pub trait Chunks: Send + 'static {
    /// The model name, for metrics and logs.
    fn model(&self) -> &str;
    /// Chunks sent before choice `index`'s first text (a chat's announces the role).
    fn opening(&self, _index: usize) -> Vec<Value> {
        Vec::new()
    }
    /// A chunk of choice `index` adding `text`, with the token's logprobs when asked for and
    /// the byte offset of the token in the choice's text.
    fn text(&self, index: usize, text: &str, logprobs: Option<(&TokenLogprobs, usize)>) -> Value;
    /// The chunk saying why choice `index` ended.
    fn finish(&self, index: usize, reason: &str) -> Value;
    /// The last chunk when usage was asked for: no choices, only counts.
    fn usage(&self, outputs: &[GenerateOutput]) -> Value;
}

/// Starts generation of every request (one per choice, `per_prompt` for each prompt, prompt by
/// prompt: choice `i * per_prompt + j` is prompt `i`'s `j`th) on the trace's model and answers
/// with an event stream of `chunks`' shape (or an error before any event).
pub async fn respond(
    state: web::Data<AppState>,
    trace: Trace,
    include_usage: bool,
    (requests, per_prompt): (Vec<GenerateRequest>, usize),
    chunks: impl Chunks,
) -> Result<HttpResponse, ApiError> {
    let choices = generation::start(&state, &trace, requests, per_prompt).await?;
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    actix_web::rt::spawn(forward(state, choices, chunks, include_usage, trace, tx));
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

/// Sends every event of one request's choices into `tx`; stops (cancelling generation) when
/// the client is gone.
async fn forward(
    state: web::Data<AppState>,
    mut choices: ChoiceStreams,
    chunks: impl Chunks,
    include_usage: bool,
    mut trace: Trace,
    tx: mpsc::UnboundedSender<Bytes>,
) {
    let (count, per_prompt) = (choices.count, choices.per_prompt);
    for index in 0..count {
        for chunk in chunks.opening(index) {
            if tx.send(sse::event(&chunk)).is_err() {
                return;
            }
        }
    }
    // Per choice: bytes of token text so far (for `text_offset`) and the output.
    let mut offsets = vec![0usize; count];
    let mut outputs: Vec<Option<GenerateOutput>> = vec![None; count];
    let mut send_token = |index: usize, token: &TokenEvent| {
        let logprobs = token.logprobs.as_ref().map(|l| (l, offsets[index]));
        if let Some(l) = &token.logprobs {
            offsets[index] += l.token.len();
        }
        if token.text.is_empty() && logprobs.is_none() {
            return true;
        }
        tx.send(sse::event(&chunks.text(index, &token.text, logprobs)))
            .is_ok()
    };
    while let Some(event) = choices.events.next().await {
        match event {
            Event::Token(index, token) => {
                trace.token();
                if !send_token(index, &token) {
                    return;
                }
            }
            Event::Done(index, Ok(output)) => {
                let finish = finish_reason(output.finish_reason);
                let _ = tx.send(sse::event(&chunks.finish(index, finish)));
                outputs[index] = Some(output);
            }
            Event::Done(_, Err(error)) => {
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
                let _ = tx.send(sse::done());
                return;
            }
        }
    }
    let outputs: Vec<GenerateOutput> = outputs.into_iter().flatten().collect();
    if include_usage {
        let _ = tx.send(sse::event(&chunks.usage(&outputs)));
    }
    if !outputs.is_empty() {
        trace.finish(&generation::combined(&outputs, per_prompt));
    }
    let _ = tx.send(sse::done());
}
