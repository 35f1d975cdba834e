//! `generate`: a fresh process that opens its device, loads a model and generates (the standard path).

use std::io::Write;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use wc_actors::{Anchor, DType, DeviceSpec, GenerateRequest, ModelSpec, Prompt, Timeline};

use crate::backend::CandleDevice;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Checkpoint directory (Hugging Face layout) or hub id in the local cache
    /// (facebook/opt-125m, meta-llama/Llama-3.2-1B). Families: OPT, Llama 2/3 (`llama`),
    /// Mistral, Qwen2/2.5 and Qwen3, chosen by `model_type` in config.json. Default: the bundled tests/fixtures/tiny-opt-prenorm, looked for in the current directory,
    /// then next to the binary and the directories above it.
    #[arg(long)]
    model: Option<String>,
    /// Prompt text (tokenized with the model's tokenizer.json).
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids, e.g. 2,31414,232.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Number of tokens to generate at most (up to 2^20; the model's context bounds it too).
    #[arg(long, default_value_t = 24, value_parser = max_new_tokens)]
    max_new_tokens: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// f32, f16 or bf16 (default: the checkpoint's own).
    #[arg(long)]
    dtype: Option<DType>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed for sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this text appears (repeatable; not empty).
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    stop: Vec<String>,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object (prompt_ids, new_tokens, text, timings) instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Write the timing anchors as one bincode frame on stdout (used by `bench`).
    #[arg(long, hide = true)]
    frame: bool,
}

/// `--max-new-tokens`: a count up to [`crate::config::MAX_TOKENS_CAP`].
fn max_new_tokens(text: &str) -> Result<usize, String> {
    let cap = crate::config::MAX_TOKENS_CAP;
    match text.parse::<usize>() {
        Ok(n) if n <= cap => Ok(n),
        _ => Err(format!("expected a number of tokens from 0 to {cap}")),
    }
}

/// The model `generate` loads when `--model` is not given.
pub const DEFAULT_MODEL: &str = "tests/fixtures/tiny-opt-prenorm";

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let model = match args.model {
        Some(model) => model,
        None => super::bundled::find(DEFAULT_MODEL, "the default model", "--model DIR")?
            .display()
            .to_string(),
    };
    let mut timeline = Timeline::default();
    timeline.mark_at(Anchor::Requested, super::process_started_ns());
    timeline.mark_at(Anchor::ProcessStarted, super::process_started_ns());
    let prompt = match (args.prompt, args.prompt_ids) {
        (_, Some(ids)) => Prompt::Ids(ids),
        (Some(text), None) => Prompt::Text(text),
        (None, None) => Prompt::Text("Beautiful is better than".into()),
    };
    let mut device = CandleDevice::open_fresh(&args.device)?;
    timeline.mark(Anchor::DeviceReady);
    let spec = ModelSpec {
        model: model.clone(),
        dtype: args.dtype,
        canonical: false,
        park: None,
    };
    let inspected = crate::backend::inspect(&spec).with_context(|| format!("loading {model}"))?;
    let (mut engine, bytes) = device
        .load_inspected(&inspected, &mut timeline)
        .with_context(|| format!("loading {model}"))?;
    let dtype = inspected.dtype;
    let request = GenerateRequest {
        prompt,
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop: args.stop,
        ignore_eos: args.ignore_eos,
        ..GenerateRequest::default()
    };
    let stream = !args.json && !args.frame;
    let mut stdout = std::io::stdout();
    let output = engine.generate(&request, &mut |token| {
        if timeline.get(Anchor::FirstToken).is_none() {
            timeline.mark(Anchor::FirstToken);
        }
        if stream {
            let _ = write!(stdout, "{}", token.text);
            let _ = stdout.flush();
        }
        true
    })?;
    let decode_steps = output.new_tokens.len().saturating_sub(1);
    let decode_tokens_per_s = if output.decode_ms > 0.0 {
        decode_steps as f64 / (output.decode_ms / 1e3)
    } else {
        0.0
    };
    let phases: serde_json::Map<String, serde_json::Value> = timeline
        .phases()
        .iter()
        .map(|p| (p.anchor.name().to_string(), json!(p.ms)))
        .collect();
    if args.frame {
        let frame = crate::bench::frame::ChildReport {
            timeline: timeline.clone(),
            bytes,
        };
        crate::bench::frame::write(&mut std::io::stdout(), &frame)?;
    } else if args.json {
        let report = json!({
            "model": model,
            "device": args.device.to_string(),
            "dtype": dtype.to_string(),
            "prompt_ids": output.prompt_ids,
            "new_tokens": output.new_tokens,
            "text": output.text,
            "finish_reason": output.finish_reason,
            "timings": {
                "phases_ms": phases,
                "total_ms": timeline.total_ms(),
                "prefill_ms": output.prefill_ms,
                "decode_ms": output.decode_ms,
                "decode_tokens_per_s": decode_tokens_per_s,
                "weight_bytes": bytes,
            },
            "timeline": timeline,
        });
        println!("{report}");
    } else {
        println!();
        eprintln!(
            "[{} tokens; first token {:.1} ms after start; decode {:.1} tokens/s]",
            output.new_tokens.len(),
            timeline.total_ms(),
            decode_tokens_per_s
        );
    }
    Ok(())
}
