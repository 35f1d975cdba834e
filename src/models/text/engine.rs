//! A loaded model of any family with its tokenizer, stopping ids and chat template: encodes
//! prompts, renders chats, and generates through its running [`Batch`] as a runtime
//! [`wc_actors::Engine`] that batches requests ([`wc_actors::BatchEngine`]).

use std::path::Path;
use std::sync::Arc;

use candle_core::Tensor;
use tokenizers::Tokenizer;
use wc_actors::{
    Admission, BatchEngine, EngineError, FinishReason, GenerateOutput, GenerateRequest, KvUsage,
    Prompt, SeqEvent, SeqId, TokenEvent,
};

use super::batch::{Batch, DEFAULT_KV_CACHE_TOKENS};
use super::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError};
use super::error::RunError;
use super::generate::decode;
use super::generation_config::{union, SamplingDefaults};
use super::prompt::PromptCodec;
use super::sequence::{Sequence, Vocabulary};
use super::text_files::TextFiles;
use crate::load::LoadError;
use crate::models::causal_lm::CausalLm;

/// A model ready to generate.
pub struct TextEngine<M: CausalLm> {
    pub model: M,
    /// Tokenizer, chat template and prompt checks; shared with the runtime's encoder.
    codec: Arc<PromptCodec>,
    /// Ids that end generation: `config.json`'s, then `generation_config.json`'s.
    eos_ids: Vec<u32>,
    /// `generation_config.json`'s sampling defaults, for what a request leaves unset.
    sampling_defaults: SamplingDefaults,
    /// Device bytes held by the weights (the KV slab's are counted beside them).
    device_bytes: u64,
    /// The sequences being generated, and the KV-cache budget they share.
    batch: Batch<M::Cache>,
}

impl<M: CausalLm> TextEngine<M> {
    pub fn new(model: M, tokenizer: Option<Arc<Tokenizer>>, device_bytes: u64) -> Self {
        let codec = PromptCodec::new(tokenizer, None, model.vocab_size(), model.max_positions());
        Self {
            eos_ids: model.eos_ids(),
            sampling_defaults: SamplingDefaults::default(),
            model,
            codec: Arc::new(codec),
            device_bytes,
            batch: Batch::new(DEFAULT_KV_CACHE_TOKENS),
        }
    }

    /// The engine an attach builds: `model` with its tokenizer, its KV-cache budget of
    /// `kv_cache_tokens` reserved, and the side files of the checkpoint in `dir` (stopping ids,
    /// chat template) read and checked.
    pub fn attached(
        model: M,
        tokenizer: Option<Arc<Tokenizer>>,
        device_bytes: u64,
        kv_cache_tokens: usize,
        dir: &Path,
    ) -> Result<Self, LoadError> {
        Self::new(model, tokenizer, device_bytes)
            .with_kv_cache_tokens(kv_cache_tokens)?
            .with_checkpoint_files(dir)
    }

    /// Sets the KV-cache tokens the running sequences may reserve together (each reserves its
    /// prompt plus `max_new_tokens`) and reserves the model's slab for them: allocated now on a
    /// GPU, as sequences take slots on the CPU ([`super::kv_slab::Allocation`]); the engine
    /// counts the whole budget from attach on either way ([`wc_actors::Engine::device_bytes`]).
    pub fn with_kv_cache_tokens(mut self, tokens: usize) -> Result<Self, LoadError> {
        let tokens = tokens.max(1);
        self.model.kv_slab().reserve(tokens)?;
        self.batch = Batch::new(tokens);
        Ok(self)
    }

    /// The KV-cache budget in tokens.
    pub fn kv_cache_tokens(&self) -> usize {
        self.batch.budget()
    }

    /// Adds what the side files of the checkpoint in `dir` say: `generation_config.json`'s EOS
    /// ids and sampling defaults, and the chat template (each optional), checked as the pre-eviction check checks them
    /// ([`TextFiles`]): a tokenizer or context that would fail every request is refused here, as
    /// the model's defect.
    pub fn with_checkpoint_files(mut self, dir: &Path) -> Result<Self, LoadError> {
        let files = TextFiles::read(
            dir,
            self.codec.shared_tokenizer(),
            self.model.vocab_size(),
            self.model.max_positions(),
        )?;
        union(&mut self.eos_ids, files.eos_ids);
        self.sampling_defaults = files.sampling;
        self.codec = Arc::new(files.codec);
        Ok(self)
    }

    pub fn with_chat_template(mut self, template: Option<ChatTemplate>) -> Self {
        let tokenizer = self.codec.shared_tokenizer();
        self.codec = Arc::new(PromptCodec::new(
            tokenizer,
            template,
            self.model.vocab_size(),
            self.model.max_positions(),
        ));
        self
    }

    /// The ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The sampling defaults of `generation_config.json` a request leaving them unset takes.
    pub fn sampling_defaults(&self) -> SamplingDefaults {
        self.sampling_defaults
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.codec.chat_template()
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.codec.tokenizer()
    }

    /// Token ids for a prompt (see [`PromptCodec::encode`]).
    pub fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, RunError> {
        self.codec.encode(prompt)
    }

