//! The standalone server's TOML configuration: sections, defaults, value parsing and validation.
//!
//! Every error names the file, line and column it comes from: unknown keys and bad values are
//! caught while parsing (toml's spans), missing model paths and duplicate names right after.
//! The bundled `config.toml` at the repository root documents every key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};
use toml::Spanned;
use wc_actors::{DType, DeviceSpec, ModelSpec, PrewarmOptions, RuntimeConfig, WorkerConfig};

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
    /// Bearer token required on the control endpoints (`/workers`, `/engines`); none: open.
    pub api_key: Option<String>,
    /// Also require the key on the inference endpoints (`/v1/...`).
    pub api_key_for_inference: bool,
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
            api_key_for_inference: false,
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
}

impl Default for RuntimeSection {
    fn default() -> Self {
        let d = RuntimeConfig::default();
        Self {
            attach_timeout: HumanDuration(Duration::from_secs(10)),
            max_restarts: d.max_restarts,
            restart_backoff: HumanDuration(d.restart_backoff),
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

/// How long an idle engine is kept before it may be evicted: a duration, or for ever (`-1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    For(Duration),
    Forever,
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive::For(Duration::from_secs(300))
    }
}

impl KeepAlive {
    /// Whether an engine idle for `idle` may be evicted.
    pub fn expired(&self, idle: Duration) -> bool {
        match self {
            KeepAlive::For(d) => idle >= *d,
            KeepAlive::Forever => false,
        }
    }

    /// Parses "5m", "30s", "250ms", "1h", "0", a bare number of seconds, or a negative for ever.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        match t.strip_prefix('-') {
            Some(rest) => parse_duration(rest).map(|_| KeepAlive::Forever),
            None => parse_duration(t).map(KeepAlive::For),
        }
    }
}

impl fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepAlive::For(d) => write!(f, "{}", format_duration(*d)),
            KeepAlive::Forever => f.write_str("-1"),
        }
    }
}

impl<'de> Deserialize<'de> for KeepAlive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Int(n) if n < 0 => Ok(KeepAlive::Forever),
            NumberOrText::Int(n) => Ok(KeepAlive::For(Duration::from_secs(n as u64))),
            NumberOrText::Float(x) if x < 0.0 => Ok(KeepAlive::Forever),
            NumberOrText::Float(x) => Ok(KeepAlive::For(Duration::from_secs_f64(x))),
            NumberOrText::Text(s) => KeepAlive::parse(&s).map_err(de::Error::custom),
        }
    }
}

/// A duration written as "30s", "5m", "250ms", "1h" or a bare number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let negative = || de::Error::custom("a duration cannot be negative");
        match NumberOrText::deserialize(d)? {
            NumberOrText::Int(n) if n < 0 => Err(negative()),
            NumberOrText::Int(n) => Ok(HumanDuration(Duration::from_secs(n as u64))),
            NumberOrText::Float(x) if x < 0.0 || !x.is_finite() => Err(negative()),
            NumberOrText::Float(x) => Ok(HumanDuration(Duration::from_secs_f64(x))),
            NumberOrText::Text(s) => parse_duration(&s)
                .map(HumanDuration)
                .map_err(de::Error::custom),
        }
    }
}

/// A number of bytes written as an integer or with a unit: "512KiB", "64MiB", "2GB".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Int(n) if n >= 0 => Ok(ByteSize(n as u64)),
            NumberOrText::Text(s) => parse_bytes(&s).map(ByteSize).map_err(de::Error::custom),
            _ => Err(de::Error::custom(
                "expected a byte size such as 1048576, \"512KiB\", \"64MiB\" or \"2GB\"",
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Int(i64),
    Float(f64),
    Text(String),
}

/// Parses "250ms", "30s", "5m", "1h", "1.5s" or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad = || {
        format!(
            "invalid duration `{text}`: expected e.g. \"250ms\", \"30s\", \"5m\", \"1h\" or \"-1\""
        )
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1e3,
        "m" | "min" | "mins" => value * 60.0,
        "h" | "hr" | "hours" => value * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// Writes a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

/// Parses "1048576", "512KiB", "64MiB", "2GiB", "1.5GB", "10K" (K/M/G alone are binary).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad = || {
        format!("invalid byte size `{text}`: expected e.g. \"1048576\", \"512KiB\", \"64MiB\" or \"2GB\"")
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    Ok((value * scale as f64).round() as u64)
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
        let mut seen: Vec<&str> = Vec::new();
        for model in &mut self.models {
            let name = model.name.get_ref();
            if name.trim().is_empty() || name.contains('/') {
                return Err((
                    Some(model.name.span()),
                    format!("invalid model name `{name}`: use a non-empty name without `/`"),
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
