//! The standalone server's TOML configuration: sections, defaults and validation (value types in `units`, `[[models]]` in `models`, `[[workers]]` in `workers`).
//!
//! Every error names the file, line and column it comes from: unknown keys and bad values are
//! caught while parsing (toml's spans), missing model paths and duplicate names right after.
//! The bundled `config.toml` at the repository root documents every key.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::load::is_hub_id;
pub use wc_actors::Isolation;
use wc_actors::{DType, PrewarmOptions, RuntimeOptions};

mod checks;
mod models;
mod units;
mod workers;
use checks::{api_key, body_bytes, cors_origins};
pub use checks::{check_api_key, check_cors_origin};
use models::resolve_model;
pub use models::{default_model_name, ModelEntry};
pub use units::{
    format_duration, parse_bytes, parse_duration, ByteSize, HumanDuration, KeepAlive, MAX_DURATION,
};
pub use workers::{check_worker_count, WorkerGroup, MAX_WORKERS};

/// The smallest `max_body_bytes`: a completion request with a short prompt must fit.
pub const MIN_BODY_BYTES: u64 = 1024;

/// The largest `[server] max_tokens` (and `generate --max-new-tokens`): 2^20 tokens, more than
/// any context; what a request adds to its prompt stays far from overflowing.
pub const MAX_TOKENS_CAP: usize = 1 << 20;

/// The largest `[prewarm] kv_cache_tokens`: 2^24 tokens (far beyond what any device holds for
/// one engine); 0 would hold no request at all.
pub const MAX_KV_CACHE_TOKENS: usize = 1 << 24;

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where and how the HTTP server listens.
    #[serde(default)]
    pub server: ServerConfig,
    /// Attach timeout, worker restarts, queue bounds and worker processes: the library's own
    /// options, with its defaults and its duration rule.
    #[serde(default)]
    pub runtime: RuntimeOptions,
    /// What every worker does before any model is known (the library's own options).
    #[serde(default)]
    pub prewarm: PrewarmOptions,
    /// Groups of workers, one group per device; empty means one CPU worker.
    #[serde(default)]
    pub workers: Vec<WorkerGroup>,
    /// Models the server knows by name: attachable on demand, or at start.
    #[serde(default)]
    pub models: Vec<ModelEntry>,
}

