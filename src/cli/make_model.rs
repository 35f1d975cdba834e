//! `make-model`: writes a random-weight checkpoint with a published model's exact shapes and
//! tensor names: OPT, or the Llama family (Llama 3.x, Qwen2.5, Qwen3, Mistral) sharded like the
//! original, with a placeholder word-level tokenizer (`t0 t1 ...`) so it serves text prompts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use wc_actors::DType;

use crate::models::family::FAMILIES;

#[derive(Args, Debug)]
pub struct MakeModelArgs {
    /// Shapes to copy. OPT: opt-125m, opt-350m, tiny (the bundled fixtures' shape). Llama
    /// family: llama-3.2-1b, llama-3.1-8b, qwen2.5-7b, qwen3-8b, mistral-7b, and llama-tiny
    /// (Llama 3.2's layout, a few hundred thousand parameters, for tests).
    #[arg(long, default_value = "opt-125m")]
    preset: String,
    /// Dtype of the written weights: f32, f16 or bf16 (default: f16 for OPT, bf16 for the Llama
    /// family, as published).
    #[arg(long)]
    dtype: Option<DType>,
    /// Number of weight files (Llama family only; default: as many as the original, e.g. 4 for
    /// llama-3.1-8b). More than one writes model-0000i-of-0000n.safetensors and
    /// model.safetensors.index.json.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    shards: Option<u16>,
    /// Output directory: created if missing; one that is not empty is refused unless --force.
    #[arg(long)]
    out: PathBuf,
    /// Write into a non-empty --out, replacing the files it writes (other files are left as
    /// they are).
    #[arg(long)]
    force: bool,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: MakeModelArgs) -> anyhow::Result<()> {
    let found = FAMILIES
        .iter()
        .find_map(|family| (family.preset)(&args.preset).map(|info| (family, info)));
    let Some((family, info)) = found else {
        let names: Vec<&str> = FAMILIES.iter().flat_map(|f| (f.presets)()).collect();
        bail!(
            "unknown preset `{}`: expected one of {}",
            args.preset,
            names.join(", ")
        );
    };
    if !info.shardable && args.shards.is_some_and(|n| n != 1) {
        bail!(
            "--shards is for presets of the sharded families; `{}` presets write one file",
            family.name
        );
    }
    if !args.force && !is_empty_or_missing(&args.out)? {
        bail!(
            "{} is not empty: pass --force to write the checkpoint into it anyway",
            args.out.display()
        );
    }
    let dtype = args.dtype.unwrap_or(info.default_dtype);
    eprintln!(
        "writing {} ({} parameters, {dtype}) to {} ...",
        args.preset,
        info.parameters,
        args.out.display()
    );
    let shards = args.shards.map(usize::from);
    // The weights as they are written: one line redrawn on a terminal, a line per tenth in a log.
    let mut progress = crate::bench::progress::ProgressLine::stderr();
    let mut tell = |done: u64, total: u64| progress.bytes("weights", done, total);
    let written =
        (family.write_preset)(&args.preset, dtype, &args.out, args.seed, shards, &mut tell)
            .with_context(|| format!("writing {}", args.out.display()));
    progress.finish();
    let written = written?;
    let weight_files = written
        .files
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .count();
    eprintln!(
        "wrote {:.1} MB of weights in {weight_files} file(s)",
        written.data_bytes as f64 / 1e6,
    );
    let written = written.files;
    // Give every written file the mode any new file gets here (the weights writer of the OPT
    // path creates its file owner-only).
    for file in written {
        let path = args.out.join(file);
        let mode = super::bundled::default_file_mode();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
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
