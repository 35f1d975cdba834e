//! Prompts to token ids for one engine: tokenizing text, rendering and tokenizing chats, and
//! checking the ids against the model. Shared with the runtime ([`wc_actors::PromptEncoder`]),
//! which encodes on a blocking thread before a request is queued on the engine, and cheap to
//! refuse with: a text that cannot fit the context is refused before it is tokenized, a chat
//! before it is rendered, and a text the tokenizer's normaliser could grow past
//! [`MAX_NORMALISED_BYTES`] before it is normalised.

use std::sync::Arc;

use serde_json::{Map, Value};
use tokenizers::Tokenizer;
use wc_actors::{EngineError, Prompt};

use super::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError, MAX_RENDERED_BYTES};
use super::error::RunError;

#[path = "prompt_normaliser.rs"]
mod normaliser;
pub use normaliser::{Growth, MAX_GROWTH_PER_BYTE, MAX_NORMALISED_BYTES};

/// Characters a token may stand for at most, times this, bounds what a tokenizer's normaliser
/// could fold into one token; a text longer than that many characters per position cannot fit.
const NORMALISER_SLACK: usize = 4;

/// The most characters any prompt text may have, whatever the context (a 128k-token context
/// holds about half a million): what the tokenizer builds for it stays bounded.
pub const MAX_PROMPT_CHARS: usize = 4 << 20;

/// Everything needed to turn a prompt into checked token ids.
pub struct PromptCodec {
    tokenizer: Option<Arc<Tokenizer>>,
    chat_template: Option<ChatTemplate>,
    vocab_size: usize,
    max_positions: usize,
    /// The longest vocabulary entry, in characters; found on first use (a vocabulary of 128k
    /// entries takes tens of milliseconds to scan: not on the attach path).
    max_token_chars: std::sync::OnceLock<usize>,
    /// How far the tokenizer's normaliser can grow a text; found on first use.
    growth: std::sync::OnceLock<Growth>,
}

impl PromptCodec {
    pub fn new(
        tokenizer: Option<Arc<Tokenizer>>,
        chat_template: Option<ChatTemplate>,
        vocab_size: usize,
        max_positions: usize,
    ) -> Self {
        Self {
            tokenizer,
            chat_template,
            vocab_size,
            max_positions,
            max_token_chars: std::sync::OnceLock::new(),
            growth: std::sync::OnceLock::new(),
        }
    }

    /// How far the tokenizer's normaliser can grow a text.
    pub fn normaliser_growth(&self) -> Growth {
        *self.growth.get_or_init(|| {
            self.tokenizer.as_deref().map_or(
                Growth {
                    per_byte: 1,
                    fixed: 0,
                },
                Growth::of,
            )
        })
    }

    fn max_token_chars(&self) -> usize {
        *self.max_token_chars.get_or_init(|| {
            self.tokenizer
                .as_ref()
                .and_then(|t| t.get_vocab(true).keys().map(|k| k.chars().count()).max())
                .unwrap_or(1)
                .max(1)
        })
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_deref()
    }

