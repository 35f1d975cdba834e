//! `POST /tokenize` and `POST /detokenize` in vLLM's shapes: `{"model", "prompt"}` or
//! `{"model", "messages"}` → `{"count", "max_model_len", "tokens", "token_strs"}`, and
//! `{"model", "tokens"}` → `{"prompt"}`.
//!
//! The codec is the one an attach builds for the engine ([`TextFiles`]: the checkpoint's
//! `tokenizer.json`, its chat template, checked against the model's vocabulary and context),
//! read from the attached engine's checkpoint on first use and kept while that engine is
//! attached. The runtime's handle encodes prompts only on the way into a generation, and a
//! worker process's engine has no decoder the server can reach, so the server keeps its own
//! copy; the text is the engine's text, token for token. A configured model that is not
//! attached is attached on demand, as a completion would.
//!
//! As in vLLM, a text gets the tokenizer's special tokens (`add_special_tokens`, default true)
//! and a chat is rendered with the generation prompt (`add_generation_prompt`, default true)
//! and tokenized without adding special tokens again; a prompt longer than the context is
//! counted, not refused (`count` over `max_model_len` says it would not fit). What any prompt
//! may cost is bounded as for completions: its characters, and its rendered chat's bytes.

use std::sync::{Arc, Mutex};

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use tokenizers::Tokenizer;
use wc_actors::{EngineError, EngineInfo, GenerateError};

use super::body::JsonBody;
use super::error::ApiError;
use super::params;
use super::state::AppState;
use crate::load::host_cache::read_tokenizer;
use crate::load::{Checkpoint, LoadError};
use crate::models::text::chat_template::{ChatMessage, ChatTemplateError};
use crate::models::text::prompt::PromptCodec;
use crate::models::text::text_files::TextFiles;
use crate::models::{FamilyConfig, RunError};

/// Codecs kept at most (one per attached engine, the oldest dropped first).
const MAX_CODECS: usize = 16;

/// The parameters `/tokenize` uses.
const TOKENIZE_PARAMETERS: [&str; 6] = [
    "model",
    "prompt",
    "messages",
    "add_special_tokens",
    "add_generation_prompt",
    "return_token_strs",
];

/// The parameters `/detokenize` uses.
const DETOKENIZE_PARAMETERS: [&str; 2] = ["model", "tokens"];

/// One engine's codec and context, as its attach read them.
struct Codec {
    /// `(engine name, checkpoint, engine id)`: a new attach is a new key.
    key: String,
    codec: PromptCodec,
    vocab_size: usize,
    max_model_len: usize,
}

/// The codecs read so far, most recent last.
static CODECS: Mutex<Vec<Arc<Codec>>> = Mutex::new(Vec::new());

fn key_of(engine: &EngineInfo) -> String {
    format!("{}\0{}\0{:?}", engine.name, engine.model, engine.engine_id)
}

/// Reads what an attach of `model` (the engine's checkpoint) reads besides its weights,
/// resolving it as the attach did: a configured model as configured, a directory a client
/// named by the canonical path it was admitted as (a link swapped in since is refused).
fn read_codec(key: String, model: &str, configured: bool) -> Result<Codec, LoadError> {
    let checkpoint = match configured {
        true => Checkpoint::resolve(model)?,
        false => Checkpoint::resolve_canonical(model)?,
    };
    let config = FamilyConfig::of(&checkpoint)?;
    let (vocab_size, max_model_len) = (config.vocab_size(), config.max_positions());
    let tokenizer = checkpoint
        .tokenizer
        .as_deref()
        .map(read_tokenizer)
        .transpose()?;
    let files = TextFiles::read(
        &checkpoint.dir,
        tokenizer.map(Arc::new),
        vocab_size,
        max_model_len,
    )
    .map_err(|e| e.relative_to(&checkpoint.dir))?;
    Ok(Codec {
        key,
        codec: files.codec,
        vocab_size,
        max_model_len,
    })
}

/// An error of the engine's kind (status and type as a completion would answer it).
fn engine_error(e: impl Into<EngineError>, state: &AppState) -> ApiError {
    ApiError::from(GenerateError::Engine(e.into())).redacted(&state.model_roots)
}

