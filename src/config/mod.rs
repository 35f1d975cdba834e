//! The standalone server's TOML configuration: sections, defaults and validation (value types in `units`).
//!
//! Every error names the file, line and column it comes from: unknown keys and bad values are
//! caught while parsing (toml's spans), missing model paths and duplicate names right after.
//! The bundled `config.toml` at the repository root documents every key.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use wc_actors::{DType, DeviceSpec, ModelSpec, PrewarmOptions, RuntimeConfig, WorkerConfig};

mod units;
pub use units::{format_duration, parse_bytes, parse_duration, ByteSize, HumanDuration, KeepAlive};

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where and how the HTTP server listens.
    #[serde(default)]
    pub server: ServerConfig,
    /// Attach timeout and worker restarts.
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// What every worker does before any model is known.
    #[serde(default)]
    pub prewarm: PrewarmConfig,
    /// Groups of workers, one group per device; empty means one CPU worker.
    #[serde(default)]
    pub workers: Vec<WorkerGroup>,
    /// Models the server knows by name: attachable on demand, or at start.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
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
    /// endpoints; none: open. Probes and `/metrics` never need it.
    pub api_key: Option<String>,
    /// Leave the inference endpoints open even when `api_key` is set (control stays closed).
    pub open_inference: bool,
    /// Directories whose checkpoints `POST /engines` may load by path; empty: the configured
    /// models' directories and the Hugging Face cache. Relative to the config file.
    pub model_roots: Vec<PathBuf>,
    /// Host names (besides loopback ones) a server bound to loopback answers to.
    pub allowed_hosts: Vec<String>,
    /// Origins allowed to call the API from a browser (CORS); empty: no CORS headers at all.
    pub cors_allow_origins: Vec<String>,
    /// How long a client has to send a request's head; slower ones get 408.
    pub client_request_timeout: HumanDuration,
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: ByteSize,
    /// Largest `max_tokens` a completion may ask for; more is a 400.
    pub max_tokens: usize,
    /// `max_tokens` of a completion that does not say.
    pub default_max_tokens: usize,
    /// How long in-flight requests may run on after Ctrl-C / SIGTERM before the server stops.
    pub shutdown_deadline: HumanDuration,
    /// How long `/ready` says 503 before the listener closes, so routers stop sending first.
    pub drain_delay: HumanDuration,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
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

/// The `[runtime]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// How long an attach waits for a busy worker before the answer is 503 + `Retry-After`.
    pub attach_timeout: HumanDuration,
    /// Restarts in a row before a failing worker is left failed.
    pub max_restarts: u32,
    /// Wait before restarting a failed worker; doubled for each further failure in a row.
    pub restart_backoff: HumanDuration,
    /// Requests that may wait behind the running one on each engine; more get 503.
    pub max_waiting_requests: usize,
    /// Attaches that may wait for a busy worker; more get 503.
    pub max_waiting_attaches: usize,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        let d = RuntimeConfig::default();
        Self {
            attach_timeout: HumanDuration(Duration::from_secs(10)),
            max_restarts: d.max_restarts,
            restart_backoff: HumanDuration(d.restart_backoff),
            max_waiting_requests: d.max_waiting_requests,
            max_waiting_attaches: d.max_waiting_attaches,
        }
    }
}

/// The `[prewarm]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrewarmConfig {
    /// Dtypes whose kernels each worker loads before any model is known.
    pub dtypes: Vec<DType>,
    /// Size of each pinned host staging buffer (CUDA only), e.g. "256MiB".
    pub staging: ByteSize,
    /// Host memory per worker that keeps recently loaded models for fast re-attach, e.g. "512MiB".
    pub host_cache: ByteSize,
    /// Cap on the device memory each worker may use, e.g. "8GiB"; 0: the whole device.
    pub memory_limit: ByteSize,
}

impl Default for PrewarmConfig {
    fn default() -> Self {
        let d = PrewarmOptions::default();
        Self {
            dtypes: d.dtypes,
            staging: ByteSize(d.staging_bytes),
            host_cache: ByteSize(d.host_cache_bytes),
            memory_limit: ByteSize(d.memory_limit_bytes),
        }
    }
}

impl PrewarmConfig {
    /// The runtime's prewarm options.
    pub fn options(&self) -> PrewarmOptions {
        PrewarmOptions {
            dtypes: self.dtypes.clone(),
            staging_bytes: self.staging.0,
            host_cache_bytes: self.host_cache.0,
            memory_limit_bytes: self.memory_limit.0,
        }
    }
}

/// One `[[workers]]` entry: `count` workers on one device.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerGroup {
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: DeviceSpec,
    /// How many workers (each holds one engine at a time).
    #[serde(default = "one")]
    pub count: usize,
}

fn one() -> usize {
    1
}

