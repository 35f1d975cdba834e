//! `loadgen`: concurrent streaming clients against a running server; prints the Markdown report
//! and writes `results.json`, `report.md` and `chart.svg`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::loadgen::{run as run_load, Endpoint, Limit, LoadOptions};

/// The prompt sent when neither `--prompt` nor `--prompts-file` is given.
const DEFAULT_PROMPT: &str = "The quick brown fox jumps over the lazy dog. Once upon a time,";

#[derive(Args, Debug)]
#[command(
    after_help = "Example (16 clients, 64 requests of 64 tokens each):\n  \
    worker-controller loadgen --url http://127.0.0.1:8000 --model opt-125m \\\n    \
    --concurrency 16 --requests 64 --max-tokens 64 --ignore-eos\n\n\
    Every request streams (SSE with include_usage). Time to first token is to the first \
    non-empty text; inter-token latency is every gap between two texts; throughput is the \
    output tokens of the successful requests over the wall time."
)]
pub struct LoadgenArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// API key, sent as `Authorization: Bearer ...`.
    #[arg(long, env = "WC_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The model to ask for (an attached engine or a configured model).
    #[arg(long)]
    model: String,
    /// Clients sending at once (each one request at a time).
    #[arg(long, short = 'c', default_value_t = 8, value_parser = at_least_one)]
    concurrency: usize,
    /// Requests in all (default: 4 per client when --duration is not given).
    #[arg(long, short = 'n', value_parser = at_least_one, conflicts_with = "duration")]
    requests: Option<usize>,
    /// Keep starting requests for this long ("30s", "2m"); those under way then finish.
    #[arg(long, value_parser = wc_actors::parse_duration)]
    duration: Option<Duration>,
    /// `max_tokens` of each request.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    max_tokens: usize,
    /// A prompt; repeat for several (used in turn).
    #[arg(long)]
    prompt: Vec<String>,
    /// A file of prompts, one a line (blank lines skipped); added to any --prompt.
    #[arg(long, value_name = "PATH")]
    prompts_file: Option<PathBuf>,
    /// Which endpoint to drive.
    #[arg(long, value_enum, default_value = "completions")]
    endpoint: Endpoint,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Ask for exactly --max-tokens tokens per request (vLLM's `ignore_eos`).
    #[arg(long)]
    ignore_eos: bool,
    /// The longest one request may take, stream included (more than 0).
    #[arg(long, default_value = "5m", value_parser = positive_duration)]
    timeout: Duration,
    /// Directory for results.json, report.md and chart.svg.
    #[arg(long, default_value = "loadgen-results")]
    out: PathBuf,
    /// A bound the run must meet, PATH<=VALUE or PATH>=VALUE on a field of results.json
    /// (repeatable), e.g. 'summary.ttft_ms.p99<=0.5s', 'summary.output_tokens_per_s>=900'
    /// (`ms`/`s` units on `_ms` fields). The files are written, then each failing bound is
    /// named and loadgen exits non-zero.
    #[arg(long, value_name = "PATH<=VALUE")]
    expect: Vec<crate::bench::expect::Expect>,
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A duration longer than zero (a zero timeout would fail every request unsent).
fn positive_duration(text: &str) -> Result<Duration, String> {
    match wc_actors::parse_duration(text)? {
        d if d.is_zero() => Err("must be longer than 0s".into()),
        d => Ok(d),
    }
}

pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let mut prompts = args.prompt.clone();
    if let Some(path) = &args.prompts_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading prompts from {}", path.display()))?;
        prompts.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned),
        );
    }
    if prompts.is_empty() {
        prompts.push(DEFAULT_PROMPT.to_owned());
    }
    let limit = match (args.requests, args.duration) {
        (_, Some(duration)) => Limit::Duration(duration),
        (Some(n), None) => Limit::Requests(n),
        (None, None) => Limit::Requests(args.concurrency * 4),
    };
    let options = LoadOptions {
        url: args.url,
        api_key: args.api_key,
        model: args.model,
        endpoint: args.endpoint,
        concurrency: args.concurrency,
        limit,
        max_tokens: args.max_tokens,
        prompts,
        temperature: args.temperature,
        ignore_eos: args.ignore_eos,
        timeout: args.timeout,
    };
    let command = command_line();
    let report = run_load(&options, &command)?;
    report
        .write(&args.out)
        .with_context(|| format!("writing the report into {}", args.out.display()))?;
    print!("{}", report.markdown());
    eprintln!(
        "wrote results.json, report.md and chart.svg into {}",
        args.out.display()
    );
    if report.summary.failed > 0 {
        eprintln!(
            "warning: {} of {} requests failed",
            report.summary.failed, report.summary.requests
        );
    }
    crate::bench::expect::check_all(&report, &args.expect)
}

/// This command line, with the API key left out.
fn command_line() -> String {
    let mut hide_next = false;
    std::env::args()
        .map(|arg| {
            if std::mem::take(&mut hide_next) {
                return "***".to_owned();
            }
            if arg == "--api-key" {
                hide_next = true;
            } else if arg.starts_with("--api-key=") {
                return "--api-key=***".to_owned();
            }
            arg
        })
        .collect::<Vec<_>>()
        .join(" ")
}
