//! What a generation request is and what it gives back: the prompt (text, ids or a chat), the
//! sampling parameters, each token as it is made, and the finished output.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A prompt as text (tokenized by the engine), as token ids, or as a chat that the engine
/// renders with the model's chat template (with the template's defaults, or with the options
/// of a [`ChatPrompt`]). In JSON (any human-readable format) it is the bare string, id list,
/// message list or chat object; in bincode, on a worker process's pipe, it is tagged, as a
/// format that does not describe itself cannot tell them apart.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Chat(Vec<ChatMessage>),
    ChatWith(ChatPrompt),
}

/// A chat with the options its template is rendered with (vLLM's `add_generation_prompt` and
/// `chat_template_kwargs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatPrompt {
    pub messages: Vec<ChatMessage>,
    /// End the prompt where the assistant's reply begins (the template's `add_generation_prompt`).
    pub add_generation_prompt: bool,
    /// Extra variables for the template, as the text of a JSON object (`{"enable_thinking":
    /// false}`); empty for none. Text, so that a format without `serde_json::Value`'s
    /// self-description (bincode) carries it.
    #[serde(default)]
    pub template_kwargs: String,
}

/// [`Prompt`]'s two serialized forms, borrowed for writing.
#[derive(Serialize)]
#[serde(rename = "Prompt")]
enum PromptRef<'a> {
    Text(&'a str),
    Ids(&'a [u32]),
    Chat(&'a [ChatMessage]),
    ChatWith(&'a ChatPrompt),
}

#[derive(Serialize)]
#[serde(untagged)]
enum BarePromptRef<'a> {
    Text(&'a str),
    Ids(&'a [u32]),
    Chat(&'a [ChatMessage]),
    ChatWith(&'a ChatPrompt),
}

/// [`Prompt`]'s two serialized forms, owned for reading.
#[derive(Deserialize)]
#[serde(rename = "Prompt")]
enum TaggedPrompt {
    Text(String),
    Ids(Vec<u32>),
    Chat(Vec<ChatMessage>),
    ChatWith(ChatPrompt),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BarePrompt {
    Text(String),
    Ids(Vec<u32>),
    Chat(Vec<ChatMessage>),
    ChatWith(ChatPrompt),
}

impl Serialize for Prompt {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (self, serializer.is_human_readable()) {
            (Prompt::Text(t), true) => BarePromptRef::Text(t).serialize(serializer),
            (Prompt::Ids(i), true) => BarePromptRef::Ids(i).serialize(serializer),
            (Prompt::Chat(c), true) => BarePromptRef::Chat(c).serialize(serializer),
            (Prompt::ChatWith(c), true) => BarePromptRef::ChatWith(c).serialize(serializer),
            (Prompt::Text(t), false) => PromptRef::Text(t).serialize(serializer),
            (Prompt::Ids(i), false) => PromptRef::Ids(i).serialize(serializer),
            (Prompt::Chat(c), false) => PromptRef::Chat(c).serialize(serializer),
            (Prompt::ChatWith(c), false) => PromptRef::ChatWith(c).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match deserializer.is_human_readable() {
            true => match BarePrompt::deserialize(deserializer)? {
                BarePrompt::Text(t) => Prompt::Text(t),
                BarePrompt::Ids(i) => Prompt::Ids(i),
                BarePrompt::Chat(c) => Prompt::Chat(c),
                BarePrompt::ChatWith(c) => Prompt::ChatWith(c),
            },
            false => match TaggedPrompt::deserialize(deserializer)? {
                TaggedPrompt::Text(t) => Prompt::Text(t),
                TaggedPrompt::Ids(i) => Prompt::Ids(i),
                TaggedPrompt::Chat(c) => Prompt::Chat(c),
                TaggedPrompt::ChatWith(c) => Prompt::ChatWith(c),
            },
        })
    }
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
    /// Sample only among this many most likely tokens; 0 keeps every token.
    #[serde(default)]
    pub top_k: usize,
    /// Drop tokens less likely than this fraction of the most likely one's probability; 0 keeps
    /// every token.
    #[serde(default)]
    pub min_p: f64,
    /// Divides the positive logits (multiplies the negative ones) of every token already in
    /// the prompt or the output (vLLM's and transformers' semantics); 1.0 changes nothing.
    #[serde(default = "one")]
    pub repetition_penalty: f64,
    /// Generate at least this many tokens: the end-of-sequence and stop tokens cannot be
    /// sampled, nor stop strings end generation, before.
    #[serde(default)]
    pub min_tokens: usize,
    /// Token ids that end generation, besides the model's end-of-sequence ids.
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    /// Keep the stop string (or the stop token's text) that ended generation in the output.
    #[serde(default)]
    pub include_stop_str_in_output: bool,
    /// Leave special tokens out of the text (true unless asked otherwise).
    #[serde(default = "yes")]
    pub skip_special_tokens: bool,
    /// Sampling parameters the client left unset: the engine takes each from the model's
    /// `generation_config.json` when it sets it (as vLLM does), else keeps the value here.
    #[serde(default)]
    pub unset: UnsetSampling,
}

/// Which sampling parameters of a [`GenerateRequest`] were not given by the client, so that the
/// model's `generation_config.json` may set them. All false (the default): every value stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsetSampling {
    pub temperature: bool,
    pub top_p: bool,
    pub top_k: bool,
    pub min_p: bool,
    pub repetition_penalty: bool,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
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
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            min_tokens: 0,
            stop_token_ids: Vec::new(),
            include_stop_str_in_output: false,
            skip_special_tokens: true,
            unset: UnsetSampling::default(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::frame::{read_frame, write_frame};

    fn every_kind() -> [Prompt; 4] {
        [
            Prompt::Text("hi".into()),
            Prompt::Ids(vec![2, 7]),
            Prompt::Chat(vec![ChatMessage::new("user", "hi")]),
            Prompt::ChatWith(ChatPrompt {
                messages: vec![ChatMessage::new("user", "hi")],
                add_generation_prompt: false,
                template_kwargs: r#"{"enable_thinking":false}"#.into(),
            }),
        ]
    }

    #[test]
    fn prompts_are_bare_in_json() {
        let json: Vec<String> = every_kind()
            .iter()
            .map(|p| serde_json::to_string(p).unwrap())
            .collect();
        assert_eq!(
            json,
            [
                r#""hi""#,
                "[2,7]",
                r#"[{"role":"user","content":"hi"}]"#,
                r#"{"messages":[{"role":"user","content":"hi"}],"add_generation_prompt":false,"template_kwargs":"{\"enable_thinking\":false}"}"#
            ]
        );
        for (prompt, text) in every_kind().iter().zip(&json) {
            assert_eq!(&serde_json::from_str::<Prompt>(text).unwrap(), prompt);
        }
    }

    #[test]
    fn every_kind_of_prompt_crosses_a_worker_pipe() {
        // bincode cannot read an untagged enum back: the pipe's form is tagged.
        let mut buffer = Vec::new();
        for prompt in every_kind() {
            let request = GenerateRequest {
                prompt,
                top_k: 3,
                repetition_penalty: 1.2,
                stop_token_ids: vec![9],
                skip_special_tokens: false,
                unset: UnsetSampling {
                    temperature: true,
                    ..UnsetSampling::default()
                },
                ..GenerateRequest::default()
            };
            write_frame(&mut buffer, &request).unwrap();
        }
        let mut input = buffer.as_slice();
        for prompt in every_kind() {
            let read: GenerateRequest = read_frame(&mut input).unwrap().unwrap();
            assert_eq!(read.prompt, prompt);
            assert_eq!((read.top_k, read.stop_token_ids), (3, vec![9]));
            assert!(read.unset.temperature && !read.skip_special_tokens);
        }
    }
}
