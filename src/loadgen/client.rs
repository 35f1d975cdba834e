//! One streamed completion over HTTP, timed as a client sees it: the first text, every gap
//! between texts, the end, and the token counts of the final usage chunk.

use std::time::{Duration, Instant};

use awc::http::header;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Endpoint, LoadOptions};

/// What one request did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestResult {
    /// Which client sent it (0-based).
    pub client: usize,
    /// Whether it ended with `[DONE]` and no error.
    pub ok: bool,
    /// The HTTP status, when a reply head came.
    pub status: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
    /// The `x-request-id` the server echoed.
    pub request_id: Option<String>,
    /// Milliseconds from the start of the run to sending this request (its timestamp: the
    /// request ran from `start_ms` to `start_ms + e2e_ms`).
    #[serde(default)]
    pub start_ms: f64,
    /// Milliseconds from sending to the first non-empty text.
    pub ttft_ms: Option<f64>,
    /// Milliseconds from sending to the end of the stream.
    pub e2e_ms: f64,
    /// Milliseconds between consecutive texts, in order (the per-token gaps: the first text
    /// came at `ttft_ms`, the k-th at `ttft_ms` plus the first k-1 gaps).
    #[serde(default)]
    pub itl_ms: Vec<f64>,
    /// Mean of `itl_ms` (absent with fewer than two texts).
    pub itl_mean_ms: Option<f64>,
    /// Generated tokens: the usage chunk's count, else the texts received.
    pub output_tokens: usize,
    /// Prompt tokens, from the usage chunk.
    pub prompt_tokens: Option<usize>,
}

/// The JSON body of one request.
pub fn body(options: &LoadOptions, prompt: &str) -> Value {
    let mut body = json!({
        "model": options.model,
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    match options.endpoint {
        Endpoint::Completions => body["prompt"] = json!(prompt),
        Endpoint::Chat => body["messages"] = json!([{"role": "user", "content": prompt}]),
    }
    if options.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    body
}

/// Sends one request and reads its event stream to the end (or to `options.timeout`).
pub async fn send(
    client: &awc::Client,
    options: &LoadOptions,
    client_index: usize,
    request_id: &str,
    prompt: &str,
    run_started: Instant,
) -> RequestResult {
    let started = Instant::now();
    let mut result = RequestResult {
        client: client_index,
        start_ms: ms(started - run_started),
        ..RequestResult::default()
    };
    let outcome = tokio::time::timeout(
        options.timeout,
        exchange(client, options, request_id, prompt, started, &mut result),
    )
    .await;
    result.error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(_) => Some(format!(
            "no end within {:.0} s (--timeout)",
            options.timeout.as_secs_f64()
        )),
    };
    result.ok = result.error.is_none();
    result.e2e_ms = ms(started.elapsed());
    if !result.itl_ms.is_empty() {
        result.itl_mean_ms = Some(result.itl_ms.iter().sum::<f64>() / result.itl_ms.len() as f64);
    }
    result
}

/// The request and its stream; fills `result` as events come.
async fn exchange(
    client: &awc::Client,
    options: &LoadOptions,
    request_id: &str,
    prompt: &str,
    started: Instant,
    result: &mut RequestResult,
) -> Result<(), String> {
    let url = format!(
        "{}{}",
        options.url.trim_end_matches('/'),
        options.endpoint.path()
    );
    let mut request = client
        .post(&url)
        .insert_header(("x-request-id", request_id))
        .insert_header((header::ACCEPT, "text/event-stream"));
    if let Some(key) = &options.api_key {
        request = request.insert_header((header::AUTHORIZATION, format!("Bearer {key}")));
    }
    let mut response = request
        .send_json(&body(options, prompt))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    result.status = Some(response.status().as_u16());
    result.request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if !response.status().is_success() {
        let body = response.body().await.unwrap_or_default();
        return Err(format!(
            "{} {}",
            response.status(),
            String::from_utf8_lossy(&body).trim()
        ));
    }
    let mut events = EventBuffer::default();
    let mut last_text: Option<Instant> = None;
    let mut texts = 0;
    while let Some(bytes) = response.next().await {
        let bytes = bytes.map_err(|e| format!("reading the stream: {e}"))?;
        let now = Instant::now();
        for data in events.push(&bytes) {
            if data == "[DONE]" {
                if result.output_tokens == 0 {
                    result.output_tokens = texts;
                }
                return Ok(());
            }
            let event: Value =
                serde_json::from_str(&data).map_err(|e| format!("an event is not JSON: {e}"))?;
            if let Some(error) = event.get("error") {
                return Err(format!("error in the stream: {error}"));
            }
            if let Some(usage) = event.get("usage").filter(|u| !u.is_null()) {
                result.output_tokens = count(usage, "completion_tokens");
                result.prompt_tokens = Some(count(usage, "prompt_tokens"));
            }
            if options.endpoint.text(&event).is_some_and(|t| !t.is_empty()) {
                texts += 1;
                match last_text {
                    None => result.ttft_ms = Some(ms(now - started)),
                    Some(last) => result.itl_ms.push(ms(now - last)),
                }
                last_text = Some(now);
            }
        }
    }
    Err("the stream ended without [DONE]".into())
}

fn count(usage: &Value, field: &str) -> usize {
    usage[field].as_u64().unwrap_or(0) as usize
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Server-sent events split out of the bytes as they come (a character split between two
/// reads is whole again once its event is complete).
#[derive(Default)]
pub struct EventBuffer {
    pending: Vec<u8>,
}

impl EventBuffer {
    /// Adds `bytes`; returns the `data:` payload of every event now complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.pending.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&event);
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_are_joined() {
        let mut buffer = EventBuffer::default();
        assert!(buffer.push(b"data: {\"a\"").is_empty());
        assert_eq!(buffer.push(b": 1}\n\ndata: [DONE]\n"), ["{\"a\": 1}"]);
        assert_eq!(buffer.push(b"\n: comment\n\n"), ["[DONE]"]);
        assert!(buffer.push(b"").is_empty());
        // "é" split between two reads.
        assert!(buffer.push(b"data: caf\xc3").is_empty());
        assert_eq!(buffer.push(b"\xa9\n\n"), ["caf\u{e9}"]);
    }
}
