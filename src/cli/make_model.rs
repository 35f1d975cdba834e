//! `make-model`: writes a random-weight OPT checkpoint with a preset's exact shapes and names.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use wc_actors::DType;

use crate::device::candle_dtype;
use crate::opt::presets::{preset, write_checkpoint, PRESETS};

#[derive(Args, Debug)]
pub struct MakeModelArgs {
    /// Shapes to copy: opt-125m, opt-350m or tiny (the bundled fixtures' shape).
    #[arg(long, default_value = "opt-125m")]
    preset: String,
    /// Dtype of the written weights: f32, f16 or bf16.
    #[arg(long, default_value = "f16")]
    dtype: DType,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: MakeModelArgs) -> anyhow::Result<()> {
    let Some(config) = preset(&args.preset) else {
        bail!(
            "unknown preset `{}`: expected one of {}",
            args.preset,
            PRESETS.join(", ")
        );
    };
    eprintln!(
        "writing {} ({} parameters, {}) to {} ...",
        args.preset,
        config.parameter_count(),
        args.dtype,
        args.out.display()
    );
    let bytes = write_checkpoint(&config, candle_dtype(args.dtype), &args.out, args.seed)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {:.1} MB of weights", bytes as f64 / 1e6);
    Ok(())
}