/// The engine serving `model` (attached on demand when it is a configured model). Without a
/// `model`, the one model the server serves (attached or configured), if there is one.
async fn engine_for(state: &AppState, model: Option<&str>) -> Result<EngineInfo, ApiError> {
    let engines = || async {
        state
            .handle
            .list_engines()
            .await
            .map_err(|_| ApiError::shutting_down())
    };
    let attached = engines().await?;
    let name = match model {
        Some(name) => name.to_owned(),
        None => {
            let mut served: Vec<&str> = attached.iter().map(|e| e.name.as_str()).collect();
            served.extend(state.config.models.iter().map(|m| m.name()));
            served.sort_unstable();
            served.dedup();
            match served.as_slice() {
                [only] => (*only).to_owned(),
                _ => {
                    return Err(ApiError::bad_request(
                        "`model` is required: this server serves more than one model (or none)",
                    ))
                }
            }
        }
    };
    if name.is_empty() {
        return Err(ApiError::bad_request("`model` must not be empty"));
    }
    if let Some(engine) = attached.into_iter().find(|e| e.name == name) {
        return Ok(engine);
    }
    let Some(configured) = state.config.model(&name) else {
        return Err(ApiError::model_not_found(&name));
    };
    state.pool.ensure(configured, &state.metrics).await?;
    engines()
        .await?
        .into_iter()
        .find(|e| e.name == name)
        .ok_or_else(|| ApiError::model_not_found(&name))
}

/// The codec of the engine serving `model`, read on first use (off the HTTP thread).
async fn codec_for(state: &AppState, model: Option<&str>) -> Result<Arc<Codec>, ApiError> {
    let engine = engine_for(state, model).await?;
    let key = key_of(&engine);
    if let Some(found) = locked().iter().find(|c| c.key == key) {
        return Ok(found.clone());
    }
    let configured = state
        .config
        .model(&engine.name)
        .is_some_and(|m| m.resolved == engine.model);
    let read = web::block(move || read_codec(key, &engine.model, configured))
        .await
        .map_err(|e| internal(format!("reading the tokenizer did not finish: {e}")))?;
    let codec = Arc::new(read.map_err(|e| engine_error(e, state))?);
    let mut codecs = locked();
    if let Some(found) = codecs.iter().find(|c| c.key == codec.key) {
        return Ok(found.clone());
    }
    if codecs.len() >= MAX_CODECS {
        codecs.remove(0);
    }
    codecs.push(codec.clone());
    Ok(codec)
}

fn locked() -> std::sync::MutexGuard<'static, Vec<Arc<Codec>>> {
    CODECS.lock().unwrap_or_else(|p| p.into_inner())
}

fn internal(message: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
}

/// A `/tokenize` body.
#[derive(Debug, Deserialize)]
struct TokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Value>>,
    #[serde(default)]
    add_special_tokens: Option<bool>,
    #[serde(default)]
    add_generation_prompt: Option<bool>,
    #[serde(default)]
    return_token_strs: bool,
}

/// What to tokenize.
enum Input {
    Text(String),
    Chat(Vec<ChatMessage>),
}

impl TokenizeRequest {
    fn check(body: Value) -> Result<(Self, Input), ApiError> {
        let used = params::used(body, &TOKENIZE_PARAMETERS)?;
        let request: Self = serde_json::from_value(used)
            .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
        let input = match (&request.prompt, &request.messages) {
            (Some(text), None) => {
                if request.add_generation_prompt.is_some() {
                    return Err(ApiError::bad_request(
                        "`add_generation_prompt` applies to `messages`, not to a `prompt`",
                    ));
                }
                Input::Text(text.clone())
            }
            (None, Some(messages)) => Input::Chat(super::chat::parse_messages(messages)?),
            _ => {
                return Err(ApiError::bad_request(
                    "give either `prompt` (a string) or `messages`, not both",
                ))
            }
        };
        Ok((request, input))
    }
}

impl Codec {
    fn tokenizer(&self) -> Result<&Tokenizer, RunError> {
        self.codec.tokenizer().ok_or(RunError::NoTokenizer)
    }

