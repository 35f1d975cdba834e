//! The standalone HTTP server: control API, OpenAI completions, probes, metrics, graceful stop.
//!
//! # Layout
//! - [`state`]: what handlers share; [`pool`]: attaches with LRU eviction and keep_alive.
//! - [`control`]: `/workers`, `/engines`; [`completions`] and [`stream`]: `/v1/...`;
//!   [`generation`]: one generation, plain or streamed, followed by the metrics.
//! - [`health`]: `/health`, `/ready`, `/metrics`; [`metrics`]: the Prometheus registry.
//! - [`model_card`]: `/v1/models/{id}`; [`tokenize`]: `/tokenize`, `/detokenize`;
//!   [`version`]: `/version`.
//! - [`error`]: the JSON error shape; [`auth`] and [`middleware`]: API key, request counting;
//!   [`access`]: request ids (`x-request-id`) and the access log.
//! - [`openai`] and [`sse`]: wire shapes; [`shutdown`]: signals; [`logging`]: tracing set-up.
//!
//! Start-up order: the listener is bound first (so `/health` answers and `/ready` says 503 while
//! workers prewarm), then workers prewarm, `attach_on_start` models attach, and one `ready` line
//! is logged with the address. On the first Ctrl-C / SIGTERM `/ready` turns 503, the listener
//! closes after `drain_delay`, in-flight requests get `shutdown_deadline`, then every engine is
//! detached and every worker released.

pub mod access;
pub mod auth;
pub mod body;
pub mod chat;
pub mod completions;
pub mod control;
pub mod error;
pub mod generation;
pub mod health;
pub mod hosts;
pub mod logging;
pub mod logprobs;
pub mod metrics;
pub mod middleware;
pub mod model_access;
pub mod model_card;
pub mod openai;
pub mod params;
pub mod pool;
pub mod routes;
pub mod shutdown;
pub mod sse;
pub mod state;
pub mod stream;
pub mod tokenize;
pub mod version;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_cors::Cors;
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::{from_fn, Condition, NormalizePath, TrailingSlash};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context;
use wc_actors::process::{ProcessBackend, WorkerCommand};
use wc_actors::{Attach, Backend, Handle, Runtime, WorkerState};

use crate::backend::CandleBackend;
use crate::config::{Config, Isolation};
use crate::load::shared_cache::{SharedCache, FD_ENV};
use error::ApiError;
use state::AppState;

/// Registers every endpoint of the route table and the 404 default. Bodies are read by
/// [`body::JsonBody`] within `[server] max_body_bytes` and `client_request_timeout`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for endpoint in routes::endpoints() {
        let mut resource =
            web::resource(endpoint.path).default_service(web::to(method_not_allowed));
        for route in endpoint.into_routes() {
            resource = resource.route(route);
        }
        cfg.service(resource);
    }
    cfg.default_service(web::to(not_found));
}

/// CORS for the configured origins (none configured: the middleware is left out entirely).
fn cors(origins: &[String]) -> Cors {
    origins
        .iter()
        .fold(Cors::default(), |cors, origin| cors.allowed_origin(origin))
        .allowed_methods([Method::GET, Method::POST, Method::DELETE])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static(access::REQUEST_ID_HEADER),
        ])
        .expose_headers([header::HeaderName::from_static(access::REQUEST_ID_HEADER)])
        .max_age(600)
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::route_not_found(req.path()))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on `{}`", req.method(), req.path()),
    ))
}

