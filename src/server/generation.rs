//! Running one generation for a completion endpoint, plain or streamed: the engine found (or
//! attached on demand), the first event awaited, every token seen by the request's [`Trace`].

use wc_actors::{GenerateError, GenerateOutput, GenerateRequest, GenerateStream, TokenEvent};

use super::completions::with_engine;
use super::error::ApiError;
use super::metrics::Trace;
use super::state::AppState;

/// How a generation began: with a first token, or already finished (no token was made).
pub enum Start {
    Token(TokenEvent, GenerateStream),
    Finished(GenerateOutput, GenerateStream),
}

/// Starts generation on the trace's model and waits for its first event, so that an unknown
/// model or a refused request is an error before any reply is sent. A first token is counted.
pub async fn start(
    state: &AppState,
    trace: &mut Trace,
    request: GenerateRequest,
) -> Result<Start, ApiError> {
    let handle = state.handle.clone();
    let start = with_engine(state, trace.model(), |name| {
        first_event(handle.generate_stream(name, request.clone()))
    })
    .await?;
    if let Start::Token(..) = start {
        trace.token();
    }
    Ok(start)
}

/// Generates the whole output (a non-streamed reply), counting every token as it comes, and
/// records the finished request.
pub async fn complete(
    state: &AppState,
    mut trace: Trace,
    request: GenerateRequest,
) -> Result<GenerateOutput, ApiError> {
    let (finished, mut stream) = match start(state, &mut trace, request).await? {
        Start::Finished(output, stream) => (Some(output), stream),
        Start::Token(_, stream) => (None, stream),
    };
    // Every token up to the end (when it finished already, those still buffered).
    while stream.tokens.recv().await.is_some() {
        trace.token();
    }
    let output = match finished {
        Some(output) => output,
        None => (&mut stream.output).await.map_err(ApiError::from)?,
    };
    trace.finish(&output);
    Ok(output)
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