    /// `text`'s ids, within the bounds a completion's prompt has (the engine's own tokenizing).
    fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>, RunError> {
        self.codec.tokenize(text, special)
    }

    fn check_chars(&self, chars: usize) -> Result<(), RunError> {
        let limit = self.codec.max_prompt_chars();
        match chars > limit {
            true => Err(RunError::PromptFarTooLong {
                limit,
                max: self.max_model_len,
            }),
            false => Ok(()),
        }
    }

    /// A chat rendered by the model's template, then tokenized.
    fn tokenize_chat(
        &self,
        messages: &[ChatMessage],
        generation_prompt: bool,
        special: bool,
    ) -> Result<Vec<u32>, RunError> {
        let limit = self.codec.max_prompt_chars();
        let chars = messages.iter().fold(0usize, |n, m| {
            n.saturating_add(m.content.chars().take(limit + 1).count())
        });
        self.check_chars(chars)?;
        let template = self
            .codec
            .chat_template()
            .ok_or(RunError::Chat(ChatTemplateError::NoTemplate))?;
        let text = template
            .render_at_most(messages, generation_prompt, self.codec.max_rendered_bytes())
            .map_err(RunError::Chat)?;
        self.tokenize(&text, special)
    }
}

/// `POST /tokenize`.
pub async fn tokenize(
    state: web::Data<AppState>,
    body: JsonBody<Value>,
) -> Result<HttpResponse, ApiError> {
    let (request, input) = TokenizeRequest::check(body.into_inner())?;
    let codec = codec_for(&state, request.model.as_deref()).await?;
    let (job, strs) = (codec.clone(), request.return_token_strs);
    let tokens = web::block(
        move || -> Result<(Vec<u32>, Option<Vec<String>>), RunError> {
            let ids = match &input {
                Input::Text(text) => job.tokenize(text, request.add_special_tokens.unwrap_or(true)),
                Input::Chat(messages) => job.tokenize_chat(
                    messages,
                    request.add_generation_prompt.unwrap_or(true),
                    request.add_special_tokens.unwrap_or(false),
                ),
            }?;
            let strs = strs.then(|| {
                let tokenizer = job.codec.tokenizer();
                ids.iter()
                    .map(|&id| {
                        tokenizer
                            .and_then(|t| t.id_to_token(id))
                            .unwrap_or_default()
                    })
                    .collect()
            });
            Ok((ids, strs))
        },
    )
    .await
    .map_err(|e| internal(format!("tokenizing did not finish: {e}")))?;
    let (tokens, token_strs) = tokens.map_err(|e| engine_error(e, &state))?;
    Ok(HttpResponse::Ok().json(json!({
        "count": tokens.len(),
        "max_model_len": codec.max_model_len,
        "tokens": tokens,
        "token_strs": token_strs,
    })))
}

/// A `/detokenize` body.
#[derive(Debug, Deserialize)]
struct DetokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    tokens: Vec<u32>,
}

/// `POST /detokenize`: the text of `tokens`, special tokens included (as vLLM decodes).
pub async fn detokenize(
    state: web::Data<AppState>,
    body: JsonBody<Value>,
) -> Result<HttpResponse, ApiError> {
    let used = params::used(body.into_inner(), &DETOKENIZE_PARAMETERS)?;
    let request: DetokenizeRequest = serde_json::from_value(used)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
    let codec = codec_for(&state, request.model.as_deref()).await?;
    if let Some(&id) = request
        .tokens
        .iter()
        .find(|&&id| id as usize >= codec.vocab_size)
    {
        return Err(engine_error(
            RunError::TokenOutOfRange {
                id,
                vocab: codec.vocab_size,
            },
            &state,
        ));
    }
    let job = codec.clone();
    let text = web::block(move || -> Result<String, RunError> {
        job.tokenizer()?
            .decode(&request.tokens, false)
            .map_err(|e| RunError::Tokenizer(e.to_string()))
    })
    .await
    .map_err(|e| internal(format!("detokenizing did not finish: {e}")))?;
    let prompt = text.map_err(|e| engine_error(e, &state))?;
    Ok(HttpResponse::Ok().json(json!({ "prompt": prompt })))
}
