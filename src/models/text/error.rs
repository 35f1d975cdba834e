//! Typed failures while an engine runs a request (was `RunError`), and their mapping to the
//! runtime's kinds.

use wc_actors::{EngineError, ErrorKind};

use crate::load::{candle_message, shorten};

/// Failures while generating.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("prompt has {len} tokens but the model's position table holds {max}")]
    PromptTooLong { len: usize, max: usize },
    #[error(
        "this model's context holds {max} tokens, but {prompt} in the prompt and {asked} to \
         generate were asked for: shorten the prompt or lower max_tokens"
    )]
    ContextExceeded {
        prompt: usize,
        asked: usize,
        max: usize,
    },
    #[error(
        "the prompt has more than {limit} characters, more than the model's {max} positions can \
         hold: shorten it"
    )]
    PromptFarTooLong { limit: usize, max: usize },
    #[error(
        "the model's tokenizer normaliser can grow this {bytes}-byte prompt to {normalised} \
         bytes, more than the {limit} allowed: the tokenizer expands text without bound"
    )]
    NormaliserExpands {
        bytes: usize,
        normalised: usize,
        limit: usize,
    },
    #[error("empty prompt: give at least one token")]
    EmptyPrompt,
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error(
        "the model's tokenizer made token id {id}, outside the model's vocabulary (size {vocab})"
    )]
    TokenizerOutOfVocab { id: u32, vocab: usize },
    #[error("this model has no tokenizer.json: pass token ids instead of text")]
    NoTokenizer,
    #[error("tokenizer failed: {}", shorten(.0))]
    Tokenizer(String),
    #[error("invalid sampling parameter: {0}")]
    InvalidSampling(String),
    #[error(
        "the request needs {needed} KV-cache tokens (prompt plus max_tokens), more than this \
         engine's budget of {budget} (kv_cache_tokens): shorten the prompt or lower max_tokens"
    )]
    KvBudgetExceeded { needed: usize, budget: usize },
    #[error(
        "the sequence needs {needed} KV-cache slots, more than the {reserved} it reserved; it \
         ends alone"
    )]
    KvReservationExceeded { needed: usize, reserved: usize },
    #[error(transparent)]
    Chat(#[from] super::chat_template::ChatTemplateError),
    #[error("device error: {}", candle_message(.0))]
    Device(#[from] candle_core::Error),
}

impl From<RunError> for EngineError {
    fn from(e: RunError) -> Self {
        let e = match e {
            RunError::Chat(chat) => return chat.into(),
            other => other,
        };
        let kind = match &e {
            RunError::Device(inner) => crate::load::cuda::fault_of(inner).kind(),
            RunError::Tokenizer(_) | RunError::KvReservationExceeded { .. } => ErrorKind::Internal,
            // The checkpoint's own tokenizer is at fault, not the client.
            RunError::NormaliserExpands { .. } | RunError::TokenizerOutOfVocab { .. } => {
                ErrorKind::InvalidModel
            }
            _ => ErrorKind::InvalidRequest,
        };
        EngineError::new(kind, e.to_string())
    }
}
