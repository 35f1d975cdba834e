//! A checkpoint's chat template (`tokenizer_config.json`'s `chat_template`, or
//! `chat_template.jinja`) rendered with minijinja the way transformers' `apply_chat_template`
//! renders it, and the chat messages it renders, checked.
//!
//! A template is the checkpoint's code, run on every chat request: each render has a fuel budget
//! (instructions and the data it makes, [`TEMPLATE_FUEL`]) and an output budget (the bytes the
//! rendered prompt may have), so that a looping or expanding template is refused as the model's
//! defect (422) instead of spinning or exhausting the worker's memory.

use std::path::Path;

use minijinja::{Environment, ErrorKind, Value};
use serde_json::{Map, Value as Json};
use wc_actors::EngineError;

use crate::load::{shorten, LoadError};
use crate::models::text::generation_config::read_side_file;

/// The roles a message may have.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Name of the template inside the environment.
const TEMPLATE: &str = "chat";

/// The work one render may do: about one fuel per instruction and per 64 bytes of data made
/// (minijinja's fuel). Real chat templates use a few hundred per message; this bounds a render
/// to well under a second and its data to about 256 MiB.
pub const TEMPLATE_FUEL: u64 = 4_000_000;

/// The most bytes a rendered chat may have when no tighter limit is given: four times the
/// default request body (`[server] max_body_bytes`), and far more than a 128k-token context holds;
/// what the tokenizer makes of it stays within a few hundred MiB.
pub const MAX_RENDERED_BYTES: usize = 4 << 20;

#[path = "chat_template_json.rs"]
mod json;

/// What can go wrong turning messages into a prompt.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("this model has no chat template (no `chat_template` in tokenizer_config.json and no chat_template.jinja): use a plain completion prompt")]
    NoTemplate,
    #[error("the model's chat template does not compile: {}", shorten(.0))]
    Syntax(String),
    #[error("the model's chat template failed to render: {}", shorten(.0))]
    Render(String),
    #[error("the model's chat template refused these messages: {}", shorten(.0))]
    Refused(String),
    #[error(
        "the model's chat template did more work than a render may ({TEMPLATE_FUEL} fuel): the \
         template loops too long or builds too much"
    )]
    OutOfFuel,
    #[error(
        "the model's chat template rendered more than {limit} bytes for these messages (the \
         most a prompt that fits the context can have)"
    )]
    OutputTooLong { limit: usize },
    #[error("message {index}: {}", shorten(.reason))]
    InvalidMessage { index: usize, reason: String },
    #[error("`chat_template_kwargs` must be a JSON object: {}", shorten(.0))]
    InvalidKwargs(String),
    #[error("no messages: give at least one")]
    NoMessages,
    #[error("this model has no tokenizer.json to tokenize the rendered chat")]
    NoTokenizer,
    #[error("tokenizer failed: {}", shorten(.0))]
    Tokenizer(String),
}

impl From<ChatTemplateError> for EngineError {
    fn from(e: ChatTemplateError) -> Self {
        let kind = match &e {
            ChatTemplateError::Tokenizer(_) => wc_actors::ErrorKind::Internal,
            // The model's own template failed: its defect, not the client's.
            ChatTemplateError::Syntax(_)
            | ChatTemplateError::Render(_)
            | ChatTemplateError::OutOfFuel
            | ChatTemplateError::OutputTooLong { .. } => wc_actors::ErrorKind::InvalidModel,
            _ => wc_actors::ErrorKind::InvalidRequest,
        };
        EngineError::new(kind, e.to_string())
    }
}

/// One chat message, as the template sees it (the runtime's type, carried by `Prompt::Chat`).
pub use wc_actors::ChatMessage;

/// Reading chat messages as clients send them, and checking them.
pub trait MessageExt: Sized {
    /// A message in the OpenAI shape: `role` one of [`ROLES`] (or `developer`, OpenAI's newer
    /// name for `system`, read as `system`), `content` a string or a list of
    /// `{"type": "text", "text": ...}` parts (joined with newlines).
    fn from_openai(index: usize, value: &Json) -> Result<Self, ChatTemplateError>;

