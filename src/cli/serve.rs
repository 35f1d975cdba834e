//! `serve`: the standalone server (TOML config, Worker Controller HTTP API, OpenAI completions).

use std::path::PathBuf;

use std::net::IpAddr;

use clap::builder::FalseyValueParser;
use clap::Args;
use wc_actors::{DType, DeviceSpec};

use crate::config::{check_api_key, check_worker_count, Config, LogFormat, WorkerGroup};

/// `serve --help`'s closing text; its model types are the family table's.
fn after_help() -> String {
    format!(
        "Models: chosen by config.json's model_type ({}); chats use the checkpoint's own chat \
         template.\n{}",
        crate::models::family::model_types_listed().replace('`', ""),
        "Endpoints: GET /health, GET /ready, GET /metrics, GET /workers, \
    POST|GET /engines, GET|DELETE /engines/{id}, GET /v1/models, POST /v1/completions, \
    POST /v1/chat/completions.\n\
    Security: the key guards control and inference; POST bodies must be application/json; on a \
    loopback address only loopback Host names are answered; POST /engines loads paths only under \
    [server] model_roots. Bound to a non-loopback address without a key, the server warns at \
    start: anyone who reaches it may attach, detach and generate.\n\
    Ctrl-C or SIGTERM drains in-flight requests and exits 0; a second Ctrl-C exits at once.\n\
    One model, no config file: worker-controller serve --model facebook/opt-125m --device cuda:0"
    )
}

/// Flags override the config file; every flag also reads a `WC_*` environment variable (a flag
/// given wins). Without `--config` and without `--model`, `./config.toml` is read when present.
#[derive(Args, Debug)]
#[command(after_help = after_help())]
pub struct ServeArgs {
    /// TOML config file (default: ./config.toml if it exists and no --model is given, else
    /// built-in defaults: one CPU worker and no models).
    #[arg(long, short, env = "WC_CONFIG")]
    config: Option<PathBuf>,
    /// A model to serve: a checkpoint directory or a hub id in the local cache (repeatable; in
    /// the environment, comma-separated). Each becomes a [[models]] entry that attaches at start
    /// and is never evicted, added to the config file's models.
    #[arg(
        long = "model",
        value_name = "DIR|HUB_ID",
        env = "WC_MODEL",
        value_delimiter = ','
    )]
    models: Vec<String>,
    /// The name clients use for the --model in the same position (repeatable; default: the
    /// directory's last component or the hub id's name part, e.g. opt-125m).
    #[arg(
        long = "served-model-name",
        value_name = "NAME",
        env = "WC_SERVED_MODEL_NAME",
        value_delimiter = ','
    )]
    served_model_names: Vec<String>,
    /// dtype of every --model on the device: f32, f16 or bf16 (default: the checkpoint's own);
    /// its kernels are also prewarmed.
    #[arg(long, env = "WC_DTYPE")]
    dtype: Option<DType>,
    /// Address to bind (overrides [server] host).
    #[arg(long, env = "WC_HOST")]
    host: Option<String>,
    /// Port to bind; 0 picks a free one, printed in the ready line (overrides [server] port).
    #[arg(long, env = "WC_PORT")]
    port: Option<u16>,
    /// Bearer token required on /workers, /engines and /v1/... (overrides [server] api_key);
    /// /health, /ready and /metrics stay open. An empty key (here, in WC_API_KEY or in the
    /// file) is refused: leave it unset for no auth.
    #[arg(long, env = API_KEY_ENV, hide_env_values = true)]
    api_key: Option<String>,
    /// With --api-key: leave the inference endpoints (/v1/...) open; control stays closed. In
    /// the environment: 1/true/yes, or 0/false/no.
    #[arg(long, env = "WC_OPEN_INFERENCE", value_parser = FalseyValueParser::new())]
    open_inference: bool,
    /// Number of workers, replacing the config's [[workers]] (on --device, default cpu); 1 to 64.
    #[arg(long, env = "WC_WORKERS")]
    workers: Option<usize>,
    /// Device of the workers, replacing the config's [[workers]]: cpu, cuda or cuda:N.
    #[arg(long, env = "WC_DEVICE")]
    device: Option<DeviceSpec>,
    /// Log lines as human-readable text or JSON (overrides [server] log_format).
    #[arg(long, value_enum, env = "WC_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Read the config file and apply the flags and WC_* variables as a start would, print
    /// `config ok` and exit 0 (non-zero, naming the fault, on an unknown key or a bad value);
    /// nothing is bound, started or loaded.
    #[arg(long)]
    check_config: bool,
}

