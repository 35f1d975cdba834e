//! The `worker-controller` command line: subcommands, their flags and help.

mod allocator;
mod bench;
mod bundled;
mod generate;
mod loadgen;
mod make_model;
mod serve;
mod worker;

use std::process::ExitCode;
use std::sync::OnceLock;

use clap::{Parser, Subcommand};

/// When this process started, on the clock every process shares (the `process_started` anchor).
static PROCESS_STARTED_NS: OnceLock<u64> = OnceLock::new();

/// The `process_started` instant of this process.
pub fn process_started_ns() -> u64 {
    *PROCESS_STARTED_NS.get_or_init(wc_actors::monotonic_ns)
}

/// Worker Controller: prewarmed GPU workers that attach LLM engines in milliseconds.
#[derive(Parser, Debug)]
#[command(name = "worker-controller", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("WC_GIT_DESCRIBE"), ")"), about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load a model (OPT, Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3) in this fresh process and
    /// generate (the "standard path": the device context is created during startup, as a fresh
    /// vLLM engine does).
    Generate(generate::GenerateArgs),
    /// Write a random-weight checkpoint with a published model's exact shapes and tensor names
    /// (OPT, Llama 3.x, Qwen2.5, Qwen3, Mistral; sharded like the original).
    MakeModel(make_model::MakeModelArgs),
    /// Prewarm the configured workers and serve the HTTP API (control, OpenAI completions and
    /// chat completions) for OPT and Llama-family models.
    Serve(serve::ServeArgs),
    /// Measure cold starts: standard path (fresh process) vs controller (prewarmed worker).
    Bench(bench::BenchArgs),
    /// Drive a running server with concurrent streaming clients and report output tokens/s and
    /// time to first token, inter-token and end-to-end latency (p50/p95/p99).
    Loadgen(loadgen::LoadgenArgs),
    /// One worker process, started by `serve` (`[runtime] isolation = "process"`); speaks
    /// frames on stdin/stdout, logs on stderr.
    #[command(hide = true)]
    Worker,
}

/// A worker process logs as its server does (the server passes `WC_LOG_FORMAT` down).
fn log_format_from_env() -> crate::config::LogFormat {
    match std::env::var("WC_LOG_FORMAT").as_deref() {
        Ok("json") => crate::config::LogFormat::Json,
        _ => crate::config::LogFormat::Text,
    }
}

/// Runs the command line; errors are printed as `error: ...` with exit status 1.
pub fn main() -> ExitCode {
    process_started_ns();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::MakeModel(args) => make_model::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Loadgen(args) => loadgen::run(args),
        Command::Worker => worker::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