/// One `[[models]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients use (`model` in `/v1/completions`, engine name once attached).
    pub name: Spanned<String>,
    /// A checkpoint directory; relative paths start at the config file's directory.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// A Hugging Face hub id, looked up in the local cache (e.g. "facebook/opt-125m").
    #[serde(default)]
    pub hub: Option<String>,
    /// The dtype on the device; default: the checkpoint's own.
    #[serde(default)]
    pub dtype: Option<DType>,
    /// Attach before the server says it is ready.
    #[serde(default)]
    pub attach_on_start: bool,
    /// How long it stays attached while idle before another model may evict it.
    #[serde(default)]
    pub keep_alive: KeepAlive,
    /// Where the checkpoint is, resolved after parsing (the `path`, or the `hub` id).
    #[serde(skip)]
    pub resolved: String,
}

impl ModelConfig {
    /// The configured name.
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }

    /// The runtime's model spec.
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            model: self.resolved.clone(),
            dtype: self.dtype,
        }
    }
}

/// A configuration that could not be used, with where in which file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
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
        Ok(config)
    }

    /// Checks what parsing cannot (names, paths, counts) and resolves model locations.
    fn resolve(&mut self, base: &Path) -> Result<(), (Option<Range<usize>>, String)> {
        for group in &self.workers {
            if group.count == 0 {
                return Err((
                    None,
                    format!("[[workers]] on `{}` has count = 0", group.device),
                ));
            }
        }
        if self.server.max_tokens == 0 {
            return Err((None, "[server] max_tokens must be at least 1".into()));
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
        let mut seen: Vec<&str> = Vec::new();
        for model in &mut self.models {
            let name = model.name.get_ref();
            if let Err(reason) = wc_actors::check_engine_name(name) {
                return Err((
                    Some(model.name.span()),
                    format!("invalid model name `{name}`: {reason}"),
                ));
            }
            if seen.contains(&name.as_str()) {
                return Err((
                    Some(model.name.span()),
                    format!("model name `{name}` is used twice"),
                ));
            }
            seen.push(name);
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
                    let full = full.canonicalize().unwrap_or(full);
                    full.to_string_lossy().into_owned()
                }
                (None, Some(hub)) => hub.clone(),
                (Some(path), Some(_)) => {
                    return Err((
                        Some(path.span()),
                        format!("model `{name}`: give `path` or `hub`, not both"),
                    ))
                }
                (None, None) => {
                    return Err((
                        Some(model.name.span()),
                        format!(
                            "model `{name}`: give its `path` (a checkpoint directory) or `hub` id"
                        ),
                    ))
                }
            };
        }
        Ok(())
    }

    /// The actor runtime's configuration.
    pub fn runtime_config(&self) -> RuntimeConfig {
        let prewarm = self.prewarm.options();
        let workers = if self.workers.is_empty() {
            vec![WorkerConfig {
                device: DeviceSpec::Cpu,
                count: 1,
                prewarm: prewarm.clone(),
            }]
        } else {
            self.workers
                .iter()
                .map(|g| WorkerConfig {
                    device: g.device.clone(),
                    count: g.count,
                    prewarm: prewarm.clone(),
                })
                .collect()
        };
        RuntimeConfig {
            workers,
            attach_timeout: self.runtime.attach_timeout.0,
            max_restarts: self.runtime.max_restarts,
            restart_backoff: self.runtime.restart_backoff.0,
            max_waiting_requests: self.runtime.max_waiting_requests,
            max_waiting_attaches: self.runtime.max_waiting_attaches,
        }
    }

    /// The configured model with this name.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
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
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            Path::new("test.toml"),
            Path::new(env!("CARGO_MANIFEST_DIR")),
        )
    }

    #[test]
    fn empty_file_gives_defaults_and_one_cpu_worker() {
        let config = parse("").unwrap();
        assert_eq!(config.server.port, 8000);
        let runtime = config.runtime_config();
        assert_eq!(runtime.workers.len(), 1);
        assert_eq!(runtime.workers[0].device, DeviceSpec::Cpu);
    }

    #[test]
    fn the_bundled_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let config = Config::load(&path).unwrap();
        assert!(config.models.len() >= 2);
    }

    #[test]
    fn unknown_keys_name_file_line_and_column() {
        let err = parse("[server]\nport = 1\nprot = 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:3:1:"), "{err}");
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected_with_their_line() {
        let err = parse("[[workers]]\ndevice = \"tpu\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:2:"), "{err}");
        assert!(err.contains("unknown device"), "{err}");
        let err = parse("[[models]]\nname = \"a\"\npath = \"tests/fixtures/tiny-opt-prenorm\"\nkeep_alive = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:4:"), "{err}");
    }

    #[test]
    fn missing_model_paths_point_at_the_path() {
        let err = parse("[[models]]\nname = \"a\"\npath = \"no/such/dir\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:3:8:"), "{err}");
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn durations_sizes_and_keep_alive_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("2GB").unwrap(), 2_000_000_000);
        assert_eq!(KeepAlive::parse("-1").unwrap(), KeepAlive::Forever);
        assert_eq!(
            KeepAlive::parse("30s").unwrap(),
            KeepAlive::For(Duration::from_secs(30))
        );
        assert!(!KeepAlive::Forever.expired(Duration::MAX));
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    }
}
