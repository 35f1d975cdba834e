//! `serve`: the standalone server (TOML config, Worker Controller HTTP API, OpenAI completions).

use std::path::PathBuf;

use clap::Args;
use wc_actors::DeviceSpec;

use crate::config::{Config, LogFormat, WorkerGroup};

/// Flags override the config file; without `--config`, `./config.toml` is read when present.
#[derive(Args, Debug)]
#[command(
    after_help = "Endpoints: GET /health, GET /ready, GET /metrics, GET /workers, \
    POST|GET /engines, GET|DELETE /engines/{id}, GET /v1/models, POST /v1/completions.\n\
    Ctrl-C or SIGTERM drains in-flight requests and exits 0; a second Ctrl-C exits at once."
)]
pub struct ServeArgs {
    /// TOML config file (default: ./config.toml if it exists, else built-in defaults: one CPU
    /// worker and no models).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to bind (overrides [server] host).
    #[arg(long)]
    host: Option<String>,
    /// Port to bind; 0 picks a free one, printed in the ready line (overrides [server] port).
    #[arg(long)]
    port: Option<u16>,
    /// Bearer token required on /workers and /engines (overrides [server] api_key).
    #[arg(long, env = "WC_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Number of workers, replacing the config's [[workers]] (on --device, default cpu).
    #[arg(long)]
    workers: Option<usize>,
    /// Device of the workers, replacing the config's [[workers]]: cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Log lines as human-readable text or JSON (overrides [server] log_format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = load(&args)?;
    crate::server::logging::init(config.server.log_format);
    let system = actix_web::rt::System::new();
    system.block_on(crate::server::serve(config))
}

/// Reads the config file (or the defaults) and applies the flags.
fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    let default_path = PathBuf::from("config.toml");
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None if default_path.is_file() => Config::load(&default_path)?,
        None => Config::default(),
    };
    if let Some(host) = &args.host {
        config.server.host = host.clone();
    }
    if let Some(port) = args.port {
        config.server.port = port;
    }
    if let Some(key) = &args.api_key {
        config.server.api_key = Some(key.clone()).filter(|k| !k.is_empty());
    }
    if let Some(format) = args.log_format {
        config.server.log_format = format;
    }
    if args.workers.is_some() || args.device.is_some() {
        let count = args.workers.unwrap_or(1);
        anyhow::ensure!(count > 0, "--workers must be at least 1");
        config.workers = vec![WorkerGroup {
            device: args.device.clone().unwrap_or(DeviceSpec::Cpu),
            count,
        }];
    }
    Ok(config)
}