    /// Checks prompt ids against the vocabulary and the position limit.
    pub fn check_ids(&self, ids: &[u32]) -> Result<(), RunError> {
        self.codec.check_ids(ids)
    }

    /// The chat rendered by the model's template, ending where the assistant's reply begins.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, ChatTemplateError> {
        self.codec.render_chat(messages)
    }

    /// Prompt ids of a chat, rendered by the model's template.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, RunError> {
        self.codec.encode_chat(messages)
    }

    /// Text of generated tokens, special tokens skipped; empty without a tokenizer.
    pub fn decode(&self, ids: &[u32]) -> String {
        decode(self.codec.tokenizer(), ids)
    }

    /// Logits (`[seq, vocab]`, f32) of one forward pass over `ids`, without a cache.
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor, RunError> {
        self.check_ids(ids)?;
        Ok(self
            .model
            .forward_tokens(ids, &mut self.model.new_cache(), true)?)
    }

    /// A sequence for `request` (what it left unset taken from `generation_config.json`), its
    /// prompt encoded and checked against the context.
    fn sequence(
        &self,
        id: SeqId,
        request: &GenerateRequest,
    ) -> Result<Sequence<M::Cache>, RunError> {
        let applied;
        let request = match request.unset == Default::default() || self.sampling_defaults.is_empty()
        {
            true => request,
            false => {
                applied = self.sampling_defaults.apply(request);
                &applied
            }
        };
        let vocab = self.model.vocab_size();
        if let Some(&id) = request
            .stop_token_ids
            .iter()
            .find(|id| **id as usize >= vocab)
        {
            return Err(RunError::InvalidSampling(format!(
                "stop_token_ids names token id {id}, outside the vocabulary (size {vocab})"
            )));
        }
        if let Some(&(id, _)) = request
            .logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= vocab)
        {
            return Err(RunError::InvalidSampling(format!(
                "logit_bias names token id {id}, outside the vocabulary (size {vocab})"
            )));
        }
        let prompt_ids = self.encode(&request.prompt)?;
        let max = self.model.max_positions();
        // Checked: a `max_new_tokens` near usize::MAX must not wrap around to a small total.
        if prompt_ids
            .len()
            .checked_add(request.max_new_tokens)
            .is_none_or(|total| total > max)
        {
            return Err(RunError::ContextExceeded {
                prompt: prompt_ids.len(),
                asked: request.max_new_tokens,
                max,
            });
        }
        Sequence::new(id, prompt_ids, request, self.model.new_cache())
    }

    fn vocabulary(&self) -> Vocabulary<'_> {
        Vocabulary {
            tokenizer: self.codec.tokenizer(),
            eos_ids: &self.eos_ids,
            max_positions: self.model.max_positions(),
        }
    }

    /// Generates for `request` alone (in a batch of its own, beside none of the running ones),
    /// calling `on_token` with each token and the text it adds; stops early when it returns
    /// `false`.
    pub fn run(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<GenerateOutput, RunError> {
        // Within the engine's budget, as the slab reserved at attach holds no more (a request
        // over it is refused, as admission to the running batch refuses it).
        let mut alone = Batch::new(self.batch.budget());
        alone.admit(self.sequence(0, request)?)?;
        loop {
            for event in alone.step(&self.model, &self.vocabulary())? {
                match event {
                    SeqEvent::Token(_, token) => {
                        if !on_token(token) {
                            let output =
                                alone.finish(0, FinishReason::Cancelled, &self.vocabulary());
                            return Ok(output.expect("the sequence runs until it finishes"));
                        }
                    }
                    SeqEvent::Finished(_, output) => {
                        return output
                            .map_err(|e| RunError::Device(candle_core::Error::Msg(e.message)))
                    }
                }
            }
        }
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

    /// The weights and the KV slab (all of its budget once [`TextEngine::with_kv_cache_tokens`]
    /// has reserved it at attach, allocated or not: what the fit check counts as
    /// `kv_bytes_per_token` times the budget).
    fn device_bytes(&self) -> u64 {
        self.device_bytes + self.model.kv_slab().device_bytes()
    }

    fn prompt_encoder(&self) -> Option<Arc<dyn wc_actors::PromptEncoder>> {
        Some(self.codec.clone())
    }

    fn batch(&mut self) -> Option<&mut dyn BatchEngine> {
        Some(self)
    }
}

impl<M: CausalLm> BatchEngine for TextEngine<M> {
    fn admit(&mut self, id: SeqId, request: &GenerateRequest) -> Result<Admission, EngineError> {
        let sequence = self.sequence(id, request)?;
        Ok(self.batch.admit(sequence)?)
    }

    fn step(&mut self) -> Result<Vec<SeqEvent>, EngineError> {
        let vocab = Vocabulary {
            tokenizer: self.codec.tokenizer(),
            eos_ids: &self.eos_ids,
            max_positions: self.model.max_positions(),
        };
        Ok(self.batch.step(&self.model, &vocab)?)
    }

    fn cancel(&mut self, id: SeqId) {
        self.batch.cancel(id);
    }

    fn kv_usage(&self) -> KvUsage {
        KvUsage {
            reserved_tokens: self.batch.reserved(),
            budget_tokens: self.batch.budget(),
        }
    }
}