/// Runs the server on `listener` until `shutdown` resolves, then drains and stops. Call
/// inside an actix system. Signals are the caller's business (the CLI turns Ctrl-C / SIGTERM
/// into `shutdown`; tests use a channel).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let (backend, host_cache) = backend(&config)?;
    let handle = Runtime::start(config.runtime_config(), backend);
    let mut state = AppState::new(handle.clone(), config.clone());
    state.host_cache = host_cache;
    let state = web::Data::new(state);
    let app_state = state.clone();
    let deadline = config.server.shutdown_deadline.0;
    let origins = config.server.cors_allow_origins.clone();
    // A second descriptor of the listening socket, to stop listening early when draining.
    let listening = listener
        .try_clone()
        .context("duplicating the listening socket")?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .wrap(from_fn(middleware::guard))
            .wrap(from_fn(middleware::count))
            .wrap(NormalizePath::new(TrailingSlash::Trim))
            .wrap(Condition::new(!origins.is_empty(), cors(&origins)))
            .wrap(from_fn(middleware::identify))
            .configure(configure)
    })
    .disable_signals()
    // A client that closes its connection ends the request: actix then drops the handler's
    // future, and with it the generation's receivers, which cancels it at the next step (a
    // non-streaming completion too, not only a stream). Allowing half-closed connections would
    // keep a request running for nobody until it finished.
    .h1_allow_half_closed(false)
    .client_request_timeout(config.server.client_request_timeout.0)
    .shutdown_timeout(deadline.as_secs_f64().ceil() as u64)
    .listen(listener)
    .context("listening")?;
    let addrs = server.addrs();
    let server = server.run();
    let server_handle = server.handle();
    let running = actix_web::rt::spawn(server);
    tokio::pin!(shutdown);

    let started = tokio::select! {
        started = start_up(&state) => started,
        _ = &mut shutdown => Err(anyhow::anyhow!("interrupted during start-up")),
    };
    if let Err(e) = started {
        server_handle.stop(false).await;
        stop_runtime(&handle, deadline).await;
        return Err(e);
    }
    state.set_ready();
    log_ready(&addrs, &config);

    tokio::select! {
        _ = &mut shutdown => {}
        result = running => {
            stop_runtime(&handle, deadline).await;
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e).context("the HTTP server failed"),
                Err(e) => Err(anyhow::anyhow!("the HTTP server task failed: {e}")),
            };
        }
    }
    drain(&state, &server_handle, &listening, &handle).await;
    Ok(())
}

/// The machine's host weight cache, when the workers share one.
type MachineCache = Option<Arc<SharedCache>>;

/// The backend for `[runtime] isolation`: workers as processes of this same binary
/// (`worker-controller worker`), or as threads; with `[prewarm] host_cache`, the machine's one
/// host weight cache that they all share (made here, its descriptor inherited by each worker
/// process, its bookkeeping kept here).
fn backend(config: &Config) -> anyhow::Result<(Arc<dyn Backend>, MachineCache)> {
    let cache = match config.prewarm.host_cache_bytes {
        0 => None,
        bytes => Some(Arc::new(
            SharedCache::create(bytes).context("making the shared host cache")?,
        )),
    };
    let candle = match &cache {
        Some(cache) => CandleBackend::with_shared_cache(cache.clone()),
        None => CandleBackend::default(),
    };
    let local: Arc<dyn Backend> = Arc::new(candle);
    if config.runtime.isolation == Isolation::Thread {
        return Ok((local, cache));
    }
    let exe = match &config.runtime.worker_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().context("finding this program to start workers with")?,
    };
    let process = Arc::new(ProcessBackend::new(
        local,
        WorkerCommand {
            exe,
            args: vec!["worker".into()],
            env: [(
                "WC_LOG_FORMAT".to_string(),
                match config.server.log_format {
                    crate::config::LogFormat::Json => "json".into(),
                    crate::config::LogFormat::Text => "text".into(),
                },
            )]
            .into_iter()
            .chain(cache.iter().map(|c| {
                let fd = c.region.fd().to_string();
                (FD_ENV.to_string(), fd)
            }))
            .collect(),
            heartbeat_timeout: config.runtime.heartbeat_timeout,
        },
    ));
    Ok((process, cache))
}

