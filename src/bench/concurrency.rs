//! The concurrency scenario of the bench: one stream alone, then many at once, of the same
//! number of tokens on one engine. With iteration-level batching the concurrent streams share
//! each forward pass, so their wall time grows far slower than their number.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use wc_actors::{
    Attach, Backend, DType, DeviceSpec, EngineRef, GenerateRequest, ModelSpec, PrewarmOptions,
    Prompt, Runtime, RuntimeConfig, WorkerConfig,
};

use crate::backend::CandleBackend;

/// What the scenario runs.
#[derive(Clone, Debug)]
pub struct ConcurrencyOptions {
    pub model: String,
    pub device: DeviceSpec,
    pub dtype: Option<DType>,
    /// Streams run at once in the concurrent part.
    pub streams: usize,
    /// Tokens each stream generates (past any end-of-sequence token).
    pub tokens: usize,
    /// Times each part runs; the median is reported.
    pub repeats: usize,
    pub out: PathBuf,
}

/// What the scenario measured.
#[derive(Clone, Debug, Serialize)]
pub struct ConcurrencyResult {
    /// `git describe --always --dirty` of the build, and whether that is a committed tree.
    pub commit: String,
    pub clean: bool,
    pub model: String,
    pub device: String,
    pub streams: usize,
    pub tokens: usize,
    pub repeats: usize,
    /// Median wall time of one stream alone.
    pub single_ms: f64,
    /// Median wall time until the last of `streams` concurrent streams finished.
    pub concurrent_ms: f64,
    /// `concurrent_ms / single_ms` (1 would be perfect batching; `streams` is none).
    pub wall_ratio: f64,
    pub single_tokens_per_s: f64,
    pub concurrent_tokens_per_s: f64,
    /// Every repeat's wall times (the medians above are of these), in the order run.
    pub single_runs_ms: Vec<f64>,
    pub concurrent_runs_ms: Vec<f64>,
}

fn request(index: usize, tokens: usize) -> GenerateRequest {
    // Prompts of different lengths and ids, within any vocabulary of 64 tokens or more.
    let ids = (0..3 + index % 5).map(|j| (2 + (index * 7 + j * 3) % 60) as u32);
    GenerateRequest {
        prompt: Prompt::Ids(ids.collect()),
        max_new_tokens: tokens,
        ignore_eos: true,
        ..GenerateRequest::default()
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs the scenario and writes `concurrency.json` and `concurrency.md` into `options.out`.
pub fn run(options: &ConcurrencyOptions) -> anyhow::Result<ConcurrencyResult> {
    let config = RuntimeConfig {
        workers: vec![WorkerConfig {
            device: options.device.clone(),
            count: 1,
            prewarm: PrewarmOptions {
                dtypes: vec![options.dtype.unwrap_or(DType::F32)],
                ..PrewarmOptions::default()
            },
        }],
        ..RuntimeConfig::default()
    };
    let backend: Arc<dyn Backend> = Arc::new(CandleBackend::default());
    let handle = Runtime::start_in_background(config, backend);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(handle.wait_ready())
        .context("prewarming the worker")?;
    let spec = ModelSpec {
        model: options.model.clone(),
        dtype: options.dtype,
        canonical: false,
        park: None,
    };
    let report = runtime
        .block_on(handle.attach(Attach::new(spec)))
        .with_context(|| format!("attaching {}", options.model))?;
    let engine = EngineRef::Id(report.engine_id);
    let run_streams = |count: usize| -> anyhow::Result<f64> {
        let started = Instant::now();
        let runs = (0..count).map(|i| handle.generate(engine.clone(), request(i, options.tokens)));
        let outputs = runtime.block_on(futures_util::future::join_all(runs));
        let elapsed = started.elapsed().as_secs_f64() * 1e3;
        for output in outputs {
            let output = output?;
            anyhow::ensure!(
                output.new_tokens.len() == options.tokens,
                "a stream made {} tokens, not {}",
                output.new_tokens.len(),
                options.tokens
            );
        }
        Ok(elapsed)
    };
    run_streams(1).context("warming up")?;
    let mut single = Vec::new();
    let mut concurrent = Vec::new();
    for _ in 0..options.repeats.max(1) {
        single.push(run_streams(1)?);
        concurrent.push(run_streams(options.streams)?);
    }
    runtime.block_on(handle.shutdown());
    let (single_runs_ms, concurrent_runs_ms) = (single.clone(), concurrent.clone());
    let (single_ms, concurrent_ms) = (median(single), median(concurrent));
    let result = ConcurrencyResult {
        commit: env!("WC_GIT_DESCRIBE").to_owned(),
        clean: super::results::is_clean(env!("WC_GIT_DESCRIBE")),
        single_runs_ms,
        concurrent_runs_ms,
        model: options.model.clone(),
        device: options.device.to_string(),
        streams: options.streams,
        tokens: options.tokens,
        repeats: options.repeats.max(1),
        single_ms,
        concurrent_ms,
        wall_ratio: concurrent_ms / single_ms.max(1e-9),
        single_tokens_per_s: options.tokens as f64 / (single_ms / 1e3),
        concurrent_tokens_per_s: (options.tokens * options.streams) as f64 / (concurrent_ms / 1e3),
    };
    std::fs::create_dir_all(&options.out)?;
    std::fs::write(
        options.out.join("concurrency.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    std::fs::write(options.out.join("concurrency.md"), markdown(&result))?;
    Ok(result)
}

/// The result as a Markdown table.
pub fn markdown(r: &ConcurrencyResult) -> String {
    format!(
        "## Concurrent streams ({model}, {device})\n\n\
         | streams | tokens each | wall time (median of {repeats}) | tokens/s |\n\
         |---:|---:|---:|---:|\n\
         | 1 | {tokens} | {single:.1} ms | {single_tps:.0} |\n\
         | {streams} | {tokens} | {concurrent:.1} ms | {concurrent_tps:.0} |\n\n\
         {streams} concurrent streams take {ratio:.2}x the wall time of one.\n",
        model = r.model,
        device = r.device,
        repeats = r.repeats,
        tokens = r.tokens,
        streams = r.streams,
        single = r.single_ms,
        concurrent = r.concurrent_ms,
        single_tps = r.single_tokens_per_s,
        concurrent_tps = r.concurrent_tokens_per_s,
        ratio = r.wall_ratio,
    )
}