/// The environment variable `--api-key` falls back to.
const API_KEY_ENV: &str = "WC_API_KEY";

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = load(&args)?;
    if args.check_config {
        println!(
            "config ok: {} worker group(s), {} model(s)",
            config.workers.len(),
            config.models.len()
        );
        return Ok(());
    }
    let threads = config.runtime.isolation == wc_actors::Isolation::Thread;
    super::allocator::keep_freed_host_memory(threads);
    crate::server::logging::init(config.server.log_format);
    if exposed_without_key(&config) {
        tracing::warn!(
            host = %config.server.host,
            "NO API KEY on a non-loopback address: anyone who can reach {} may attach and detach \
             models and run completions. Set {API_KEY_ENV} (or --api-key, [server] api_key), or \
             bind to 127.0.0.1.",
            config.server.host
        );
    }
    let system = actix_web::rt::System::new();
    system.block_on(crate::server::serve(config))
}

/// Reads the config file (or the defaults) and applies the flags.
fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    let default_path = PathBuf::from("config.toml");
    // `serve --model X` serves X alone unless a config file is named: the one in the current
    // directory is for `serve` without arguments.
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None if args.models.is_empty() && default_path.is_file() => Config::load(&default_path)?,
        None => Config::default(),
    };
    add_models(&mut config, args)?;
    if let Some(host) = &args.host {
        config.server.host = host.clone();
    }
    if let Some(port) = args.port {
        config.server.port = port;
    }
    if args.open_inference {
        config.server.open_inference = true;
    }
    match &args.api_key {
        Some(key) => {
            check_api_key(key).map_err(|e| anyhow::anyhow!("--api-key (or {API_KEY_ENV}): {e}"))?;
            config.server.api_key = Some(key.clone());
        }
        // clap reads an empty variable as unset: that must not quietly mean "no auth".
        None if std::env::var_os(API_KEY_ENV).is_some() => {
            anyhow::bail!(
                "{API_KEY_ENV} is set but empty: give a non-empty key, or unset it for no auth"
            )
        }
        None => {}
    }
    if let Some(format) = args.log_format {
        config.server.log_format = format;
    }
    if args.workers.is_some() || args.device.is_some() {
        let count = args.workers.unwrap_or(1);
        check_worker_count(count).map_err(|e| anyhow::anyhow!("--workers: {e}"))?;
        config.workers = vec![WorkerGroup {
            device: args.device.clone().unwrap_or(DeviceSpec::Cpu),
            count,
            cpus: None,
        }];
    }
    config.check().map_err(anyhow::Error::msg)?;
    Ok(config)
}

/// Adds the `--model` entries, each with the `--served-model-name` in its position.
fn add_models(config: &mut Config, args: &ServeArgs) -> anyhow::Result<()> {
    if args.served_model_names.len() > args.models.len() {
        anyhow::bail!(
            "{} --served-model-name values (or WC_SERVED_MODEL_NAME entries) for {} --model: \
             give one name per model, in the same order",
            args.served_model_names.len(),
            args.models.len()
        );
    }
    if args.dtype.is_some() && args.models.is_empty() {
        anyhow::bail!(
            "--dtype (or WC_DTYPE) applies to --model entries; a config file's models set \
             `dtype` in their [[models]] entry"
        );
    }
    for (i, model) in args.models.iter().enumerate() {
        let name = args.served_model_names.get(i).map(String::as_str);
        config
            .add_model(model, name, args.dtype, "--model")
            .map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Whether the server will listen beyond this machine with no API key.
fn exposed_without_key(config: &Config) -> bool {
    config.server.api_key.is_none() && !is_loopback_host(&config.server.host)
}

/// `localhost`, 127.0.0.0/8 and ::1 (bracketed or not).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_count_as_private() {
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "localhost",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["0.0.0.0", "::", "10.0.0.1", "example.com", ""] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
