//! The `worker-controller` command line: subcommands, their flags and help.

mod bench;
mod bundled;
mod generate;
mod make_model;
mod serve;

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
    /// Load a model in this fresh process and generate (the "standard path": the device
    /// context is created during startup, as a fresh vLLM engine does).
    Generate(generate::GenerateArgs),
    /// Write a random-weight OPT checkpoint with a published model's exact shapes.
    MakeModel(make_model::MakeModelArgs),
    /// Prewarm the configured workers and serve the HTTP API (control + OpenAI completions).
    Serve(serve::ServeArgs),
    /// Measure cold starts: standard path (fresh process) vs controller (prewarmed worker).
    Bench(bench::BenchArgs),
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