    /// The tokenizer itself, shared.
    pub fn shared_tokenizer(&self) -> Option<Arc<Tokenizer>> {
        self.tokenizer.clone()
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The most characters a text that fits the context can have, and never more than
    /// [`MAX_PROMPT_CHARS`].
    pub fn max_prompt_chars(&self) -> usize {
        self.max_positions
            .saturating_mul(self.max_token_chars())
            .saturating_mul(NORMALISER_SLACK)
            .min(MAX_PROMPT_CHARS)
    }

    /// The most bytes a rendered chat may have: what fits the context, and never more than
    /// [`MAX_RENDERED_BYTES`].
    pub fn max_rendered_bytes(&self) -> usize {
        self.max_prompt_chars()
            .saturating_mul(4)
            .min(MAX_RENDERED_BYTES)
    }

    /// Token ids for a prompt: text goes through `tokenizer.json` with its special tokens (its
    /// post-processor adds BOS where the model wants one); a chat is rendered by the model's
    /// chat template and tokenized without adding special tokens again.
    pub fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, RunError> {
        let ids = match prompt {
            Prompt::Ids(ids) => ids.clone(),
            Prompt::Text(text) => self.tokenize(text, true)?,
            Prompt::Chat(messages) => self.encode_chat(messages)?,
            Prompt::ChatWith(chat) => {
                let kwargs = match chat.template_kwargs.trim() {
                    "" => Map::new(),
                    text => match serde_json::from_str::<Value>(text) {
                        Ok(Value::Object(map)) => map,
                        Ok(other) => {
                            let e = format!("got {other}");
                            return Err(ChatTemplateError::InvalidKwargs(e).into());
                        }
                        Err(e) => {
                            return Err(ChatTemplateError::InvalidKwargs(e.to_string()).into())
                        }
                    },
                };
                self.encode_chat_with(&chat.messages, chat.add_generation_prompt, &kwargs)?
            }
        };
        match self.check_ids(&ids) {
            // Ids the tokenizer made: the model's defect, not the client's.
            Err(RunError::TokenOutOfRange { id, vocab }) if !matches!(prompt, Prompt::Ids(_)) => {
                Err(RunError::TokenizerOutOfVocab { id, vocab })
            }
            checked => checked.map(|()| ids),
        }
    }

    /// `text`'s ids, refused when it has more characters than the positions could hold or the
    /// normaliser could grow it past its limit; the ids are not checked against the positions.
    pub fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>, RunError> {
        let tokenizer = self.tokenizer.as_ref().ok_or(RunError::NoTokenizer)?;
        // Counting characters stops early: a huge prompt costs only this scan.
        let limit = self.max_prompt_chars();
        if text.chars().take(limit + 1).count() > limit {
            return Err(RunError::PromptFarTooLong {
                limit,
                max: self.max_positions,
            });
        }
        let normalised = self.normaliser_growth().apply(text.len());
        if normalised > MAX_NORMALISED_BYTES {
            return Err(RunError::NormaliserExpands {
                bytes: text.len(),
                normalised,
                limit: MAX_NORMALISED_BYTES,
            });
        }
        Ok(tokenizer
            .encode(text, special)
            .map_err(|e| RunError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Checks prompt ids against the vocabulary and the position limit.
    pub fn check_ids(&self, ids: &[u32]) -> Result<(), RunError> {
        let vocab = self.vocab_size;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(RunError::TokenOutOfRange { id, vocab });
        }
        if ids.is_empty() {
            return Err(RunError::EmptyPrompt);
        }
        if ids.len() > self.max_positions {
            return Err(RunError::PromptTooLong {
                len: ids.len(),
                max: self.max_positions,
            });
        }
        Ok(())
    }

    /// The chat rendered by the model's template, ending where the assistant's reply begins;
    /// at most [`Self::max_rendered_bytes`].
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, ChatTemplateError> {
        self.render_chat_with(messages, true, &Map::new())
    }

    /// The chat rendered by the model's template with these options and extra variables; at
    /// most [`Self::max_rendered_bytes`].
    pub fn render_chat_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: &Map<String, Value>,
    ) -> Result<String, ChatTemplateError> {
        self.chat_template
            .as_ref()
            .ok_or(ChatTemplateError::NoTemplate)?
            .render_with(
                messages,
                add_generation_prompt,
                kwargs,
                self.max_rendered_bytes(),
            )
    }

    /// Prompt ids of a chat: the rendered template tokenized without adding special tokens
    /// again (the template writes BOS itself when the model wants one). Messages longer than
    /// any prompt that fits are refused before the template runs.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, RunError> {
        self.encode_chat_with(messages, true, &Map::new())
    }

    /// [`Self::encode_chat`] rendered with these options and extra variables.
    pub fn encode_chat_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: &Map<String, Value>,
    ) -> Result<Vec<u32>, RunError> {
        let limit = self.max_prompt_chars();
        let mut chars = 0usize;
        for message in messages {
            chars = chars.saturating_add(message.content.chars().take(limit + 1).count());
            if chars > limit {
                return Err(RunError::PromptFarTooLong {
                    limit,
                    max: self.max_positions,
                });
            }
        }
        let text = self.render_chat_with(messages, add_generation_prompt, kwargs)?;
        if self.tokenizer.is_none() {
            return Err(ChatTemplateError::NoTokenizer.into());
        }
        self.tokenize(&text, false)
    }
}

impl PromptCodec {
    /// Checks at attach what would otherwise fail every request: the tokenizer's vocabulary
    /// (and the ids its post-processor adds) within the model's, and its normaliser's growth.
    /// The reason, for an [`crate::load::LoadError`].
    pub fn check_at_attach(&self) -> Result<(), String> {
        let Some(tokenizer) = &self.tokenizer else {
            return Ok(());
        };
        if let Some(id) = tokenizer
            .get_added_tokens_decoder()
            .into_keys()
            .filter(|&id| id as usize >= self.vocab_size)
            .max()
        {
            return Err(format!(
                "the tokenizer's added token id {id} is outside the model's vocabulary of {}",
                self.vocab_size
            ));
        }
        let size = tokenizer.get_vocab_size(true);
        if size > self.vocab_size {
            return Err(format!(
                "the tokenizer has {size} tokens, more than the model's vocabulary of {}",
                self.vocab_size
            ));
        }
        let probe = tokenizer
            .encode("a", true)
            .map_err(|e| format!("it cannot encode a one-letter text: {e}"))?;
        if let Some(id) = probe
            .get_ids()
            .iter()
            .find(|&&id| id as usize >= self.vocab_size)
        {
            return Err(format!(
                "the tokenizer adds token id {id}, outside the model's vocabulary of {}",
                self.vocab_size
            ));
        }
        let growth = self.normaliser_growth();
        if growth.per_byte > MAX_GROWTH_PER_BYTE || growth.fixed > MAX_NORMALISED_BYTES {
            return Err(format!(
                "its normaliser can grow a text {}-fold (plus {} bytes), more than the \
                 {MAX_GROWTH_PER_BYTE}-fold allowed",
                growth.per_byte, growth.fixed
            ));
        }
        Ok(())
    }
}

impl wc_actors::PromptEncoder for PromptCodec {
    fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        Ok(PromptCodec::encode(self, prompt)?)
    }
}
