//! Streamed completions: OpenAI chunks as server-sent events, then `[DONE]`. The chunks' shape
//! is the endpoint's ([`Chunks`]: `text_completion` or `chat.completion.chunk`); the rest is shared.
//! With `n` > 1 every choice streams beside the others, each chunk naming its choice's index.
//!
//! The reply's status is decided before the first byte: the handler waits for the first token
//! (or the end) of the first choice, so an unknown model or a refused request is a plain JSON
//! error, not a stream. A client that goes away drops the token receivers, which stops
//! generation.

use std::convert::Infallible;
use std::time::Instant;

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use futures_util::stream::{select_all, unfold, BoxStream, StreamExt};
use tokio::sync::mpsc;
use wc_actors::{
    GenerateError, GenerateOutput, GenerateRequest, GenerateStream, TokenEvent, TokenLogprobs,
};

use serde_json::Value;

use super::completions::{record, with_engine};
use super::error::ApiError;
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

/// How a stream began: with a first token, or already finished (no token was made).
enum Start {
    Token(TokenEvent, GenerateStream),
    Finished(GenerateOutput, GenerateStream),
}

/// What one choice's stream yields.
enum Event {
    Token(usize, TokenEvent),
    Done(usize, Result<GenerateOutput, GenerateError>),
}

/// Starts generation of every request (one per choice) on `model` and answers with an event
/// stream of `chunks`' shape (or an error before any event).
pub async fn respond(
    state: web::Data<AppState>,
    model: &str,
    include_usage: bool,
    requests: Vec<GenerateRequest>,
    chunks: impl Chunks,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let handle = state.handle.clone();
    let Some(first) = requests.first().cloned() else {
        return Err(ApiError::bad_request("no choices were asked for"));
    };
    let start = with_engine(&state, model, |name| {
        let stream = handle.generate_stream(name, first.clone());
        first_event(stream)
    })
    .await?;
    // The engine is there now: the other choices join its batch.
    let others: Vec<GenerateStream> = requests[1..]
        .iter()
        .map(|r| handle.generate_stream(model.to_owned(), r.clone()))
        .collect();
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    actix_web::rt::spawn(forward(
        state,
        start,
        others,
        chunks,
        include_usage,
        started,
        tx,
    ));
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

/// One choice's tokens, then its output.
fn events(index: usize, stream: GenerateStream) -> BoxStream<'static, Event> {
    let tokens = unfold(Some(stream), move |stream| async move {
        let mut stream = stream?;
        match stream.tokens.recv().await {
            Some(token) => Some((Event::Token(index, token), Some(stream))),
            None => {
                let output = (&mut stream.output).await;
                Some((Event::Done(index, output), None))
            }
        }
    });
    tokens.boxed()
}

/// Sends every event of one request's choices into `tx`; stops (cancelling generation) when
/// the client is gone.
async fn forward(
    state: web::Data<AppState>,
    start: Start,
    others: Vec<GenerateStream>,
    chunks: impl Chunks,
    include_usage: bool,
    started: Instant,
    tx: mpsc::UnboundedSender<Bytes>,
) {
    let choices = others.len() + 1;
    for index in 0..choices {
        for chunk in chunks.opening(index) {
            if tx.send(sse::event(&chunk)).is_err() {
                return;
            }
        }
    }
    // Per choice: bytes of token text so far (for `text_offset`) and the output.
    let mut offsets = vec![0usize; choices];
    let mut outputs: Vec<Option<GenerateOutput>> = vec![None; choices];
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
    let first = match start {
        Start::Finished(output, stream) => {
            // Tokens still buffered come first; its output is already here.
            let mut stream = stream;
            let mut rest = Vec::new();
            while let Ok(token) = stream.tokens.try_recv() {
                rest.push(Event::Token(0, token));
            }
            rest.push(Event::Done(0, Ok(output)));
            futures_util::stream::iter(rest).boxed()
        }
        Start::Token(token, stream) => {
            if !send_token(0, &token) {
                return;
            }
            events(0, stream)
        }
    };
    let streams = std::iter::once(first).chain(
        others
            .into_iter()
            .enumerate()
            .map(|(i, stream)| events(i + 1, stream)),
    );
    let mut merged = select_all(streams);
    while let Some(event) = merged.next().await {
        match event {
            Event::Token(index, token) => {
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
                tracing::warn!(model = %chunks.model(), error = %error, "streamed completion failed");
                state.metrics.error(error.kind);
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
    for output in &outputs {
        record(&state, chunks.model(), output, started);
    }
    let _ = tx.send(sse::done());
}
