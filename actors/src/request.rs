//! What a generation request is and what it gives back: the prompt (text, ids or a chat), the
//! sampling parameters, each token as it is made, and the finished output.

use serde::{Deserialize, Serialize};

/// A prompt as text (tokenized by the engine), as token ids, or as a chat that the engine
/// renders with the model's chat template.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Chat(Vec<ChatMessage>),
}

/// One message of a chat: a role (`system`, `user`, `assistant`, `tool`) and its text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// One generation request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus sampling mass; 1.0 keeps every token.
    pub top_p: f64,
    /// Seed for sampling; `None` picks one.
    pub seed: Option<u64>,
    /// Strings that end generation; the stop string itself is not returned.
    pub stop: Vec<String>,
    /// Keep going past the end-of-sequence token.
    pub ignore_eos: bool,
    /// Report each new token's logprob and this many most likely alternatives; `None`: none.
    pub logprobs: Option<usize>,
    /// Subtracted once from the logit of every token already generated (OpenAI semantics).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was already generated.
    pub frequency_penalty: f32,
    /// Added to the logits of these token ids before sampling.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            prompt: Prompt::Ids(Vec::new()),
            max_new_tokens: 16,
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

/// One token as it is made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenEvent {
    pub id: u32,
    /// The text this token adds to the output (may be empty mid-character).
    pub text: String,
    /// Its logprob and the top alternatives, when the request asked for them.
    pub logprobs: Option<TokenLogprobs>,
}

impl TokenEvent {
    /// A token without logprobs.
    pub fn new(id: u32, text: impl Into<String>) -> Self {
        Self {
            id,
            text: text.into(),
            logprobs: None,
        }
    }
}

/// The log-probability of a chosen token and of the most likely tokens at its position
/// (log-softmax of the raw logits, before penalties, bias and temperature, as vLLM reports).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    /// The token as text on its own.
    pub token: String,
    pub logprob: f32,
    /// The most likely tokens, most likely first: `(id, text, logprob)`.
    pub top: Vec<(u32, String, f32)>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// End-of-sequence token or a stop string.
    Stop,
    /// The receiver of the stream went away.
    Cancelled,
}

/// The result of one generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateOutput {
    pub prompt_ids: Vec<u32>,
    pub new_tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// Sum of the new tokens' logprobs (what `best_of` ranks by); 0 when not computed.
    pub cumulative_logprob: f64,
    /// Per new token, when the request asked for logprobs.
    pub logprobs: Vec<TokenLogprobs>,
}
