//! Prompts to token ids for one engine: tokenizing text, rendering and tokenizing chats, and
//! checking the ids against the model. Shared with the runtime ([`wc_actors::PromptEncoder`]),
//! which encodes on a blocking thread before a request is queued on the engine, and cheap to
//! refuse with: a text that cannot fit the context is refused before it is tokenized.

use std::sync::Arc;

use tokenizers::Tokenizer;
use wc_actors::{EngineError, Prompt};

use super::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError};
use crate::error::GenerateError;

/// Characters a token may stand for at most, times this, bounds what a tokenizer's normaliser
/// could fold into one token; a text longer than that many characters per position cannot fit.
const NORMALISER_SLACK: usize = 4;

/// Everything needed to turn a prompt into checked token ids.
pub struct PromptCodec {
    tokenizer: Option<Arc<Tokenizer>>,
    chat_template: Option<ChatTemplate>,
    vocab_size: usize,
    max_positions: usize,
    /// The longest vocabulary entry, in characters; found on first use (a vocabulary of 128k
    /// entries takes tens of milliseconds to scan: not on the attach path).
    max_token_chars: std::sync::OnceLock<usize>,
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
        }
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

    /// The most characters a text that fits the context can have.
    pub fn max_prompt_chars(&self) -> usize {
        self.max_positions
            .saturating_mul(self.max_token_chars())
            .saturating_mul(NORMALISER_SLACK)
    }

    /// Token ids for a prompt: text goes through `tokenizer.json` with its special tokens (its
    /// post-processor adds BOS where the model wants one); a chat is rendered by the model's
    /// chat template and tokenized without adding special tokens again.
    pub fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, GenerateError> {
        let ids = match prompt {
            Prompt::Ids(ids) => ids.clone(),
            Prompt::Text(text) => self.tokenize(text, true)?,
            Prompt::Chat(messages) => self.encode_chat(messages)?,
        };
        self.check_ids(&ids)?;
        Ok(ids)
    }

    fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>, GenerateError> {
        let tokenizer = self.tokenizer.as_ref().ok_or(GenerateError::NoTokenizer)?;
        // Counting characters stops early: a huge prompt costs only this scan.
        let limit = self.max_prompt_chars();
        if text.chars().take(limit + 1).count() > limit {
            return Err(GenerateError::PromptFarTooLong {
                limit,
                max: self.max_positions,
            });
        }
        Ok(tokenizer
            .encode(text, special)
            .map_err(|e| GenerateError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Checks prompt ids against the vocabulary and the position limit.
    pub fn check_ids(&self, ids: &[u32]) -> Result<(), GenerateError> {
        let vocab = self.vocab_size;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(GenerateError::TokenOutOfRange { id, vocab });
        }
        if ids.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if ids.len() > self.max_positions {
            return Err(GenerateError::PromptTooLong {
                len: ids.len(),
                max: self.max_positions,
            });
        }
        Ok(())
    }

    /// The chat rendered by the model's template, ending where the assistant's reply begins.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, ChatTemplateError> {
        self.chat_template
            .as_ref()
            .ok_or(ChatTemplateError::NoTemplate)?
            .render(messages, true)
    }

    /// Prompt ids of a chat: the rendered template tokenized without adding special tokens
    /// again (the template writes BOS itself when the model wants one).
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, GenerateError> {
        let text = self.render_chat(messages)?;
        if self.tokenizer.is_none() {
            return Err(ChatTemplateError::NoTokenizer.into());
        }
        self.tokenize(&text, false)
    }
}

impl wc_actors::PromptEncoder for PromptCodec {
    fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        Ok(PromptCodec::encode(self, prompt)?)
    }
}
