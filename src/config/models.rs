//! One `[[models]]` entry of the server's configuration, and how its `path` or `hub` id is
//! resolved to a checkpoint (relative to the config file, or in the local Hugging Face cache).

use std::ops::Range;
use std::path::{Component, Path};

use serde::Deserialize;
use toml::Spanned;
use wc_actors::{DType, ModelSpec};

use super::KeepAlive;

/// One `[[models]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The name clients use (`model` in `/v1/completions`, engine name once attached).
    pub name: Spanned<String>,
    /// A checkpoint directory; relative paths start at the config file's directory.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// A Hugging Face hub id, looked up in the local cache (e.g. "facebook/opt-125m").
    #[serde(default)]
    pub hub: Option<Spanned<String>>,
    /// The dtype on the device; default: the checkpoint's own.
    #[serde(default)]
    pub dtype: Option<DType>,
    /// Attach before the server says it is ready.
    #[serde(default)]
    pub attach_on_start: bool,
    /// How long it stays attached while idle before another model may evict it.
    #[serde(default)]
    pub keep_alive: KeepAlive,
    /// Whether a worker keeps its weights on the device ("parked") once it is detached;
    /// unset: the worker's `[prewarm] park_detached`.
    #[serde(default)]
    pub park: Option<bool>,
    /// Where the checkpoint is, resolved after parsing (the `path`, or the `hub` id).
    #[serde(skip)]
    pub resolved: String,
    /// Where the entry is written (`file:line`), for errors found after loading.
    #[serde(skip)]
    pub origin: String,
}

impl ModelEntry {
    /// The configured name.
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }

    /// The runtime's model spec.
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            model: self.resolved.clone(),
            dtype: self.dtype,
            canonical: false,
            park: self.park,
        }
    }
}

/// The name a `serve --model` entry gets when none is given: a directory's last component, or a
/// hub id's name part (`facebook/opt-125m` → `opt-125m`), made to satisfy the engine name rule:
/// characters other than letters, digits, `.`, `_` and `-` become `-`, at most 128 characters,
/// and a name of digits alone gets a `model-` prefix.
pub fn default_model_name(model: &str) -> String {
    let path = Path::new(model);
    let last = if path.is_dir() {
        // `models/opt/` ends in `opt`; `.` or `..` are named by what they resolve to.
        match path.components().next_back() {
            Some(Component::Normal(part)) => Some(part.to_string_lossy().into_owned()),
            _ => path
                .canonicalize()
                .ok()
                .and_then(|full| Some(full.file_name()?.to_string_lossy().into_owned())),
        }
    } else {
        model.rsplit('/').next().map(str::to_owned)
    };
    let mut name: String = last
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    if name.is_empty() || name == "." || name == ".." {
        name = "model".into();
    } else if name.bytes().all(|b| b.is_ascii_digit()) {
        name = format!("model-{name}");
        name.truncate(128);
    }
    name
}

/// Checks one model entry (name rule, unique among `earlier`, path or hub id, the checkpoint of an
/// `attach_on_start` model) and resolves where it is; relative paths start at `base`. Errors carry
/// the span of the value they are about.
pub(super) fn resolve_model(
    model: &mut ModelEntry,
    base: &Path,
    earlier: &[ModelEntry],
) -> Result<(), (Option<Range<usize>>, String)> {
    let name = model.name.get_ref();
    if let Err(reason) = wc_actors::check_engine_name(name) {
        return Err((
            Some(model.name.span()),
            format!("invalid model name `{name}`: {reason}"),
        ));
    }
    if earlier.iter().any(|m| m.name() == name.as_str()) {
        return Err((
            Some(model.name.span()),
            format!("model name `{name}` is used twice"),
        ));
    }
    model.resolved = match (&model.path, &model.hub) {
        (Some(path), None) => {
            let full = base.join(path.get_ref());
            if !full.is_dir() {
                return Err((
                    Some(path.span()),
                    format!(
                        "model `{name}`: path `{}` is not a directory",
                        full.display()
                    ),
                ));
            }
            if !full.join("config.json").is_file() {
                return Err((
                    Some(path.span()),
                    format!(
                        "model `{name}`: `{}` has no config.json (not a Hugging Face \
                             checkpoint directory)",
                        full.display()
                    ),
                ));
            }
            let full = full.canonicalize().unwrap_or(full);
            full.to_string_lossy().into_owned()
        }
        (None, Some(hub)) => hub.get_ref().clone(),
        (Some(path), Some(_)) => {
            return Err((
                Some(path.span()),
                format!("model `{name}`: give `path` or `hub`, not both"),
            ))
        }
        (None, None) => {
            return Err((
                Some(model.name.span()),
                format!("model `{name}`: give its `path` (a checkpoint directory) or `hub` id"),
            ))
        }
    };
    if model.attach_on_start {
        // What an attach would find wrong before loading (config, weight headers, the
        // hub cache), said here with the model's line rather than after start-up.
        if let Err(e) = crate::backend::CandleBackend::default().preflight(&model.spec()) {
            let span = match (&model.path, &model.hub) {
                (Some(path), _) => path.span(),
                (None, Some(hub)) => hub.span(),
                (None, None) => model.name.span(),
            };
            return Err((Some(span), format!("model `{name}` (attach_on_start): {e}")));
        }
    }
    Ok(())
}
