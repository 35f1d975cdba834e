//! What an attach reads of a checkpoint besides its weights, checked without them: the EOS ids
//! and sampling defaults of `generation_config.json`, the chat template compiled, and the
//! tokenizer and context proven usable with the model's vocabulary. The engine build and the
//! pre-eviction check share it, so a checkpoint that would fail the build fails before a live
//! engine is evicted for it.

use std::path::Path;
use std::sync::Arc;

use tokenizers::Tokenizer;

use super::chat_template::ChatTemplate;
use super::generation_config::{generation_config, SamplingDefaults};
use super::prompt::PromptCodec;
use crate::load::LoadError;

/// A checkpoint's text files, read and checked against the model's vocabulary and context.
pub struct TextFiles {
    /// `generation_config.json`'s end-of-sequence ids (empty without one).
    pub eos_ids: Vec<u32>,
    /// `generation_config.json`'s sampling defaults (none without one).
    pub sampling: SamplingDefaults,
    /// The prompt codec: tokenizer, chat template, vocabulary and context.
    pub codec: PromptCodec,
}

impl TextFiles {
    /// Reads the side files in `dir` and checks them, with `tokenizer`, against a model of
    /// `vocab_size` tokens and `max_positions` positions. Each failure is the model's defect.
    pub fn read(
        dir: &Path,
        tokenizer: Option<Arc<Tokenizer>>,
        vocab_size: usize,
        max_positions: usize,
    ) -> Result<Self, LoadError> {
        if max_positions < 2 {
            return Err(LoadError::InvalidConfig {
                path: dir.join("config.json"),
                reason: format!("{max_positions} positions hold no prompt and generated token"),
            });
        }
        let (eos_ids, sampling) = generation_config(dir)?;
        let template = ChatTemplate::from_dir(dir)?;
        let codec = PromptCodec::new(tokenizer, template, vocab_size, max_positions);
        codec
            .check_at_attach()
            .map_err(|reason| LoadError::InvalidTokenizer {
                path: dir.join("tokenizer.json"),
                reason,
            })?;
        Ok(Self {
            eos_ids,
            sampling,
            codec,
        })
    }
}