    /// Checks the role.
    fn check(&self, index: usize) -> Result<(), ChatTemplateError>;
}

impl MessageExt for ChatMessage {
    fn from_openai(index: usize, value: &Json) -> Result<Self, ChatTemplateError> {
        let bad = |reason: String| ChatTemplateError::InvalidMessage { index, reason };
        if !value.is_object() {
            return Err(bad(format!(
                "a message must be an object with `role` and `content`, got {}",
                json_kind(value)
            )));
        }
        let role = value
            .get("role")
            .and_then(Json::as_str)
            .ok_or_else(|| bad("`role` must be a string".into()))?;
        let content = match value.get("content") {
            Some(Json::String(s)) => s.clone(),
            Some(Json::Array(parts)) => parts
                .iter()
                .map(|part| match (part.get("type"), part.get("text")) {
                    (Some(Json::String(t)), Some(Json::String(text))) if t == "text" => {
                        Ok(text.as_str())
                    }
                    _ => Err(bad(
                        "content parts must be `{\"type\": \"text\", \"text\": \"...\"}`".into(),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join("\n"),
            Some(other) => {
                return Err(bad(format!(
                    "`content` must be a string or a list of text parts, got {}",
                    json_kind(other)
                )))
            }
            None => return Err(bad("`content` is missing".into())),
        };
        let role = if role == "developer" { "system" } else { role };
        let message = ChatMessage::new(role, &content);
        message.check(index)?;
        Ok(message)
    }

    fn check(&self, index: usize) -> Result<(), ChatTemplateError> {
        if ROLES.contains(&self.role.as_str()) {
            Ok(())
        } else {
            Err(ChatTemplateError::InvalidMessage {
                index,
                reason: format!(
                    "role `{}` is not one of {}",
                    self.role,
                    ROLES.map(|r| format!("`{r}`")).join(", ")
                ),
            })
        }
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// A compiled chat template with the special tokens it may use.
pub struct ChatTemplate {
    env: Environment<'static>,
    pub bos_token: String,
    pub eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` as transformers does (`trim_blocks`, `lstrip_blocks`, loop controls,
    /// Python string and dict methods, `raise_exception`, `tojson` without HTML escaping).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatTemplateError::Syntax(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_function("raise_exception", |message: String| -> Result<Value, _> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message).with_source(Raised))
        });
        env.add_filter("tojson", json::tojson);
        env.add_template_owned(TEMPLATE, source.to_string())
            .map_err(|e| ChatTemplateError::Syntax(describe(&e)))?;
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The template of the checkpoint in `dir`: `chat_template.jinja`, else `tokenizer_config.json`'s
    /// `chat_template` (a string, or a list of `{name, template}` of which `default` is used);
    /// `Ok(None)` when there is none.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>, LoadError> {
        let config_path = dir.join("tokenizer_config.json");
        let invalid = |path: &Path, reason: String| LoadError::InvalidTokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let config: Json = match read_side_file(&config_path)? {
            Some(text) => {
                serde_json::from_str(&text).map_err(|e| invalid(&config_path, e.to_string()))?
            }
            None => Json::Null,
        };
        let jinja_path = dir.join("chat_template.jinja");
        let (source, path) = match read_side_file(&jinja_path)? {
            Some(text) => (text, jinja_path),
            None => match template_in_config(&config) {
                Ok(Some(text)) => (text, config_path.clone()),
                Ok(None) => return Ok(None),
                Err(reason) => return Err(invalid(&config_path, reason)),
            },
        };
        let token = |name: &str| special_token(config.get(name)).unwrap_or_default();
        Self::new(&source, &token("bos_token"), &token("eos_token"))
            .map(Some)
            .map_err(|e| invalid(&path, e.to_string()))
    }

    /// The prompt text for `messages`; with `add_generation_prompt` it ends where the
    /// assistant's reply begins. At most [`MAX_RENDERED_BYTES`].
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_at_most(messages, add_generation_prompt, MAX_RENDERED_BYTES)
    }

    /// [`Self::render`], refused once the text passes `limit` bytes (rendering stops there).
    pub fn render_at_most(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        limit: usize,
    ) -> Result<String, ChatTemplateError> {
        self.render_with(messages, add_generation_prompt, &Map::new(), limit)
    }

    /// [`Self::render_at_most`] with more variables for the template (vLLM's
    /// `chat_template_kwargs`, e.g. Qwen3's `enable_thinking`); `messages`,
    /// `add_generation_prompt` and the special tokens are this call's, whatever `kwargs` say.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: &Map<String, Json>,
        limit: usize,
    ) -> Result<String, ChatTemplateError> {
        if messages.is_empty() {
            return Err(ChatTemplateError::NoMessages);
        }
        for (index, message) in messages.iter().enumerate() {
            message.check(index)?;
        }
        let template = self
            .env
            .get_template(TEMPLATE)
            .map_err(|e| ChatTemplateError::Syntax(describe(&e)))?;
        let mut out = Bounded {
            text: Vec::new(),
            limit,
            over: false,
        };
        let fixed = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        let context = match kwargs.is_empty() {
            true => fixed,
            // The first context that has a name wins: the fixed variables, then `kwargs`.
            false => {
                minijinja::context! { ..fixed, ..Value::from(minijinja::value::Serde(kwargs)) }
            }
        };
        let rendered = template.render_captured_to(context, &mut out);
        if out.over {
            return Err(ChatTemplateError::OutputTooLong { limit });
        }
        if let Err(e) = rendered {
            return Err(match e.kind() {
                ErrorKind::OutOfFuel => ChatTemplateError::OutOfFuel,
                _ if raised(&e) => ChatTemplateError::Refused(describe(&e)),
                _ => ChatTemplateError::Render(describe(&e)),
            });
        }
        String::from_utf8(out.text)
            .map_err(|_| ChatTemplateError::Render("the output is not UTF-8".into()))
    }
}

/// The rendered text, refusing to grow past `limit` bytes.
struct Bounded {
    text: Vec<u8>,
    limit: usize,
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len().saturating_add(buf.len()) > self.limit {
            self.over = true;
            return Err(std::io::Error::other("the rendered chat is too long"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Marks the errors of the template's own `raise_exception`: it refused the messages.
#[derive(Debug)]
struct Raised;

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raised by the template")
    }
}

impl std::error::Error for Raised {}

/// Whether `e` (or what it wraps) came from `raise_exception`.
fn raised(e: &minijinja::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if cause.is::<Raised>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// `chat_template` of a `tokenizer_config.json`: a string, or named templates of which `default`.
fn template_in_config(config: &Json) -> Result<Option<String>, String> {
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(named)) => {
            for entry in named {
                if entry.get("name").and_then(Json::as_str) == Some("default") {
                    return match entry.get("template") {
                        Some(Json::String(s)) => Ok(Some(s.clone())),
                        _ => Err("the `default` chat template is not a string".into()),
                    };
                }
            }
            Ok(None)
        }
        Some(_) => Err("`chat_template` must be a string or a list of {name, template}".into()),
    }
}

/// A special token as `tokenizer_config.json` writes it: a string, or `{"content": ...}`.
fn special_token(value: Option<&Json>) -> Option<String> {
    match value? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// A minijinja error with its cause and, for render errors, where in the template.
fn describe(e: &minijinja::Error) -> String {
    let mut text = match e.detail() {
        Some(detail) if e.kind() == ErrorKind::InvalidOperation => detail.to_string(),
        _ => e.to_string(),
    };
    if let Some(line) = e.line() {
        if !text.contains("line") {
            text.push_str(&format!(" (template line {line})"));
        }
    }
    text
}

#[cfg(test)]
#[path = "chat_template_tests.rs"]
mod tests;