/// The `[server]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind.
    pub host: String,
    /// Port to bind; 0 picks a free one (the ready log line says which).
    pub port: u16,
    /// Bearer token required on the control (`/workers`, `/engines`) and inference (`/v1/...`)
    /// endpoints; none: open. Probes and `/metrics` never need it. An empty or blank key is
    /// refused (it would silently turn auth off).
    #[serde(deserialize_with = "api_key")]
    pub api_key: Option<String>,
    /// Leave the inference endpoints open even when `api_key` is set (control stays closed).
    pub open_inference: bool,
    /// Directories whose checkpoints `POST /engines` may load by path; empty: the configured
    /// models' directories and the Hugging Face cache. Relative to the config file.
    pub model_roots: Vec<PathBuf>,
    /// Host names (besides loopback ones) a server bound to loopback answers to.
    pub allowed_hosts: Vec<String>,
    /// Origins allowed to call the API from a browser (CORS), each `scheme://host[:port]`; empty:
    /// no CORS headers at all. `*` is refused (name the origins: the API takes a bearer key).
    #[serde(deserialize_with = "cors_origins")]
    pub cors_allow_origins: Vec<String>,
    /// How long a client has to send a request's head; slower ones get 408.
    pub client_request_timeout: HumanDuration,
    /// Largest request body accepted (at least [`MIN_BODY_BYTES`]); larger bodies get 413.
    #[serde(deserialize_with = "body_bytes")]
    pub max_body_bytes: ByteSize,
    /// Largest `max_tokens` a completion may ask for (1 to [`MAX_TOKENS_CAP`]); more is a 400.
    pub max_tokens: usize,
    /// `max_tokens` of a completion that does not say.
    pub default_max_tokens: usize,
    /// How long in-flight requests may run on after Ctrl-C / SIGTERM before the server stops.
    pub shutdown_deadline: HumanDuration,
    /// How long `/ready` says 503 before the listener closes, so routers stop sending first.
    pub drain_delay: HumanDuration,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Workers that must be able to serve (idle, attaching, serving or detaching: not failed,
    /// restarting or still warming) for `/ready` to say 200; 1 to the number of workers.
    pub min_ready_workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            open_inference: false,
            model_roots: Vec::new(),
            allowed_hosts: Vec::new(),
            cors_allow_origins: Vec::new(),
            client_request_timeout: HumanDuration(Duration::from_secs(10)),
            max_body_bytes: ByteSize(1 << 20),
            max_tokens: 4096,
            default_max_tokens: 16,
            shutdown_deadline: HumanDuration(Duration::from_secs(30)),
            drain_delay: HumanDuration(Duration::ZERO),
            log_format: LogFormat::Text,
            min_ready_workers: 1,
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A configuration that could not be used, with where in which file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The OS error is part of the message (and not also a `source`, which would print it twice).
    #[error("cannot read config file `{}`: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}:{line}:{column}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{}: {reason}", path.display())]
    Whole { path: PathBuf, reason: String },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses and validates config text; `file` names it in errors, relative model paths start
    /// at `base`.
    pub fn parse(text: &str, file: &Path, base: &Path) -> Result<Self, ConfigError> {
        let at = |span: Option<Range<usize>>, reason: String| match span {
            Some(span) => {
                let (line, column) = line_column(text, span.start);
                ConfigError::Invalid {
                    path: file.to_owned(),
                    line,
                    column,
                    reason,
                }
            }
            None => ConfigError::Whole {
                path: file.to_owned(),
                reason,
            },
        };
        let mut config: Config =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().trim().to_owned()))?;
        config
            .resolve(base)
            .map_err(|(span, reason)| at(span, reason))?;
        for model in &mut config.models {
            let (line, _) = line_column(text, model.name.span().start);
            model.origin = format!("{}:{line}", file.display());
        }
        Ok(config)
    }

    /// Checks what parsing cannot (names, paths, counts, the checkpoints of `attach_on_start`
    /// models) and resolves model locations.
    fn resolve(&mut self, base: &Path) -> Result<(), (Option<Range<usize>>, String)> {
        self.check_workers().map_err(|reason| (None, reason))?;
        if !(1..=MAX_TOKENS_CAP).contains(&self.server.max_tokens) {
            return Err((
                None,
                format!(
                    "[server] max_tokens = {} is out of range: 1 to {MAX_TOKENS_CAP}",
                    self.server.max_tokens
                ),
            ));
        }
        if self.runtime.heartbeat_timeout.is_zero() {
            return Err((
                None,
                "[runtime] heartbeat_timeout must be longer than 0s: every worker process \
                 would be killed at once"
                    .into(),
            ));
        }
        if !(1..=MAX_KV_CACHE_TOKENS).contains(&self.prewarm.kv_cache_tokens) {
            return Err((
                None,
                format!(
                    "[prewarm] kv_cache_tokens = {} is out of range: 1 to {MAX_KV_CACHE_TOKENS}",
                    self.prewarm.kv_cache_tokens
                ),
            ));
        }
        if self.server.default_max_tokens > self.server.max_tokens {
            return Err((
                None,
                "[server] default_max_tokens is larger than max_tokens".into(),
            ));
        }
        for root in &mut self.server.model_roots {
            let full = base.join(&*root);
            if !full.is_dir() {
                return Err((
                    None,
                    format!(
                        "[server] model_roots: `{}` is not a directory",
                        full.display()
                    ),
                ));
            }
            *root = full;
        }
        for i in 0..self.models.len() {
            let (before, rest) = self.models.split_at_mut(i);
            resolve_model(&mut rest[0], base, before)?;
        }
        Ok(())
    }

    /// Adds a model given outside the file (`serve --model`): `model` is a checkpoint directory
    /// (relative to the current directory) or, when no such directory exists, a hub id
    /// (`owner/name`) from the local cache. It attaches at start and is never evicted. `name`
    /// defaults to [`default_model_name`]. Checked exactly as a `[[models]]` entry is (name rule,
    /// unique name, `config.json`, the checkpoint's headers), and its dtype's kernels join
    /// `[prewarm] dtypes`. Errors name `origin` (e.g. `--model`).
    pub fn add_model(
        &mut self,
        model: &str,
        name: Option<&str>,
        dtype: Option<DType>,
        origin: &str,
    ) -> Result<&ModelEntry, String> {
        let is_dir = Path::new(model).is_dir();
        if !is_dir && !is_hub_id(model) {
            return Err(format!(
                "{origin} `{model}`: not a directory, nor a hub id (`owner/name`)"
            ));
        }
        let name = match name {
            Some(name) => name.to_owned(),
            None => default_model_name(model),
        };
        let value = |v: &str| Some(Spanned::new(0..0, v.to_owned()));
        let mut entry = ModelEntry {
            name: Spanned::new(0..0, name),
            path: if is_dir { value(model) } else { None },
            hub: if is_dir { None } else { value(model) },
            dtype,
            attach_on_start: true,
            keep_alive: KeepAlive::Forever,
            park: None,
            resolved: String::new(),
            origin: format!("{origin} {model}"),
        };
        resolve_model(&mut entry, Path::new("."), &self.models)
            .map_err(|(_, reason)| format!("{origin} `{model}`: {reason}"))?;
        if let Some(dtype) = dtype {
            if !self.prewarm.dtypes.contains(&dtype) {
                self.prewarm.dtypes.push(dtype);
            }
        }
        self.models.push(entry);
        Ok(self.models.last().expect("just pushed"))
    }

    /// Checks what flags can change after the file was read: the worker counts, that every
    /// `attach_on_start` model has a worker of its own, and the API key.
    pub fn check(&self) -> Result<(), String> {
        self.check_workers()?;
        let workers: usize = self.runtime_config().workers.iter().map(|w| w.count).sum();
        let at_start: Vec<&str> = self
            .models
            .iter()
            .filter(|m| m.attach_on_start)
            .map(|m| m.name())
            .collect();
        if at_start.len() > workers {
            // Otherwise the extra ones wait `attach_timeout` for a worker that never comes.
            return Err(format!(
                "{} models attach at start ({}) but there are only {workers} workers: \
                 each engine needs a worker of its own",
                at_start.len(),
                at_start.join(", ")
            ));
        }
        if !(1..=workers).contains(&self.server.min_ready_workers) {
            // 0 would call a server with no worker ready; more than there are, never ready.
            return Err(format!(
                "[server] min_ready_workers = {} is out of range: 1 to the {workers} worker(s)",
                self.server.min_ready_workers
            ));
        }
        if let Some(key) = &self.server.api_key {
            check_api_key(key)?;
        }
        Ok(())
    }

    /// The configured model with this name.
    pub fn model(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.name() == name)
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
