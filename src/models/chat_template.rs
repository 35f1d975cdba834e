//! A checkpoint's chat template (`tokenizer_config.json`'s `chat_template`, or
//! `chat_template.jinja`) rendered with minijinja the way transformers' `apply_chat_template`
//! renders it, and the chat messages it renders, checked.

use std::path::Path;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde_json::Value as Json;
use wc_actors::EngineError;

use crate::error::LoadError;
use crate::models::generation_config::read_side_file;

/// The roles a message may have.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Name of the template inside the environment.
const TEMPLATE: &str = "chat";

/// What can go wrong turning messages into a prompt.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("this model has no chat template (no `chat_template` in tokenizer_config.json and no chat_template.jinja): use a plain completion prompt")]
    NoTemplate,
    #[error("the model's chat template does not compile: {0}")]
    Syntax(String),
    #[error("the model's chat template failed to render: {0}")]
    Render(String),
    #[error("message {index}: {reason}")]
    InvalidMessage { index: usize, reason: String },
    #[error("no messages: give at least one")]
    NoMessages,
    #[error("this model has no tokenizer.json to tokenize the rendered chat")]
    NoTokenizer,
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
}

impl From<ChatTemplateError> for EngineError {
    fn from(e: ChatTemplateError) -> Self {
        let kind = match &e {
            ChatTemplateError::Tokenizer(_) => wc_actors::ErrorKind::Internal,
            _ => wc_actors::ErrorKind::InvalidRequest,
        };
        EngineError::new(kind, e.to_string())
    }
}

/// One chat message, as the template sees it (the runtime's type, carried by `Prompt::Chat`).
pub use wc_actors::ChatMessage;

/// Reading chat messages as clients send them, and checking them.
pub trait MessageExt: Sized {
    /// A message in the OpenAI shape: `role` one of [`ROLES`], `content` a string or a list of
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
        env.add_function("raise_exception", |message: String| -> Result<Value, _> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_filter("tojson", tojson);
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
    /// assistant's reply begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
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
        template
            .render(minijinja::context! {
                messages => Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| ChatTemplateError::Render(describe(&e)))
    }
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

/// `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False)` with
/// optional `indent`, keys in their order, no HTML escaping.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Accepted as transformers' `tojson` accepts them; the output is the same for chat prompts.
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_python_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// Writes `v` as Python's `json.dumps` does: `", "` and `": "` separators without indent.
fn write_python_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    let quote = |s: &str| Json::String(s.to_string()).to_string();
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match (i64::try_from(v.clone()), f64::try_from(v.clone())) {
            (Ok(i), _) if !v.to_string().contains('.') => out.push_str(&i.to_string()),
            (_, Ok(f)) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 => {
                out.push_str(&format!("{f:.1}"))
            }
            (_, Ok(f)) if f.is_finite() => out.push_str(&f.to_string()),
            _ => out.push_str(&v.to_string()),
        },
        ValueKind::String => out.push_str(&quote(v.as_str().unwrap_or_default())),
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&quote(&key.to_string()));
                out.push_str(": ");
                write_python_json(&v.get_item(key)?, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("cannot convert {} to JSON", v.kind()),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "chat_template_tests.rs"]
mod tests;
