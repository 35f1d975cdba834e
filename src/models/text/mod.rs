//! The text engine every family shares: one [`TextEngine`] over any [`super::CausalLm`], its
//! batch of sequences, prompts and chat templates, sampling, detokenizing, and the checkpoint's
//! text files (tokenizer, generation config, chat template) read and checked once.

pub mod batch;
pub mod chat_template;
pub mod detokenizer;
pub mod engine;
pub mod error;
pub mod generate;
pub mod generation_config;
pub mod prompt;
pub mod sampler;
pub mod sequence;
pub mod text_files;

pub use engine::TextEngine;
pub use error::RunError;
