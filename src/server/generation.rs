//! Running one request's generations for a completion endpoint, plain or streamed: the engine
//! found (or attached on demand), the first choice's first event awaited, then every choice's
//! tokens as they come (the other choices join the engine's batch), each seen by the request's
//! [`Trace`].

use futures_util::stream::{self, select_all, unfold, BoxStream, StreamExt};
use wc_actors::{GenerateError, GenerateOutput, GenerateRequest, GenerateStream, TokenEvent};

use super::completions::with_engine;
use super::error::ApiError;
use super::metrics::Trace;
use super::state::AppState;

/// How the first choice began: with a first token, or already finished (no token was made).
enum Start {
    Token(TokenEvent, GenerateStream),
    Finished(GenerateOutput, GenerateStream),
}

/// What one choice's stream yields.
pub enum Event {
    Token(usize, TokenEvent),
    Done(usize, Result<GenerateOutput, GenerateError>),
}

/// Every choice of one request, their events merged in the order they come.
pub struct ChoiceStreams {
    pub count: usize,
    /// Choices a prompt (they come prompt by prompt).
    pub per_prompt: usize,
    pub events: BoxStream<'static, Event>,
}

/// Starts every request (one per choice, `per_prompt` for each prompt, prompt by prompt) on the
/// trace's model and waits for the first choice's first event, so that an unknown model or a
/// refused request is an error before any reply is sent. The other choices start once the
/// engine is there and join its batch.
pub async fn start(
    state: &AppState,
    trace: &Trace,
    requests: Vec<GenerateRequest>,
    per_prompt: usize,
) -> Result<ChoiceStreams, ApiError> {
    let count = requests.len();
    let mut requests = requests.into_iter();
    let Some(first) = requests.next() else {
        return Err(ApiError::bad_request("no choices were asked for"));
    };
    let handle = state.handle.clone();
    let model = trace.model().to_owned();
    let start = with_engine(state, &model, |name| {
        first_event(handle.generate_stream(name, first.clone()))
    })
    .await?;
    let first = match start {
        Start::Token(token, stream) => stream::iter([Event::Token(0, token)])
            .chain(events(0, stream))
            .boxed(),
        Start::Finished(output, mut stream) => {
            // Tokens still buffered come first; its output is already here.
            let mut rest = Vec::new();
            while let Ok(token) = stream.tokens.try_recv() {
                rest.push(Event::Token(0, token));
            }
            rest.push(Event::Done(0, Ok(output)));
            stream::iter(rest).boxed()
        }
    };
    let others = requests
        .enumerate()
        .map(|(i, request)| events(i + 1, handle.generate_stream(model.clone(), request)));
    Ok(ChoiceStreams {
        count,
        per_prompt,
        events: select_all(std::iter::once(first).chain(others)).boxed(),
    })
}

/// Generates every choice to the end (a non-streamed reply), counting every token as it comes,
/// and records the finished request; the outputs in choice order.
pub async fn complete(
    state: &AppState,
    mut trace: Trace,
    requests: Vec<GenerateRequest>,
    per_prompt: usize,
) -> Result<Vec<GenerateOutput>, ApiError> {
    let mut choices = start(state, &trace, requests, per_prompt).await?;
    let mut outputs: Vec<Option<GenerateOutput>> = vec![None; choices.count];
    while let Some(event) = choices.events.next().await {
        match event {
            Event::Token(..) => trace.token(),
            Event::Done(index, output) => outputs[index] = Some(output?),
        }
    }
    let outputs: Vec<GenerateOutput> = outputs.into_iter().flatten().collect();
    trace.finish(&combined(&outputs, per_prompt));
    Ok(outputs)
}

/// One output standing for every choice of a request in its metrics and access line: the first
/// choice's, with every prompt's ids once (`per_prompt` choices a prompt) and every choice's
/// new tokens.
pub fn combined(outputs: &[GenerateOutput], per_prompt: usize) -> GenerateOutput {
    let mut all = outputs[0].clone();
    for (i, other) in outputs.iter().enumerate().skip(1) {
        if i % per_prompt.max(1) == 0 {
            all.prompt_ids.extend_from_slice(&other.prompt_ids);
        }
        all.new_tokens.extend_from_slice(&other.new_tokens);
    }
    all
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
    unfold(Some(stream), move |stream| async move {
        let mut stream = stream?;
        match stream.tokens.recv().await {
            Some(token) => Some((Event::Token(index, token), Some(stream))),
            None => {
                let output = (&mut stream.output).await;
                Some((Event::Done(index, output), None))
            }
        }
    })
    .boxed()
}
