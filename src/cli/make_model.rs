//! `make-model`: writes a random-weight OPT checkpoint with a preset's exact shapes and names.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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
    /// Output directory: created if missing; one that is not empty is refused unless --force.
    #[arg(long)]
    out: PathBuf,
    /// Write into a non-empty --out, replacing its config.json and model.safetensors (other
    /// files are left as they are).
    #[arg(long)]
    force: bool,
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
    if !args.force && !is_empty_or_missing(&args.out)? {
        bail!(
            "{} is not empty: pass --force to write the checkpoint into it anyway",
            args.out.display()
        );
    }
    eprintln!(
        "writing {} ({} parameters, {}) to {} ...",
        args.preset,
        config.parameter_count(),
        args.dtype,
        args.out.display()
    );
    let bytes = write_checkpoint(&config, candle_dtype(args.dtype), &args.out, args.seed)
        .with_context(|| format!("writing {}", args.out.display()))?;
    // The weights writer creates its file owner-only; give it the mode any new file gets here.
    for file in ["model.safetensors", "config.json"] {
        let path = args.out.join(file);
        let mode = super::bundled::default_file_mode();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    eprintln!("wrote {:.1} MB of weights", bytes as f64 / 1e6);
    Ok(())
}

/// Whether `dir` is missing or an empty directory (a path that is not a directory is an error).
fn is_empty_or_missing(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("reading --out {}", dir.display())),
    }
}