/// Binds `[server] host:port` and runs until the first Ctrl-C / SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let mut signals = shutdown::on_signal().context("installing the Ctrl-C / SIGTERM handler")?;
    let (host, port) = (config.server.host.clone(), config.server.port);
    let listener = TcpListener::bind((host.as_str(), port))
        .with_context(|| format!("binding {host}:{port}"))?;
    run(config, listener, async move {
        signals.recv().await;
    })
    .await
}

/// Makes the listening socket refuse new connections now. actix stops accepting on a graceful
/// stop but keeps the socket open until every connection has finished, so clients would queue
/// in the kernel's backlog instead of being told to go elsewhere.
fn stop_listening(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown(2) on a socket descriptor we hold open for the call's duration.
    let rc = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "could not close the listening socket early");
    }
}

/// Stops the runtime (detaching every engine), giving up after `deadline`.
async fn stop_runtime(handle: &Handle, deadline: Duration) {
    let limit = deadline + Duration::from_secs(5);
    if tokio::time::timeout(limit, handle.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            limit_ms = limit.as_millis() as u64,
            "the runtime did not stop in time; exiting without waiting for it"
        );
    }
}

/// Waits for the workers to prewarm and attaches the `attach_on_start` models.
async fn start_up(state: &AppState) -> anyhow::Result<()> {
    let workers = state
        .handle
        .wait_ready()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let failed: Vec<_> = workers
        .iter()
        .filter(|w| w.state == WorkerState::Failed)
        .collect();
    if !failed.is_empty() && failed.len() == workers.len() {
        let reason = failed[0].last_error.clone().unwrap_or_default();
        anyhow::bail!("every worker failed to prewarm (worker 0: {reason})");
    }
    for worker in failed {
        tracing::warn!(
            worker = worker.worker,
            device = %worker.device,
            error = worker.last_error.as_deref().unwrap_or(""),
            "worker failed to prewarm; serving without it"
        );
    }
    for model in state.config.models.iter().filter(|m| m.attach_on_start) {
        let attach = Attach::new(model.spec()).named(model.name());
        state
            .pool
            .attach(attach, model.keep_alive, &state.metrics, false)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))
            .with_context(|| {
                format!(
                    "attaching model `{}` ({}) at start (attach_on_start)",
                    model.name(),
                    model.origin
                )
            })?;
    }
    Ok(())
}

fn log_ready(addrs: &[SocketAddr], config: &Config) {
    let workers: usize = config
        .runtime_config()
        .workers
        .iter()
        .map(|w| w.count)
        .sum();
    for addr in addrs {
        tracing::info!(
            address = %addr,
            workers,
            models = config.models.len(),
            auth = config.server.api_key.is_some(),
            open_inference = config.server.open_inference,
            "ready: listening on http://{addr}"
        );
    }
}

/// The graceful stop: not ready, stop accepting after the drain delay, let in-flight requests
/// finish up to the deadline, then detach every engine and release every worker.
async fn drain(
    state: &AppState,
    server: &actix_web::dev::ServerHandle,
    listener: &TcpListener,
    handle: &Handle,
) {
    let server_config = &state.config.server;
    state.start_draining();
    // Attaches waiting for a worker would outlast the deadline unanswered: refuse them now.
    handle.drain().await;
    tracing::info!(
        drain_delay_ms = server_config.drain_delay.0.as_millis() as u64,
        deadline_ms = server_config.shutdown_deadline.0.as_millis() as u64,
        "draining: /ready answers 503; in-flight requests may finish"
    );
    if !server_config.drain_delay.0.is_zero() {
        tokio::time::sleep(server_config.drain_delay.0).await;
    }
    server.pause().await;
    stop_listening(listener);
    tracing::info!("listener closed: new connections are refused; in-flight requests go on");
    let deadline = server_config.shutdown_deadline.0 + Duration::from_millis(500);
    if tokio::time::timeout(deadline, server.stop(true))
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish before the deadline; stopping them");
        server.stop(false).await;
    }
    stop_runtime(handle, server_config.shutdown_deadline.0).await;
    tracing::info!("stopped: every engine detached and every worker released");
}
