//! `serve`: the standalone server (TOML config, Worker Controller HTTP API, OpenAI completions).

use std::path::PathBuf;

use clap::Args;
use wc_actors::DeviceSpec;

use crate::config::{check_api_key, check_worker_count, Config, LogFormat, WorkerGroup};

/// Flags override the config file; without `--config`, `./config.toml` is read when present.
#[derive(Args, Debug)]
#[command(
    after_help = "Models: OPT and the Llama family (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3), \
    chosen by config.json's model_type; chats use the checkpoint's own chat template.\n\
    Endpoints: GET /health, GET /ready, GET /metrics, GET /workers, \
    POST|GET /engines, GET|DELETE /engines/{id}, GET /v1/models, POST /v1/completions, \
    POST /v1/chat/completions.\n\
    Security: the key guards control and inference; POST bodies must be application/json; on a \
    loopback address only loopback Host names are answered; POST /engines loads paths only under \
    [server] model_roots.\n\
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
    /// Bearer token required on /workers, /engines and /v1/... (overrides [server] api_key);
    /// /health, /ready and /metrics stay open. An empty key (here, in WC_API_KEY or in the
    /// file) is refused: leave it unset for no auth.
    #[arg(long, env = API_KEY_ENV, hide_env_values = true)]
    api_key: Option<String>,
    /// With --api-key: leave the inference endpoints (/v1/...) open; control stays closed.
    #[arg(long)]
    open_inference: bool,
    /// Number of workers, replacing the config's [[workers]] (on --device, default cpu); 1 to 64.
    #[arg(long)]
    workers: Option<usize>,
    /// Device of the workers, replacing the config's [[workers]]: cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Log lines as human-readable text or JSON (overrides [server] log_format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

/// The environment variable `--api-key` falls back to.
const API_KEY_ENV: &str = "WC_API_KEY";

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
        }];
    }
    config.check().map_err(anyhow::Error::msg)?;
    Ok(config)
}
