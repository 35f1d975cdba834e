//! Decode speed as a caller sees it: tokens streamed after an attach, timed from the first to the last.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use wc_actors::{EngineRef, GenerateRequest, Handle, Prompt};

/// One decode measurement on a freshly attached engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DecodeRecord {
    /// Tokens made (the first one, from the prefill, included).
    pub tokens: usize,
    /// From the caller's receipt of the first token to its receipt of the last, in ms: decode
    /// only, with every per-token cost between the engine and the caller (frames, channels).
    pub caller_decode_ms: f64,
    /// The engine's own decode time (`GenerateOutput::decode_ms`), measured where it runs.
    pub engine_decode_ms: f64,
}

impl DecodeRecord {
    /// Decoded tokens per second as the caller receives them (the first token, which ends the
    /// prefill, is not a decode step).
    pub fn tokens_per_s(&self) -> f64 {
        let steps = self.tokens.saturating_sub(1) as f64;
        if self.caller_decode_ms > 0.0 {
            steps / (self.caller_decode_ms / 1e3)
        } else {
            0.0
        }
    }

    /// Milliseconds per decoded token as the caller receives them.
    pub fn ms_per_token(&self) -> f64 {
        self.caller_decode_ms / self.tokens.saturating_sub(1).max(1) as f64
    }
}

/// Streams `tokens` greedy tokens from `engine` (end-of-sequence ignored, one-token prompt) and
/// times the decode from the caller's side.
pub async fn measure(
    handle: &Handle,
    engine: EngineRef,
    tokens: usize,
) -> anyhow::Result<DecodeRecord> {
    let request = GenerateRequest {
        prompt: Prompt::Ids(vec![2]),
        max_new_tokens: tokens,
        ignore_eos: true,
        ..GenerateRequest::default()
    };
    let mut stream = handle.generate_stream(engine, request);
    let (mut first, mut last, mut received) = (None, None, 0usize);
    while let Some(_token) = stream.tokens.recv().await {
        let now = Instant::now();
        first.get_or_insert(now);
        last = Some(now);
        received += 1;
    }
    let output = stream.output.await?;
    anyhow::ensure!(
        received == tokens && output.new_tokens.len() == tokens,
        "asked for {tokens} tokens, streamed {received}, output has {}",
        output.new_tokens.len()
    );
    let caller_decode_ms = match (first, last) {
        (Some(first), Some(last)) => (last - first).as_secs_f64() * 1e3,
        _ => 0.0,
    };
    Ok(DecodeRecord {
        tokens,
        caller_decode_ms,
        engine_decode_ms: output.decode_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_leave_out_the_prefill_token() {
        let record = DecodeRecord {
            tokens: 11,
            caller_decode_ms: 50.0,
            engine_decode_ms: 45.0,
        };
        assert_eq!(record.tokens_per_s(), 200.0);
        assert_eq!(record.ms_per_token(), 5.0);
        assert_eq!(DecodeRecord::default().tokens_per_s(), 0.0);
    }
}
