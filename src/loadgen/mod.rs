//! `loadgen`: drives a running OpenAI-compatible server with concurrent streaming clients and
//! reports throughput and latency (time to first token, inter-token, end to end).
//!
//! # Layout
//! - [`client`]: one streamed request over HTTP (awc), timed as a client sees it.
//! - [`report`]: percentiles, `results.json` and `report.md`; [`chart`]: `chart.svg`.
//!
//! Every client sends one request at a time, the next as soon as the last one ended, until the
//! request count is reached or the duration is over (a request under way then still finishes).

pub mod chart;
pub mod client;
pub mod report;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::join_all;
use serde_json::Value;

pub use client::RequestResult;
pub use report::{LoadReport, Percentiles};

/// Which OpenAI endpoint the requests go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /v1/completions` with `prompt`.
    Completions,
    /// `POST /v1/chat/completions` with one user message.
    Chat,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }

    /// The text a streamed chunk adds.
    pub fn text(self, chunk: &Value) -> Option<&str> {
        let choice = &chunk["choices"][0];
        match self {
            Endpoint::Completions => choice["text"].as_str(),
            Endpoint::Chat => choice["delta"]["content"].as_str(),
        }
    }
}

/// When the run stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    /// After this many requests in all.
    Requests(usize),
    /// No request starts after this long.
    Duration(Duration),
}

/// What to send, where, and how hard.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The server's base URL (`http://host:port`).
    pub url: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
    pub model: String,
    pub endpoint: Endpoint,
    /// Clients sending at once.
    pub concurrency: usize,
    pub limit: Limit,
    pub max_tokens: usize,
    /// Prompts, used in turn.
    pub prompts: Vec<String>,
    pub temperature: f64,
    /// Ask the server to generate `max_tokens` whatever the model says (vLLM's `ignore_eos`).
    pub ignore_eos: bool,
    /// The longest one request may take, stream included.
    pub timeout: Duration,
}

/// Runs the load on a fresh actix system in this thread and returns the report.
pub fn run(options: &LoadOptions, command: &str) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(options.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(!options.prompts.is_empty(), "no prompt to send");
    if let Limit::Requests(0) = options.limit {
        anyhow::bail!("--requests must be at least 1");
    }
    let system = actix_rt::System::new();
    let (server, (results, wall)) =
        system.block_on(async { (server_version(options).await, drive(options).await) });
    let mut report = LoadReport::new(options, command, results, wall);
    match server {
        Ok((version, commit)) => {
            report.meta.server_version = Some(version);
            report.meta.server_commit = Some(commit);
        }
        Err(why) => eprintln!("warning: the server's commit is not recorded: {why}"),
    }
    if report.summary.succeeded == 0 {
        let first = report.requests.iter().find_map(|r| r.error.clone());
        return Err(anyhow::anyhow!(first.unwrap_or_default()))
            .context(format!("every request to {} failed", options.url));
    }
    Ok(report)
}

/// `GET /version` of the server: its version and the commit it was built from.
async fn server_version(options: &LoadOptions) -> Result<(String, String), String> {
    let url = format!("{}/version", options.url.trim_end_matches('/'));
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let mut response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: {}", response.status()));
    }
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("{url}: not JSON: {e}"))?;
    let field = |k: &str| body[k].as_str().map(str::to_owned);
    match (field("version"), field("commit")) {
        (Some(version), Some(commit)) => Ok((version, commit)),
        _ => Err(format!("{url}: no version and commit in {body}")),
    }
}

/// Every client until the limit; returns each request's result and the wall time.
async fn drive(options: &LoadOptions) -> (Vec<RequestResult>, Duration) {
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(options.concurrency))
        .timeout(options.timeout)
        .finish();
    let next = Rc::new(Cell::new(0usize));
    let started = Instant::now();
    let clients = (0..options.concurrency).map(|index| {
        let (client, next) = (&client, next.clone());
        async move {
            let mut results = Vec::new();
            loop {
                let n = next.get();
                let more = match options.limit {
                    Limit::Requests(total) => n < total,
                    Limit::Duration(limit) => started.elapsed() < limit,
                };
                if !more {
                    break;
                }
                next.set(n + 1);
                let prompt = &options.prompts[n % options.prompts.len()];
                let id = format!("loadgen-{index}-{n}");
                results.push(client::send(client, options, index, &id, prompt, started).await);
            }
            results
        }
    });
    let results: Vec<RequestResult> = join_all(clients).await.into_iter().flatten().collect();
    (results, started.elapsed())
}
