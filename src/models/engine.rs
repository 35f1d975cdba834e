//! A loaded model of any family with its tokenizer, stopping ids and chat template: encodes
//! prompts, renders chats, and generates through the shared loop as a runtime [`wc_actors::Engine`].

use std::path::Path;

use candle_core::Tensor;
use tokenizers::Tokenizer;
use wc_actors::{EngineError, GenerateOutput, GenerateRequest, Prompt, TokenEvent};

use super::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError};
use super::generate::{decode, generate};
use super::generation_config::{generation_eos_ids, union};
use super::CausalLm;
use crate::error::{GenerateError, LoadError};

/// A model ready to generate.
pub struct TextEngine<M: CausalLm> {
    pub model: M,
    tokenizer: Option<Tokenizer>,
    /// Ids that end generation: `config.json`'s, then `generation_config.json`'s.
    eos_ids: Vec<u32>,
    chat_template: Option<ChatTemplate>,
    /// Device bytes held by the weights.
    device_bytes: u64,
}

impl<M: CausalLm> TextEngine<M> {
    pub fn new(model: M, tokenizer: Option<Tokenizer>, device_bytes: u64) -> Self {
        Self {
            eos_ids: model.eos_ids(),
            model,
            tokenizer,
            chat_template: None,
            device_bytes,
        }
    }

    /// Adds what the side files of the checkpoint in `dir` say: `generation_config.json`'s EOS
    /// ids and the chat template (each optional).
    pub fn with_checkpoint_files(mut self, dir: &Path) -> Result<Self, LoadError> {
        union(&mut self.eos_ids, generation_eos_ids(dir)?);
        self.chat_template = ChatTemplate::from_dir(dir)?;
        Ok(self)
    }

    /// Adds end-of-sequence ids.
    pub fn with_eos_ids(mut self, ids: impl IntoIterator<Item = u32>) -> Self {
        union(&mut self.eos_ids, ids);
        self
    }

    pub fn with_chat_template(mut self, template: Option<ChatTemplate>) -> Self {
        self.chat_template = template;
        self
    }

    /// The ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
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
        Ok(tokenizer
            .encode(text, special)
            .map_err(|e| GenerateError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Checks prompt ids against the vocabulary and the position limit.
    pub fn check_ids(&self, ids: &[u32]) -> Result<(), GenerateError> {
        let vocab = self.model.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(GenerateError::TokenOutOfRange { id, vocab });
        }
        if ids.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let max = self.model.max_positions();
        if ids.len() > max {
            return Err(GenerateError::PromptTooLong {
                len: ids.len(),
                max,
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
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ChatTemplateError> {
        let text = self.render_chat(messages)?;
        let tokenizer = self
            .tokenizer
            .as_ref()
            .ok_or(ChatTemplateError::NoTokenizer)?;
        Ok(tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| ChatTemplateError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Text of generated tokens, special tokens skipped; empty without a tokenizer.
    pub fn decode(&self, ids: &[u32]) -> String {
        decode(self.tokenizer.as_ref(), ids)
    }

    /// Logits (`[seq, vocab]`, f32) of one forward pass over `ids`, without a cache.
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor, GenerateError> {
        self.check_ids(ids)?;
        Ok(self
            .model
            .forward_tokens(ids, &mut self.model.new_cache(), true)?)
    }

    /// Generates for `request`, calling `on_token` with each token and the text it adds.
    pub fn run(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<GenerateOutput, GenerateError> {
        let prompt_ids = self.encode(&request.prompt)?;
        generate(
            &self.model,
            self.tokenizer.as_ref(),
            &self.eos_ids,
            prompt_ids,
            request,
            on_token,
        )
    }
}

impl<M: CausalLm> wc_actors::Engine for TextEngine<M> {
    fn generate(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<GenerateOutput, EngineError> {
        Ok(self.run(request, on_token)?)
    }

    fn warm_up(&mut self) -> Result<u32, EngineError> {
        let request = GenerateRequest {
            prompt: Prompt::Ids(vec![self.model.warm_up_token()]),
            max_new_tokens: 1,
            ignore_eos: true,
            ..Default::default()
        };
        let output = self.run(&request, &mut |_| true)?;
        Ok(output.new_tokens.first().copied().unwrap_or_default())
    }

    fn device_bytes(&self) -> u64 {
        self.device_bytes
    }
}
